"""The supervisor's `stats` and `running`, what the resource sampler reads, on the fake runtime."""

from __future__ import annotations

import pytest

from foundry_fleet.runtime.base import TaskStats
from foundry_fleet.services.resource_samples import ResourceSamples
from foundry_fleet.services.supervisor import Supervisor
from tests.unit.test_supervisor import World, run, state_is, until, world  # noqa: F401 (its fixture)

pytestmark = pytest.mark.timeout(20)


def test_a_running_instance_has_stats_one_without_a_task_none(world: World) -> None:  # noqa: F811
    world.add("alice")
    world.add("bob", desired="stopped")
    world.runtime.behave("alice", memory_bytes=150 * 1024 * 1024, cpu_seconds=2.5, memory_limit_bytes=512 * 1024 * 1024)

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        assert supervisor.running() == ["alice"]
        assert await supervisor.stats("alice") == TaskStats(memory_bytes=150 * 1024 * 1024, cpu_seconds=2.5,
                                                            memory_limit_bytes=512 * 1024 * 1024)
        assert await supervisor.stats("bob") is None and await supervisor.stats("nobody") is None
        samples = ResourceSamples(supervisor.running, supervisor.stats)
        await samples.sample_once()
        assert samples.latest("alice").memory_bytes == 150 * 1024 * 1024  # type: ignore[union-attr]
        world.set_desired("alice", "stopped")
        supervisor.poke("alice")
        await until(state_is(world, "alice", "stopped"), "alice to stop")
        assert supervisor.running() == [] and await supervisor.stats("alice") is None
        await samples.sample_once()
        assert samples.history("alice") == []

    run(world, scenario)
