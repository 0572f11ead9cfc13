"""The stand-in Foundry server's own timings, which the tests no longer assert: spawn to its first
answer on /-/api/status, and SIGTERM to exit, alone and with an open websocket and a request it never
answers (it must drop both, not wait for them).

Targets (the bounds the stand-in's tests used to hold): spawn -> status median < 2 s; SIGTERM -> exit
< 1 s in every round.
Run: .venv/bin/python bench/standin_shutdown.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402
from tests.support.foundry_standin import (  # noqa: E402
    build_release_zip,
    free_port,
    spawn_standin,
    wait_for_status,
    write_options,
)


def one_round(entry: Path, work: Path, i: int, busy: bool) -> tuple[float, float]:
    data = work / f"data-{i}-{busy}"
    port = free_port()
    write_options(data, port=port)
    t0 = time.perf_counter()
    proc = spawn_standin(entry, port, data, stdout_path=work / f"standin-{i}.log")
    try:
        wait_for_status(port, proc, timeout=20)
        started = time.perf_counter() - t0
        with contextlib.ExitStack() as held:
            if busy:
                from websockets.sync.client import connect

                held.enter_context(connect(f"ws://127.0.0.1:{port}/-/socket.io/?EIO=4&transport=websocket",
                                           open_timeout=5))
                hang = threading.Thread(target=lambda: _ignore(urllib.request.urlopen,
                                                               f"http://127.0.0.1:{port}/-/__hang", timeout=10),
                                        daemon=True)
                hang.start()
                log = work / f"standin-{i}.log"
                deadline = time.monotonic() + 5
                while "__hang open" not in log.read_text() and time.monotonic() < deadline:
                    time.sleep(0.01)
            t1 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            stopped = time.perf_counter() - t1
        return started, stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ignore(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the server drops it on shutdown, as it should
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ff-bench-standin-") as tmp:
        work = Path(tmp)
        zipped = build_release_zip(work, ReleaseLayout.NODE, 13, 345)
        tree = work / "release"
        with zipfile.ZipFile(zipped) as z:
            z.extractall(tree)  # the stand-in's own zip: nothing to be wary of
        entry = next(tree.glob("**/main.js"))
        quiet = [one_round(entry, work, i, busy=False) for i in range(args.rounds)]
        busy = [one_round(entry, work, i, busy=True) for i in range(args.rounds)]
    starts = [s for s, _ in quiet + busy]
    print(f"machine: {describe()}")
    print(f"rounds: {args.rounds} quiet, {args.rounds} with an open websocket and a hanging request")
    print(f"spawn -> {'/-/api/status'}      : median {statistics.median(starts) * 1000:7.1f} ms, "
          f"max {max(starts) * 1000:7.1f} ms   (target: median < 2000 ms)")
    for label, rounds in (("SIGTERM -> exit, quiet", quiet), ("SIGTERM -> exit, busy ", busy)):
        stops = [s for _, s in rounds]
        print(f"{label}  : median {statistics.median(stops) * 1000:7.1f} ms, "
              f"max {max(stops) * 1000:7.1f} ms   (target: every one < 1000 ms)")


if __name__ == "__main__":
    main()
