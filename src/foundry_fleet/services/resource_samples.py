"""Each running instance's memory and CPU over the last hour, for the web panel and /metrics.

Samples stay in memory, one ring buffer per instance (a deque holding `history_minutes` of them): a panel
reads them for nothing, and the database is spared rows of figures nobody keeps past the hour. An instance
that stops is dropped at the next round, so the buffers hold only what runs.

CPU is a rate, 100 = one core: the difference of two of the runtime's CPU totals over the time between
them, or the percent a runtime measured itself when it keeps no total (Nomad). The first sample of a task
has no rate yet, nor has one whose total went down (its task was restarted in between).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from foundry_fleet.config import PanelSection
from foundry_fleet.runtime.base import TaskStats

log = logging.getLogger("foundry_fleet.resource_samples")

CONCURRENCY = 8  # runtimes' stats calls at once: a cluster's API is asked for 8 instances at a time, not 200


@dataclass(frozen=True, slots=True)
class ResourcePoint:
    at: float  # wall clock, seconds
    memory_bytes: int
    cpu_percent: float | None  # 100 = one core; None: no rate yet (a task's first sample)
    memory_limit_bytes: int | None


class ResourceSamples:
    def __init__(self, running: Callable[[], Iterable[str]], stats: Callable[[str], Awaitable[TaskStats | None]],
                 *, sample_interval: float = 30.0, history_minutes: int = 60, enabled: bool = True,
                 concurrency: int = CONCURRENCY, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`running()`: the instances that have a task now; `stats(name)`: one instance's figures now (None
        when it has no task any more)."""
        self.running = running
        self.stats = stats
        self.sample_interval = sample_interval
        self.enabled = enabled
        self.keep = max(1, round(history_minutes * 60 / sample_interval))
        self.concurrency = concurrency
        self.clock = clock
        self.monotonic = monotonic
        self._points: dict[str, deque[ResourcePoint]] = {}
        self._totals: dict[str, tuple[float, float]] = {}  # name -> (monotonic time, CPU seconds) of its last total
        self._failing: set[str] = set()  # said once, not every round

    @classmethod
    def from_config(cls, panel: PanelSection, running: Callable[[], Iterable[str]],
                    stats: Callable[[str], Awaitable[TaskStats | None]]) -> ResourceSamples:
        return cls(running, stats, sample_interval=panel.sample_interval, history_minutes=panel.history_minutes,
                   enabled=panel.sampling)

    # reads ---------------------------------------------------------------------------------

    def latest(self, name: str) -> ResourcePoint | None:
        points = self._points.get(name)
        return points[-1] if points else None

    def history(self, name: str) -> list[ResourcePoint]:
        """Oldest first."""
        return list(self._points.get(name, ()))

    def forget(self, name: str) -> None:
        self._points.pop(name, None)
        self._totals.pop(name, None)
        self._failing.discard(name)

    # sampling ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sample every `sample_interval` seconds until cancelled (at once when sampling is off). Rounds
        begin on the interval's beat, not a round's length after the last one ended, so that points stay
        evenly spaced."""
        if not self.enabled:
            return
        while True:
            began = self.monotonic()
            try:
                await self.sample_once()
            except Exception:  # noqa: BLE001 - the figures must outlive any one bad round
                log.exception("a round of resource samples failed")
            await asyncio.sleep(max(0.0, self.sample_interval - (self.monotonic() - began)))

    async def sample_once(self) -> None:
        """One sample of every running instance, a few at a time; those no longer running are dropped."""
        names = set(self.running())
        for gone in (self._points.keys() | self._totals.keys() | self._failing) - names:
            self.forget(gone)
        limit = asyncio.Semaphore(self.concurrency)

        async def one(name: str) -> None:
            async with limit:
                await self._sample(name)

        await asyncio.gather(*(one(name) for name in sorted(names)))

    async def _sample(self, name: str) -> None:
        try:
            # A runtime that hangs (a cluster away) may not hold up the rounds after this one.
            stats = await asyncio.wait_for(self.stats(name), self.sample_interval)
        except Exception as e:  # noqa: BLE001 - one instance's failure is not the others'
            self._totals.pop(name, None)
            if name not in self._failing:
                self._failing.add(name)
                log.warning("no resource sample of %s: %s", name, getattr(e, "message", None) or repr(e))
            return
        self._failing.discard(name)
        if stats is None:  # stopped since it was listed: the next round drops it
            self._totals.pop(name, None)
            return
        point = ResourcePoint(at=self.clock(), memory_bytes=stats.memory_bytes,
                              cpu_percent=self._cpu_percent(name, stats), memory_limit_bytes=stats.memory_limit_bytes)
        self._points.setdefault(name, deque(maxlen=self.keep)).append(point)

    def _cpu_percent(self, name: str, stats: TaskStats) -> float | None:
        if stats.cpu_percent is not None:
            return stats.cpu_percent
        if stats.cpu_seconds is None:
            return None
        now = self.monotonic()
        before = self._totals.get(name)
        self._totals[name] = (now, stats.cpu_seconds)
        if before is None or now <= before[0] or stats.cpu_seconds < before[1]:
            return None
        return 100 * (stats.cpu_seconds - before[1]) / (now - before[0])
