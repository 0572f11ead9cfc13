"""The local runtime's own timings, which tests/drivers/test_runtime_local.py no longer asserts: how
long a stop takes (a server that exits on SIGTERM, and one that ignores it, against its timeout), how
soon wait_task returns once the server is SIGKILLed, how many bytes a second get through the log
writer's rate limit during a flood, and how often a server writing a byte at a time wakes the writer.

Anchors, in the same run: the same node server started as a plain child (no sandbox, no forwarder,
no cgroups), stopped with SIGTERM and killed with SIGKILL, timed by Popen.wait; for the log writer,
what the bucket allows (burst + rate x time) and what an unlimited copy would pass (everything), and
one wake-up per write.

Bounds the tests held: stop with SIGTERM ignored (timeout 1 s) < 4 s; a cooperative stop < 2 s;
SIGKILL -> wait_task < 1 s; bytes through <= burst + rate x time; wake-ups <= 100 a second + 50.
Needs root, node and bubblewrap, as the tests do.
Run: PYTHONPATH=$PWD/src .venv/bin/python bench/runtime_local_timings.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from foundry_fleet.runtime import logs  # noqa: E402
from tests.drivers.test_runtime_local import NODE, SERVER_JS, World, get, lt, pidfds, watching  # noqa: E402
from tests.support.foundry_standin import free_port  # noqa: E402


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms, max {max(values) * 1000:7.1f} ms"


def runtime_round(kind: str) -> float:
    """One task in the sandbox: the seconds `kind` took (stop_ignored, stop, kill)."""
    world = World()
    try:
        env = {"IGNORE_TERM": "1"} if kind == "stop_ignored" else {}
        spec = world.spec(f"bench-{kind.replace('_', '-')}", env=env)
        handle = world.start(spec)
        get(spec.port)

        async def measure() -> float:
            before = pidfds()
            waiter = asyncio.create_task(world.runtime.wait_task(handle))
            await watching(waiter, handle, before)  # as a supervisor's wait_task would be
            began = time.perf_counter()
            if kind == "kill":
                os.kill(lt(handle).pid, signal.SIGKILL)
                await asyncio.wait_for(waiter, 10)
            else:
                await world.runtime.stop_task(handle, timeout=1.0 if kind == "stop_ignored" else 10.0)
            took = time.perf_counter() - began
            await asyncio.wait_for(waiter, 10)
            return took

        return asyncio.run(measure())
    finally:
        world.close()


def plain_round(kind: str, work: Path) -> float:
    """The same server as a plain child of this process: SIGTERM or SIGKILL -> reaped."""
    (work / "server.js").write_text(SERVER_JS)
    port = free_port()
    proc = subprocess.Popen([NODE or "node", str(work / "server.js"), f"--port={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        get(port)
        began = time.perf_counter()
        proc.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
        proc.wait(10)
        return time.perf_counter() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def flood_round(work: Path, rate: int = 2000, burst: int = 5000) -> tuple[int, int, float]:
    """Bytes of a 120,000-byte flood that reach the log, bytes the bucket allowed, and seconds."""
    began = time.monotonic()
    fd = logs.open_for_task(work, max_bytes=10**7, keep=1, rate=rate, burst=burst)
    os.write(fd, b"flood\n" * 20000)
    time.sleep(2.0)  # the measured window: the bucket refills at `rate` meanwhile
    os.write(fd, b"after the flood\n")
    os.close(fd)
    assert logs.wait_drained(work, 10)
    elapsed = time.monotonic() - began
    passed = sum(len(line) + 1 for line in logs.tail(work / "foundry.log", 10**6)
                 if not line.startswith("[foundry-fleet]"))
    return passed, int(burst + rate * elapsed), elapsed


def trickle_round(work: Path, seconds: float = 2.0) -> tuple[int, int, float]:
    """One-byte writes for `seconds`: how many writes, how many reads the writer made, and seconds."""
    fd = logs.open_for_task(work, max_bytes=10**7, keep=1)
    os.write(fd, b"start\n")
    deadline = time.monotonic() + 5
    while logs.tail(work / "foundry.log", 1) != ["start"] and time.monotonic() < deadline:
        time.sleep(0.01)
    writer = logs._writers[work]

    def reads() -> int:
        io = dict(line.split(": ") for line in Path(f"/proc/{writer}/io").read_text().splitlines())
        return int(io["syscr"])

    before, began, sent = reads(), time.monotonic(), 0
    while time.monotonic() - began < seconds:
        os.write(fd, b"x")
        sent += 1
    os.write(fd, b"\n")
    deadline = time.monotonic() + 5
    while not logs.tail(work / "foundry.log", 1)[0].startswith("x") and time.monotonic() < deadline:
        time.sleep(0.01)
    woke, elapsed = reads() - before, time.monotonic() - began
    os.close(fd)
    logs.wait_drained(work, 5)
    return sent, woke, elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0 or NODE is None:
        sys.exit("needs root and node on PATH, as the local runtime's tests do")
    sandboxed = {kind: [runtime_round(kind) for _ in range(args.rounds)] for kind in ("stop", "stop_ignored", "kill")}
    with tempfile.TemporaryDirectory(prefix="ff-bench-runtime-") as tmp:
        work = Path(tmp)
        plain = {kind: [plain_round(kind, work) for _ in range(args.rounds)] for kind in ("stop", "kill")}
        floods = [flood_round(work / f"flood-{i}") for i in range(3)]
        trickles = [trickle_round(work / f"trickle-{i}") for i in range(3)]
    print(f"machine: {describe()}")
    print(f"rounds: {args.rounds} of each, every sandboxed task in a fresh runtime (bwrap, netns, cgroups)")
    print(f"stop, exits on SIGTERM        : {ms(sandboxed['stop'])}   (plain child: {ms(plain['stop'])}; "
          f"bound < 2000 ms)")
    print(f"stop, ignores SIGTERM (1 s)   : {ms(sandboxed['stop_ignored'])}   (bound 1000..4000 ms)")
    print(f"SIGKILL -> wait_task returns  : {ms(sandboxed['kill'])}   (plain child: {ms(plain['kill'])}; "
          f"bound < 1000 ms)")
    for passed, allowed, elapsed in floods:
        print(f"flood of 120000 bytes at 2000 B/s, burst 5000: {passed} bytes through in {elapsed:.2f} s "
              f"({passed / elapsed:.0f} B/s), bucket allows {allowed}; unlimited would pass 120016")
    for sent, woke, elapsed in trickles:
        print(f"one-byte writes: {sent} in {elapsed:.2f} s, writer read {woke} times "
              f"({woke / elapsed:.0f} a second, {sent / max(woke, 1):.0f} writes a read; one read a write "
              f"would be {sent}; bound {100 * elapsed + 50:.0f})")


if __name__ == "__main__":
    main()
