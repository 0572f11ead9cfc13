"""How long a replication round waits on a restic destination that does not answer: a repository
server whose port refuses connections must be reported offline at once, not retried for minutes (the
bound the replication test used to assert).

Target: every round < 10 s.
Run: .venv/bin/python bench/restic_offline.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.storage.base import DestinationOffline  # noqa: E402
from foundry_fleet.storage.restic_destination import ResticDestination  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    times = []
    with tempfile.TemporaryDirectory(prefix="ff-bench-restic-") as tmp, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        password = Path(tmp) / "pw"
        password.write_text("bench\n")
        password.chmod(0o600)
        target = f"rest:http://127.0.0.1:{closed.getsockname()[1]}/"
        for _ in range(args.rounds):
            destination = ResticDestination(target, password, lambda i, n: Path(tmp), lambda i, n: 0.0)
            t0 = time.perf_counter()
            try:
                destination.snapshots("alice")
            except DestinationOffline:
                times.append(time.perf_counter() - t0)
            else:
                raise AssertionError("a refused connection was not reported offline")
    print(f"machine: {describe()}")
    print(f"restic destination refusing connections -> reported offline: median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s over {args.rounds} rounds   (target: every one < 10 s)")


if __name__ == "__main__":
    main()
