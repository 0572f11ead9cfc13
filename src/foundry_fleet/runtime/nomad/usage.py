"""An instance's memory and CPU from Nomad's `/v1/client/allocation/<id>/stats`, as the fleet's TaskStats.

Nomad's client samples each task of its node every collection interval (1 s by default), and the endpoint
answers with the latest sample, summed over the allocation's running tasks: memory as the task driver
measured it, and CPU as a percent of one core over the client's last interval (plus MHz derived from that
percent), but no CPU total. So TaskStats carries Nomad's own percent and no `cpu_seconds`: a reading over
Nomad's last second, not an average since the fleet's previous sample, which is as much as Nomad knows.

`Measured` names the fields a driver really sampled: in a cgroup (exec, podman) the group's `Usage`, the
figure the local runtime reads too; without one (raw_exec) only `RSS`.

Pure: it reads Nomad's JSON as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foundry_fleet.runtime.base import TaskStats

MIB = 1024 * 1024


def usage_of(answer: Mapping[str, Any] | None, alloc: Mapping[str, Any]) -> TaskStats | None:
    """`answer`: the endpoint's (None: its 404); `alloc`: the allocation's stub, whose AllocatedResources
    give the limit. None while no task of it runs: Nomad then sums nothing and stamps no time."""
    if not answer or not answer.get("Timestamp"):
        return None
    usage = answer.get("ResourceUsage") or {}
    memory = usage.get("MemoryStats") or {}
    cpu = usage.get("CpuStats") or {}
    field = "Usage" if "Usage" in (memory.get("Measured") or ()) else "RSS"
    percent = float(cpu.get("Percent") or 0.0) if "Percent" in (cpu.get("Measured") or ()) else None
    return TaskStats(memory_bytes=int(memory.get(field) or 0), cpu_seconds=None,
                     memory_limit_bytes=memory_limit_bytes(alloc), cpu_percent=percent)


def memory_limit_bytes(alloc: Mapping[str, Any]) -> int | None:
    """What the task drivers hold the allocation's tasks to: a task's MemoryMaxMB where it may use more
    than it reserved (memory oversubscription), else its MemoryMB."""
    tasks = (alloc.get("AllocatedResources") or {}).get("Tasks") or {}
    total = 0
    for task in tasks.values():
        memory = (task or {}).get("Memory") or {}
        total += int(memory.get("MemoryMaxMB") or 0) or int(memory.get("MemoryMB") or 0)
    return total * MIB if total > 0 else None
