"""The fleet's figures, read when Prometheus scrapes (a prometheus_client collector): each instance's state,
restarts, memory, CPU and players, its snapshots and their copies on backup destinations, the tenant
hosts' certificates, and totals over the fleet.

Labels are the instance's name (and a destination or host) and never its owner: a Discord id is a
person's, and every name is a new series to keep.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from foundry_fleet.domain.instance import LIVE_STATES, InstanceState
from foundry_fleet.services.certificates import CheckedHost, expires_at
from foundry_fleet.services.metrics.backup_figures import BackupFigureReads
from foundry_fleet.services.metrics.instance_figures import InstanceFigures

log = logging.getLogger(__name__)

P = "foundry_fleet"
DAY = 86400.0
_LIVE = frozenset(s.value for s in LIVE_STATES)
T = TypeVar("T")


class ResourcePoint(Protocol):
    """One sample of an instance's use of the host (None: not measured)."""

    @property
    def memory_bytes(self) -> float | None: ...

    @property
    def memory_limit_bytes(self) -> float | None: ...

    @property
    def cpu_percent(self) -> float | None: ...


class ResourceSamples(Protocol):
    def latest(self, name: str) -> ResourcePoint | None: ...


class Players(Protocol):
    def users(self, name: str) -> int | None:
        """Users connected to the instance's Foundry now; None: not known."""


class Certificates(Protocol):
    def checked(self) -> list[CheckedHost]: ...


