"""What sampling every running instance's memory and CPU costs the daemon: CPU and RSS, sampling on and off.

Target (the web panel's issue): with 50 instances running and the default [panel] sample_interval of 30 s,
sampling costs the daemon <= +1 % of a core and <= +10 MB. The anchor is the same daemon with
[panel] sampling = false, on the same 50 running instances: each setting is measured on a daemon restarted
with --leave-running (it re-attaches to them), `--settle` seconds after its start, CPU (utime+stime) over
`--seconds` (two rounds at the defaults), RSS at the end of the window, windows in the order off on off on ...

A window is short of the hour the buffers fill up in, so their memory when full is measured apart, in this
process (tracemalloc, 120 points for each instance); and a round's own CPU, which is small beside the
windows' spread, is timed here with the daemon's code (the runtime's task_stats through ResourceSamples) on
the fleet's running instances.
Run: .venv/bin/python bench/stats_sampler.py [--instances 50 --seconds 60 --settle 35 --pairs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.daemon_idle import rss_mb  # noqa: E402
from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe  # noqa: E402
from bench.sleep_wake import cpu_seconds, load_average, start_all, states, wait_for  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from foundry_fleet.runtime.base import TaskHandle, TaskStats  # noqa: E402
from foundry_fleet.services.resource_samples import ResourceSamples  # noqa: E402
from foundry_fleet.wiring.runtimes import make_runtime  # noqa: E402
from tests.support.harness import FleetHarness  # noqa: E402

PORT_LOW = 27800  # below the ephemeral ports, apart from the other benches' blocks
INTERVAL = 30.0  # [panel] sample_interval's default, which the daemon runs with here
TARGET_CPU, TARGET_MB = 1.0, 10.0


def set_sampling(fleet: FleetHarness, on: bool) -> None:
    text = fleet.config.read_text()
    line = f"sampling = {'true' if on else 'false'}"
    if re.search(r"(?m)^sampling = (true|false)$", text):
        text = re.sub(r"(?m)^sampling = (true|false)$", line, text)
    elif re.search(r"(?m)^\[panel\]$", text):
        text = re.sub(r"(?m)^\[panel\]$", f"[panel]\n{line}", text, count=1)
    else:
        text += f"\n[panel]\n{line}\n"
    fleet.config.write_text(text)


def restart(fleet: FleetHarness, sampling: bool) -> int:
    """A new daemon with `sampling`, re-attached to the instances the last one left running."""
    fleet.stop_daemons()
    set_sampling(fleet, sampling)
    return fleet.up("--leave-running").pid


def window(fleet: FleetHarness, sampling: bool, settle: float, seconds: float, instances: int) -> tuple[float, float]:
    """(CPU % of a core over the window, RSS MB at its end) of a fresh daemon with `sampling`."""
    pid = restart(fleet, sampling)
    client = ControlClient(fleet.socket)
    try:
        wait_for(lambda: sum(s == "running" for s in states(client).values()) == instances, 120,
                 "every instance running again", 1)
    finally:
        client.close()
    time.sleep(settle)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return 100 * (c1 - c0) / (t1 - t0), rss_mb(pid)


def round_cost(fleet: FleetHarness, rounds: int = 20) -> tuple[float, float, int]:
    """A sampling round as the daemon does it, here: (CPU ms per round in this process, wall ms, instances)."""
    runtime = make_runtime(fleet.settings())
    db = sqlite3.connect(f"file:{fleet.root / 'state' / 'fleet.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT name, task FROM instances WHERE task IS NOT NULL").fetchall()
    finally:
        db.close()
    handles = {name: TaskHandle.from_dict(json.loads(task)) for name, task in rows}

    async def stats(name: str) -> TaskStats | None:
        return await runtime.task_stats(handles[name])

    samples = ResourceSamples(lambda: list(handles), stats, sample_interval=INTERVAL)

    async def timed() -> tuple[float, float]:
        await samples.sample_once()  # the executor's threads, as a running daemon has them
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            await samples.sample_once()
        return time.process_time() - c0, time.perf_counter() - t0

    cpu, wall = asyncio.run(timed())
    assert all(samples.latest(name) is not None for name in handles), "an instance gave no sample"
    return 1000 * cpu / rounds, 1000 * wall / rounds, len(handles)


def full_buffers_mb(instances: int, minutes: int = 60) -> float:
    """The buffers' memory once an hour of samples of `instances` is kept (distinct numbers, as real ones)."""
    clock = [0.0]
    names = [f"i{n}" for n in range(instances)]

    async def stats(name: str) -> TaskStats:
        return TaskStats(memory_bytes=150_000_000 + int(clock[0] * 1000) + len(name), cpu_seconds=clock[0] / 7,
                         memory_limit_bytes=512 * 1024 * 1024)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    samples = ResourceSamples(lambda: names, stats, sample_interval=INTERVAL, history_minutes=minutes,
                              clock=lambda: 1.7e9 + clock[0], monotonic=lambda: clock[0])
    for _ in range(samples.keep + 5):
        asyncio.run(samples.sample_once())
        clock[0] += INTERVAL
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert all(len(samples.history(n)) == samples.keep for n in names)
    return (after - before) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=35)
    ap.add_argument("--pairs", type=int, default=1, help="windows per setting, in the order off on off on ...")
    args = ap.parse_args()
    load_before = load_average()
    names = [f"s{i}" for i in range(args.instances)]
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with bench_fleet("ff-bench-stats-", PORT_LOW, instance_ports=args.instances + 20) as fleet:
        restart(fleet, sampling=True)  # from here on, a daemon's stop leaves the instances running
        client = ControlClient(fleet.socket)
        for name in names:
            client.create_instance(name=name, release="13.345", start=False)
        took = start_all(client, names, 600)
        # Past the first backup round, which snapshots every new instance once: steady state.
        wait_for(lambda: all(i["snapshots"] for i in client.backup_status(None)["instances"]), 300,
                 "the first snapshot of every instance", 5)
        client.close()
        for _ in range(args.pairs):
            for sampling in (False, True):
                results[sampling].append(window(fleet, sampling, args.settle, args.seconds, args.instances))
        cost_cpu_ms, cost_wall_ms, sampled = round_cost(fleet)
    full_mb = full_buffers_mb(args.instances)

    print(f"machine: {describe()}; load average at the start {load_before}, at the end {load_average()}")
    print(f"{args.instances} instances running (started in {took:.0f} s); each setting on a daemon restarted with "
          f"--leave-running, {args.settle:g} s settled, CPU over {args.seconds:g} s windows (off on off on ...); "
          f"sample_interval {INTERVAL:g} s (the default)")
    for sampling, label in ((False, "sampling off (anchor)"), (True, "sampling on")):
        cpus = ", ".join(f"{c:.2f} %" for c, _ in results[sampling])
        rsss = ", ".join(f"{r:.1f} MB" for _, r in results[sampling])
        print(f"{label:22s}: CPU {statistics.mean(c for c, _ in results[sampling]):5.2f} % ({cpus}); "
              f"RSS {statistics.mean(r for _, r in results[sampling]):6.1f} MB ({rsss})")
    on_cpu = statistics.mean(c for c, _ in results[True])
    off_cpu = statistics.mean(c for c, _ in results[False])
    on_mb = statistics.mean(r for _, r in results[True])
    off_mb = statistics.mean(r for _, r in results[False])
    print(f"a round of {sampled} instances, timed with the daemon's code here: {cost_cpu_ms:.1f} ms CPU, "
          f"{cost_wall_ms:.1f} ms wall; at one round per {INTERVAL:g} s: "
          f"{100 * cost_cpu_ms / 1000 / INTERVAL:.3f} % of a core")
    print(f"the buffers full (an hour, {args.instances} x {round(3600 / INTERVAL)} points): {full_mb:.2f} MB")
    cpu_met = "met" if on_cpu - off_cpu <= TARGET_CPU else "NOT met"
    mb_met = "met" if on_mb - off_mb + full_mb <= TARGET_MB else "NOT met"
    print(f"on - off: CPU {on_cpu - off_cpu:+.2f} % of a core (target <= +{TARGET_CPU:g} %: {cpu_met}); "
          f"RSS {on_mb - off_mb:+.1f} MB, {on_mb - off_mb + full_mb:+.1f} MB with the buffers full "
          f"(target <= +{TARGET_MB:g} MB: {mb_met}); ratio CPU on / off {on_cpu / off_cpu:.2f}x, "
          f"RSS {on_mb / off_mb:.3f}x")


if __name__ == "__main__":
    main()
