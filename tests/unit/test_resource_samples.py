"""The resource sampler on plain callables: its ring buffers, CPU rates, dropping what stopped, failures."""

from __future__ import annotations

import asyncio

import pytest

from foundry_fleet.config import PanelSection
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.runtime.base import TaskStats
from foundry_fleet.services.resource_samples import ResourcePoint, ResourceSamples

pytestmark = pytest.mark.timeout(10)
MIB = 1024 * 1024


class Host:
    """Instances whose figures a test sets, and a clock it moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.stats: dict[str, TaskStats | Exception | None] = {}
        self.asked: list[str] = []

    def running(self) -> list[str]:
        return list(self.stats)

    async def stats_of(self, name: str) -> TaskStats | None:
        self.asked.append(name)
        value = self.stats[name]
        if isinstance(value, Exception):
            raise value
        return value

    def samples(self, **settings: object) -> ResourceSamples:
        return ResourceSamples(self.running, self.stats_of, clock=lambda: self.now + 1.7e9,
                               monotonic=lambda: self.now, **settings)  # type: ignore[arg-type]


def sample(samples: ResourceSamples) -> None:
    asyncio.run(samples.sample_once())


def test_a_ring_buffer_per_instance_keeps_the_history_minutes_oldest_first() -> None:
    host = Host()
    samples = host.samples(sample_interval=30.0, history_minutes=2)  # 4 samples
    for i in range(10):
        host.stats["alpha"] = TaskStats(memory_bytes=(100 + i) * MIB, cpu_seconds=float(i))
        sample(samples)
        host.now += 30
    history = samples.history("alpha")
    assert [p.memory_bytes // MIB for p in history] == [106, 107, 108, 109]
    assert [p.at for p in history] == sorted(p.at for p in history)
    assert samples.latest("alpha") == history[-1] and samples.latest("beta") is None and samples.history("beta") == []


def test_cpu_is_the_difference_of_totals_over_the_time_between_them() -> None:
    host = Host()
    samples = host.samples(sample_interval=30.0)
    percents = []
    for total, wait in ((10.0, 30), (25.0, 30), (25.0, 10), (1.0, 20), (4.0, 0)):
        host.stats["alpha"] = TaskStats(memory_bytes=MIB, cpu_seconds=total, memory_limit_bytes=512 * MIB)
        sample(samples)
        percents.append(samples.latest("alpha").cpu_percent)  # type: ignore[union-attr]
        host.now += wait
    # First: no rate yet. 15 s of CPU in 30 s: half a core. Idle. A total that fell: restarted, no rate.
    # 3 s of CPU in 20 s.
    assert percents == [None, 50.0, 0.0, None, 15.0]
    assert samples.latest("alpha") == ResourcePoint(at=host.now + 1.7e9, memory_bytes=MIB, cpu_percent=15.0,
                                                   memory_limit_bytes=512 * MIB)


def test_a_runtimes_own_percent_is_taken_as_it_is() -> None:
    host = Host()
    samples = host.samples()
    host.stats["alpha"] = TaskStats(memory_bytes=MIB, cpu_seconds=None, cpu_percent=37.5)  # as Nomad gives it
    host.stats["beta"] = TaskStats(memory_bytes=MIB, cpu_seconds=None)  # neither: no CPU figure at all
    sample(samples)
    assert samples.latest("alpha").cpu_percent == 37.5  # type: ignore[union-attr]
    assert samples.latest("beta").cpu_percent is None  # type: ignore[union-attr]


def test_stopped_and_removed_instances_are_dropped_so_nothing_grows() -> None:
    host = Host()
    samples = host.samples()
    for name in ("alpha", "beta", "gamma"):
        host.stats[name] = TaskStats(memory_bytes=MIB, cpu_seconds=1.0)
    sample(samples)
    del host.stats["beta"]
    host.stats["gamma"] = None  # stopped after it was listed: no point, and dropped once not listed
    sample(samples)
    assert samples.history("beta") == [] and len(samples.history("gamma")) == 1
    del host.stats["gamma"]
    sample(samples)
    assert samples.history("gamma") == []
    assert set(samples._points) == set(samples._totals) == {"alpha"}


def test_one_instance_failing_does_not_stop_the_others_nor_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    host = Host()
    host.stats["alpha"] = TaskStats(memory_bytes=MIB, cpu_seconds=1.0)
    host.stats["broken"] = ExternalFailure("Nomad at http://nomad:4646 did not answer")
    samples = host.samples(sample_interval=1.0)

    async def scenario() -> None:
        rounds = 0

        def running() -> list[str]:
            nonlocal rounds
            rounds += 1
            if rounds == 2:
                raise RuntimeError("the instances could not be listed")
            return host.running()

        samples.running = running
        samples.sample_interval = 0.01
        loop = asyncio.create_task(samples.run())
        while rounds < 4:
            await asyncio.sleep(0.01)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop

    asyncio.run(scenario())
    assert len(samples.history("alpha")) >= 2 and samples.history("broken") == []
    said = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert said == ["no resource sample of broken: Nomad at http://nomad:4646 did not answer"]  # once, not each round
    assert any("round of resource samples failed" in r.getMessage() for r in caplog.records)


def test_stats_calls_are_bounded_and_a_hanging_one_ends_with_the_interval() -> None:
    host = Host()
    samples = host.samples(sample_interval=0.2)
    busy = peak = 0

    async def stats_of(name: str) -> TaskStats | None:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        try:
            await asyncio.sleep(60 if name == "hung" else 0.01)
        finally:
            busy -= 1
        return TaskStats(memory_bytes=MIB, cpu_seconds=0.0)

    names = ["hung", *(f"i{n}" for n in range(30))]
    samples.running = lambda: names
    samples.stats = stats_of
    asyncio.run(asyncio.wait_for(samples.sample_once(), 5))
    assert peak == 8
    assert all(len(samples.history(n)) == 1 for n in names[1:]) and samples.history("hung") == []


def test_settings_come_from_the_panel_section_and_sampling_off_runs_nothing() -> None:
    host = Host()
    samples = ResourceSamples.from_config(PanelSection(sample_interval=20, history_minutes=30), host.running,
                                          host.stats_of)
    assert (samples.sample_interval, samples.keep, samples.enabled) == (20, 90, True)
    off = ResourceSamples.from_config(PanelSection(sampling=False), host.running, host.stats_of)
    host.stats["alpha"] = TaskStats(memory_bytes=MIB, cpu_seconds=0.0)
    asyncio.run(asyncio.wait_for(off.run(), 1))  # returns at once
    assert host.asked == [] and off.history("alpha") == []
