"""The daemon's own footprint with many instances registered: RSS, and CPU while idle.

Target (issue: single-host fleet): <= 80 MB RSS and < 1% CPU with 50 idle instances registered.
"Idle" is measured two ways: 50 instances registered but stopped, and 50 running (health-checked).
The anchor is the same daemon with no instances at all.
Run: .venv/bin/python bench/daemon_idle.py [--instances 50 --seconds 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from bench.fleet import bench_fleet  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def measure(pid: int, seconds: float) -> tuple[float, float]:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return rss_mb(pid), 100 * (c1 - c0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    with bench_fleet("ff-bench-idle-", 42000) as fleet:
        daemon = fleet.daemons[-1]
        client = ControlClient(fleet.socket)
        time.sleep(2)
        empty = measure(daemon.pid, args.seconds)

        for i in range(args.instances):
            client.create_instance(name=f"idle{i}", release="13.345", start=False)
        # Past the first backup round, which snapshots every new instance once: steady state.
        time.sleep(35)
        stopped = measure(daemon.pid, args.seconds)

        for i in range(args.instances):
            client.action(f"idle{i}", "start", wait=False)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if all(r["state"] == "running" for r in client.list_instances()):
                break
            time.sleep(1)
        time.sleep(2)
        running = measure(daemon.pid, args.seconds)
        client.close()

    print(f"machine: {describe()}")
    print(f"daemon pid {daemon.pid}; CPU averaged over {args.seconds:g} s; health checks every 15 s (default)")
    print(f"no instances (anchor)            : RSS {empty[0]:6.1f} MB, CPU {empty[1]:5.2f} %")
    print(f"{args.instances} instances registered, stopped: RSS {stopped[0]:6.1f} MB, CPU {stopped[1]:5.2f} %")
    print(f"{args.instances} instances running           : RSS {running[0]:6.1f} MB, CPU {running[1]:5.2f} %")
    print(f"ratio RSS {args.instances} running / none   : {running[0] / empty[0]:.2f}x   (target <= 80 MB, < 1% CPU)")


if __name__ == "__main__":
    main()
