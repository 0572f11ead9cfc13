"""What /metrics answers: a registry of the fleet's own (never prometheus_client's global one, which
would bring in whatever else the process imports), holding the daemon's process figures from the start
and the fleet's once the daemon has built it."""

from __future__ import annotations

import hmac
import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from foundry_fleet.services.metrics.fleet_collector import P


class DaemonFigures:
    """The daemon's version and how long it has been running."""

    def __init__(self, version: str, started_at: float, clock: Callable[[], float] = time.time) -> None:
        self.version = version
        self.started_at = started_at
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(f"{P}_build", "The fleet's version",
                               value={"version": self.version, "python": platform.python_version()})
        yield GaugeMetricFamily(f"{P}_daemon_uptime_seconds", "Seconds since the daemon started",
                                value=max(0.0, self.clock() - self.started_at))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, token: str, version: str, started_at: float, clock: Callable[[], float] = time.time) -> None:
        """`token`: what a scraper must send to the door that asks for one."""
        self._token = token.encode()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # the daemon's CPU, memory and open files
        self.registry.register(DaemonFigures(version, started_at, clock))

    def watch(self, collector: Collector) -> None:
        """Show `collector`'s figures too, from the next scrape on (any thread)."""
        self.registry.register(collector)

    def scrape(self) -> bytes:
        """The text format; reads the database and may list snapshots: call it off the event loop."""
        return generate_latest(self.registry)

    def admits(self, token: str) -> bool:
        # In constant time: how much of a guess matched must not show in how long the answer takes.
        return hmac.compare_digest(self._token, token.encode(errors="replace"))
