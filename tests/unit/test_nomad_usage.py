"""An instance's TaskStats from Nomad's allocation stats, in the shapes Nomad's client gives them
(client/structs: AllocResourceUsage), and the client's call for them."""

from __future__ import annotations

import asyncio

import httpx

from foundry_fleet.runtime.base import TaskStats
from foundry_fleet.runtime.nomad.api import NomadApi, NomadSettings
from foundry_fleet.runtime.nomad.usage import memory_limit_bytes, usage_of

MIB = 1024 * 1024
MEMORY_ZERO = {"RSS": 0, "Cache": 0, "Swap": 0, "MappedFile": 0, "Usage": 0, "MaxUsage": 0, "KernelUsage": 0,
               "KernelMaxUsage": 0, "Measured": None}
CPU_ZERO = {"SystemMode": 0, "UserMode": 0, "TotalTicks": 0, "ThrottledPeriods": 0, "ThrottledTime": 0,
            "Percent": 0, "Measured": None}


def alloc(memory_mb: int = 512, memory_max_mb: int = 0) -> dict:
    return {"ID": "a1", "AllocatedResources": {"Tasks": {"foundry": {
        "Cpu": {"CpuShares": 1000}, "Memory": {"MemoryMB": memory_mb, "MemoryMaxMB": memory_max_mb}}}}}


def answer(memory: dict, cpu: dict, timestamp: int = 1_770_000_000_000_000_000) -> dict:
    usage = {"MemoryStats": {**MEMORY_ZERO, **memory}, "CpuStats": {**CPU_ZERO, **cpu}, "DeviceStats": []}
    return {"ResourceUsage": usage, "Tasks": {"foundry": {"ResourceUsage": usage, "Timestamp": timestamp,
                                                           "Pids": None}}, "Timestamp": timestamp}


def test_a_cgroup_drivers_usage_and_nomads_percent_with_the_allocated_memory_as_limit() -> None:
    # The exec driver on cgroup v2 samples these four; its percent is one core's (100 = one core).
    got = usage_of(answer({"RSS": 90 * MIB, "Cache": 30 * MIB, "Usage": 125 * MIB,
                           "Measured": ["RSS", "Cache", "Swap", "Usage"]},
                          {"Percent": 37.5, "TotalTicks": 750.0, "UserMode": 30.0, "SystemMode": 7.5,
                           "Measured": ["System Mode", "User Mode", "Throttled Periods", "Throttled Time",
                                        "Percent"]}), alloc(512))
    assert got == TaskStats(memory_bytes=125 * MIB, cpu_seconds=None, memory_limit_bytes=512 * MIB, cpu_percent=37.5)


def test_without_a_cgroup_the_resident_set_and_no_percent_nomad_did_not_measure() -> None:
    got = usage_of(answer({"RSS": 80 * MIB, "Measured": ["RSS", "Swap"]}, {"Measured": ["System Mode", "User Mode"]}),
                   alloc(300, memory_max_mb=600))
    assert got == TaskStats(memory_bytes=80 * MIB, cpu_seconds=None, memory_limit_bytes=600 * MIB, cpu_percent=None)


def test_nothing_running_is_no_reading() -> None:
    # What Nomad's client answers for an allocation it holds whose tasks have ended: the last sample of each
    # task under Tasks, nothing summed, no time.
    ended = answer({"Usage": 100 * MIB, "Measured": ["Usage"]}, {"Percent": 5.0, "Measured": ["Percent"]})
    ended.update(ResourceUsage={"MemoryStats": MEMORY_ZERO, "CpuStats": CPU_ZERO, "DeviceStats": []}, Timestamp=0)
    assert usage_of(ended, alloc()) is None
    assert usage_of(None, alloc()) is None  # a 404: no such allocation, or no path to its node


def test_a_limit_is_the_sum_of_the_tasks_and_none_when_nothing_is_allocated() -> None:
    two = {"AllocatedResources": {"Tasks": {"a": {"Memory": {"MemoryMB": 100}},
                                            "b": {"Memory": {"MemoryMB": 50, "MemoryMaxMB": 80}}}}}
    assert memory_limit_bytes(two) == 180 * MIB
    assert memory_limit_bytes({"AllocatedResources": None}) is None and memory_limit_bytes({}) is None


def test_the_client_asks_the_allocations_stats_path_and_a_404_is_none() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if "gone" in request.url.path:
            return httpx.Response(404, text='Unknown allocation "gone"')
        return httpx.Response(200, json=answer({"Usage": 1, "Measured": ["Usage"]}, {}))

    async def scenario() -> None:
        api = NomadApi(NomadSettings("http://nomad.test:4646", retries=0), transport=httpx.MockTransport(handler))
        assert (await api.allocation_stats("a1"))["Timestamp"] > 0
        assert await api.allocation_stats("gone") is None
        await api.aclose()

    asyncio.run(scenario())
    assert seen == ["/v1/client/allocation/a1/stats", "/v1/client/allocation/gone/stats"]
