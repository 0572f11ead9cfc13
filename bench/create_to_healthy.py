"""Create -> healthy for a cached release, and how much of it is the control plane's own overhead.

The anchor is the stand-in server's own start (spawn -> first answer on /-/api/status), measured in
the same run; the overhead is the rest. Target (issue: single-host fleet): <= 300 ms of overhead.
Run: .venv/bin/python bench/create_to_healthy.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from bench.fleet import bench_fleet  # noqa: E402
from tests.support.foundry_standin import free_port, spawn_standin, wait_for_status, write_options  # noqa: E402


def bare_start(entry: Path, work: Path, poll: float = 0.01) -> float:
    """Spawn the stand-in directly and time it to its first healthy answer (asked every `poll` seconds)."""
    data = work / f"bare-{time.monotonic_ns()}"
    port = free_port()
    write_options(data, port=port)
    t0 = time.perf_counter()
    proc = spawn_standin(entry, port, data, stdout_path=work / "bare.log")
    try:
        wait_for_status(port, proc, timeout=20, poll=poll)
        return time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with bench_fleet("ff-bench-create-", 41000) as fleet:
        client = ControlClient(fleet.socket)
        # The anchor runs the very same unpacked release, straight from the cache.
        entry = next((fleet.root / "releases").glob("versions/13.345/**/main.js"))
        totals, anchors = [], []
        for i in range(args.rounds):
            anchors.append(bare_start(entry, fleet.root))
            t0 = time.perf_counter()
            created = client.create_instance(name=f"bench{i}", release="13.345", start=True)
            totals.append(time.perf_counter() - t0)
            assert created["instance"]["state"] == "running", created
        client.close()
    overhead = [t - a for t, a in zip(totals, anchors, strict=False)]
    print(f"machine: {describe()}")
    print(f"rounds: {args.rounds}, bubblewrap + setpriv + cgroups: as the daemon found them (see its log)")
    print(f"stand-in alone (spawn -> healthy): median {statistics.median(anchors) * 1000:6.1f} ms")
    print(f"fleet create -> healthy          : median {statistics.median(totals) * 1000:6.1f} ms, "
          f"p90 {percentile(totals, 90) * 1000:6.1f} ms")
    print(f"control-plane overhead           : median {statistics.median(overhead) * 1000:6.1f} ms, "
          f"p90 {percentile(overhead, 90) * 1000:6.1f} ms   (target <= 300 ms)")
    print(f"ratio fleet / stand-in alone     : {statistics.median(totals) / statistics.median(anchors):.2f}x")


if __name__ == "__main__":
    main()