class FleetCollector:
    def __init__(self, instances: Callable[[], list[InstanceFigures]], players: Players,
                 backups: BackupFigureReads | None = None, certificates: Certificates | None = None,
                 samples: ResourceSamples | None = None, clock: Callable[[], float] = time.time) -> None:
        """`instances`: one read of them all. Without `samples`, no memory and CPU figures are shown."""
        self.instances = instances
        self.players = players
        self.backups = backups
        self.certificates = certificates
        self.samples = samples
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        read = GaugeMetricFamily(f"{P}_metrics_read_ok", "Whether this scrape could read a part of the fleet "
                                 "(0: its figures are left out; the daemon's log says why)", labels=["part"])
        instances = self._read(read, "instances", self.instances)
        if instances is not None:
            # Read once: the fleet's total is then the sum of the instances' figures of the same scrape.
            users = {i.name: self.players.users(i.name) for i in instances}
            yield from self._instance_families(instances, users)
            yield from self._fleet_families(instances, users)
            if self.backups is not None:
                yield from self._read(read, "backups", lambda: list(self._backup_families(instances, now))) or []
        if self.certificates is not None:
            yield from self._read(read, "certificates", lambda: list(self._certificate_families(now))) or []
        yield read

    def _read(self, read: GaugeMetricFamily, part: str, reading: Callable[[], T]) -> T | None:
        """A part that cannot be read is left out of this scrape rather than failing all of it."""
        try:
            value = reading()
        except Exception:  # noqa: BLE001 - one part in trouble must not fail the whole scrape
            log.exception("metrics: could not read the %s", part)
            read.add_metric([part], 0)
            return None
        read.add_metric([part], 1)
        return value

    def _instance_families(self, instances: list[InstanceFigures], users: dict[str, int | None]) -> Iterator[Metric]:
        state = GaugeMetricFamily(f"{P}_instance_state", "1 for the state the instance is in, 0 for the others",
                                  labels=["instance", "state"])
        suspended = GaugeMetricFamily(f"{P}_instance_suspended", "1 while an admin keeps the instance stopped",
                                      labels=["instance"])
        restarts = CounterMetricFamily(f"{P}_instance_restarts", "Restarts after a crash since it was created",
                                       labels=["instance"])
        players = GaugeMetricFamily(f"{P}_instance_players", "Users connected to its Foundry, as its last health "
                                    "check heard (left out while that is not known)", labels=["instance"])
        for i in instances:
            for s in InstanceState:
                state.add_metric([i.name, s.value], 1 if i.state == s.value else 0)
            suspended.add_metric([i.name], 1 if i.suspended else 0)
            restarts.add_metric([i.name], i.restarts)
            if (connected := users[i.name]) is not None:
                players.add_metric([i.name], connected)
        yield from (state, suspended, restarts, players)
        if self.samples is not None:
            yield from self._resource_families(instances)

    def _resource_families(self, instances: list[InstanceFigures]) -> Iterator[Metric]:
        memory = GaugeMetricFamily(f"{P}_instance_memory_bytes", "Memory the running instance uses",
                                   labels=["instance"])
        limit = GaugeMetricFamily(f"{P}_instance_memory_limit_bytes", "The memory limit of the running instance",
                                  labels=["instance"])
        cpu = GaugeMetricFamily(f"{P}_instance_cpu_percent", "CPU the running instance used over the last sample "
                                "interval, in percent of one core", labels=["instance"])
        total = 0.0
        for name, point in self._points(instances):
            if point.memory_bytes is not None:
                memory.add_metric([name], point.memory_bytes)
                total += point.memory_bytes
            if point.memory_limit_bytes is not None:
                limit.add_metric([name], point.memory_limit_bytes)
            if point.cpu_percent is not None:
                cpu.add_metric([name], point.cpu_percent)
        yield from (memory, limit, cpu)
        yield GaugeMetricFamily(f"{P}_memory_bytes", "Memory all running instances use", value=total)

    def _points(self, instances: Iterable[InstanceFigures]) -> Iterator[tuple[str, ResourcePoint]]:
        assert self.samples is not None
        for i in instances:
            # The samples keep an hour of history: a stopped instance's last one is not what it uses now.
            if i.state in _LIVE and (point := self.samples.latest(i.name)) is not None:
                yield i.name, point

    def _fleet_families(self, instances: list[InstanceFigures], users: dict[str, int | None]) -> Iterator[Metric]:
        by_state = Counter(i.state for i in instances)
        counts = GaugeMetricFamily(f"{P}_instances", "Instances in each state", labels=["state"])
        for s in InstanceState:
            counts.add_metric([s.value], by_state.get(s.value, 0))
        yield counts
        players = sum(u for u in users.values() if u is not None)
        yield GaugeMetricFamily(f"{P}_players", "Users connected to all instances", value=players)

    def _backup_families(self, instances: list[InstanceFigures], now: float) -> Iterator[Metric]:
        assert self.backups is not None
        figures = self.backups.read([i.name for i in instances])
        count = GaugeMetricFamily(f"{P}_instance_snapshots", "Snapshots the instance has", labels=["instance"])
        for name, n in figures.snapshots.items():
            count.add_metric([name], n)
        age = GaugeMetricFamily(f"{P}_instance_last_snapshot_age_seconds", "Seconds since its newest snapshot "
                                "was taken (left out while it has none)", labels=["instance"])
        for name, at in figures.newest_at.items():
            age.add_metric([name], max(0.0, now - at))
        labels = ["instance", "destination"]
        lag = GaugeMetricFamily(f"{P}_replication_lag_seconds", "How much older the destination's newest copy is "
                                "than the instance's newest snapshot", labels=labels)
        behind = GaugeMetricFamily(f"{P}_replication_snapshots_behind", "Snapshots the destination has yet to "
                                   "receive", labels=labels)
        failing = GaugeMetricFamily(f"{P}_replication_failing", "1 when the last round with the destination "
                                    "failed", labels=labels)
        for r in figures.replicas:
            key = [r.instance, r.destination]
            if r.seconds_behind is not None:
                lag.add_metric(key, r.seconds_behind)
            behind.add_metric(key, r.snapshots_behind)
            failing.add_metric(key, 1 if r.failing else 0)
        yield from (count, age, lag, behind, failing)

    def _certificate_families(self, now: float) -> Iterator[Metric]:
        assert self.certificates is not None
        labels = ["instance", "host"]
        valid = GaugeMetricFamily(f"{P}_certificate_valid", "1 when the edge served the host a certificate a "
                                  "browser accepts, at the last check of running instances' hosts", labels=labels)
        days = GaugeMetricFamily(f"{P}_certificate_days_left", "Days until the host's certificate expires, "
                                 "counted to the start of the day it expires", labels=labels)
        for checked in self.certificates.checked():
            key = [checked.instance, checked.certificate.host]
            valid.add_metric(key, 1 if checked.certificate.state == "valid" else 0)
            if (expires := expires_at(checked.certificate)) is not None:
                days.add_metric(key, (expires - now) / DAY)
        yield from (valid, days)
