"""The stand-in's `/v1/client/allocation/<id>/stats`: what its tasks use, in Nomad's AllocResourceUsage.

As Nomad's client does (client/allocrunner's LatestAllocStats): each task's latest sample under `Tasks`
(a task that ended keeps its last one), the sum over the *running* tasks under `ResourceUsage`, and the
newest running task's sample time as `Timestamp` (0 when none runs). CPU is a percent of one core over
the time since the task's previous sample, 0 the first time (client/lib/cpustats' Tracker), with MHz
("ticks") derived from it; Nomad keeps no CPU total.

Simpler than Nomad on purpose: a task is sampled when the endpoint is asked, not every second in the
background, so its percent covers the time since the previous request. Memory is what the runtimes
running the tasks can tell: exec and podman tasks' cgroup usage (`Usage`), a raw_exec task's resident
set (`RSS`), each listed in `Measured` as a Nomad driver lists what it really sampled.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from foundry_fleet.runtime import procfs
from tests.support.nomad_standin import drivers

MEMORY_FIELDS = ("RSS", "Cache", "Swap", "MappedFile", "Usage", "MaxUsage", "KernelUsage", "KernelMaxUsage")
CPU_FIELDS = ("SystemMode", "UserMode", "TotalTicks", "ThrottledPeriods", "ThrottledTime", "Percent")


@dataclass(frozen=True)
class Reading:
    memory_bytes: int
    memory_field: str  # the MemoryStats field it is: Usage (a cgroup's) or RSS
    cpu_seconds: float


async def read(run: Any) -> Reading | None:
    """What a task's runtime tells of it now; None when it does not run."""
    if isinstance(run, drivers.RuntimeRun):
        stats = await run.runtime.task_stats(run.handle)
        if stats is None or stats.cpu_seconds is None:
            return None
        return Reading(stats.memory_bytes, "Usage", stats.cpu_seconds)
    if isinstance(run, drivers.ProcessRun):
        def group() -> Reading | None:
            pids = procfs.group_members(run.proc.pid)
            if not pids:
                return None
            return Reading(sum(procfs.rss_bytes(p) for p in pids), "RSS", sum(procfs.cpu_seconds(p) for p in pids))

        return await asyncio.to_thread(group)
    return None


def _usage(memory: dict[str, Any] | None = None, cpu: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"MemoryStats": {**dict.fromkeys(MEMORY_FIELDS, 0), "Measured": None, **(memory or {})},
            "CpuStats": {**dict.fromkeys(CPU_FIELDS, 0), "Measured": None, **(cpu or {})},
            "DeviceStats": []}


class UsageMeter:
    def __init__(self) -> None:
        self.previous: dict[tuple[str, str], tuple[float, float]] = {}  # (alloc, task) -> (CPU s, monotonic s)
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}  # each task's last TaskResourceUsage

    async def allocation(self, alloc: dict[str, Any], runners: list[Any], node_mhz: int,
                         node_cores: int) -> dict[str, Any]:
        total = _usage()
        timestamp = 0
        for runner in runners:
            key = (alloc["ID"], runner.name)
            running = runner.run is not None and alloc["TaskStates"][runner.name]["State"] == "running"
            reading = await read(runner.run) if running else None
            if reading is None:
                continue
            sample = self._sample(key, reading, node_mhz, node_cores)
            self.latest[key] = sample
            for part in ("MemoryStats", "CpuStats"):
                mine, summed = sample["ResourceUsage"][part], total[part]
                for name, value in mine.items():
                    if name == "Measured":
                        summed[name] = list(dict.fromkeys([*(summed[name] or []), *value]))
                    else:
                        summed[name] += value
            timestamp = max(timestamp, sample["Timestamp"])
        tasks = {task: usage for (alloc_id, task), usage in self.latest.items() if alloc_id == alloc["ID"]}
        return {"ResourceUsage": total, "Tasks": tasks, "Timestamp": timestamp}

    def _sample(self, key: tuple[str, str], reading: Reading, node_mhz: int, node_cores: int) -> dict[str, Any]:
        now = time.monotonic()
        before = self.previous.get(key)
        self.previous[key] = (reading.cpu_seconds, now)
        percent = 0.0
        if before is not None and now > before[1] and reading.cpu_seconds > before[0]:
            percent = 100 * (reading.cpu_seconds - before[0]) / (now - before[1])
        memory = {reading.memory_field: reading.memory_bytes, "Measured": [reading.memory_field]}
        cpu = {"Percent": percent, "TotalTicks": percent / 100 * node_mhz / node_cores, "Measured": ["Percent"]}
        return {"ResourceUsage": _usage(memory, cpu), "Timestamp": time.time_ns(), "Pids": None}
