"""Watching what the edge serves: a tenant host without a valid certificate, or with one about to expire,
is an event (and so a status update); its recovery is one too. Checked over TLS as a browser would
(`Edge.certificate`), every few minutes; an event is recorded only when a host's state changes.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from foundry_fleet.domain.events import Outcome
from foundry_fleet.edge.caddy_config import TenantSite
from foundry_fleet.edge.driver import CertificateState
from foundry_fleet.services.events import EventLog

log = logging.getLogger(__name__)

# Caddy renews an ACME certificate (90 days) a month before it expires: a week left means renewing failed.
# The local CA's certificates live 12 hours and are renewed as a matter of course: no warning for them.
EXPIRY_WARNING_S = 7 * 86400.0


def expires_at(state: CertificateState) -> float | None:
    """When the certificate expires, read as the start of the day it names (the check learns the day
    only): never later than it really does."""
    if state.state != "valid" or not state.not_after:
        return None
    return float(calendar.timegm(time.strptime(state.not_after, "%Y-%m-%d")))


@dataclass(frozen=True)
class CheckedHost:
    """What the last check found a host served."""

    instance: str
    certificate: CertificateState


def certificate_problem(state: CertificateState, now: float, expiry_warning: float = EXPIRY_WARNING_S) -> str | None:
    """What is wrong with what a host serves (None: nothing)."""
    if state.state != "valid":
        return f"{state.host}: {state.state}" + (f" ({state.detail})" if state.detail else "")
    expires = expires_at(state)
    if expires is not None and expiry_warning and expires - now < expiry_warning:
        return f"{state.host}: expires {state.not_after} and has not been renewed"
    return None


class CertificateWatch:
    def __init__(self, sites: Callable[[], list[TenantSite]], events: EventLog,
                 certificate: Callable[[str], CertificateState], tls: str,
                 clock: Callable[[], float] = time.time, expiry_warning: float | None = None) -> None:
        """`sites`: what the edge serves; `tls`: the edge's TLS mode ([edge] tls)."""
        self.sites = sites
        self.events = events
        self.certificate = certificate
        self.clock = clock
        if expiry_warning is None:
            expiry_warning = 0.0 if tls == "internal" else EXPIRY_WARNING_S
        self.expiry_warning = expiry_warning
        self._problems: dict[str, str] = {}  # host -> the problem last recorded
        # Replaced whole after each round, never changed in place: /metrics reads it from another thread.
        self._found: dict[str, CheckedHost] = {}
        self._checked = False  # a round has run (the panel says "not checked yet" before)

    def checked(self) -> list[CheckedHost]:
        """What the last round found, host by host (empty until the first round: see `run`). Reading it
        makes no TLS connection, so a scrape can afford it."""
        return list(self._found.values())

    def problems(self) -> dict[str, str] | None:
        """The hosts with a problem at the last check, by host; None before the first check."""
        return dict(self._problems) if self._checked else None

    def check_once(self) -> dict[str, str]:
        """Check every tenant host; record changes; returns the current problems by host."""
        now = self.clock()
        current: dict[str, str] = {}
        checked: dict[str, CheckedHost] = {}
        # The hosts the edge serves each instance (one it does not is reported as edge.hosts, not here).
        for site in self.sites():
            if site.state != "running":
                continue  # a stopped instance's host is served a 503 page; its certificate is not the point
            for host in site.hosts:
                state = self.certificate(host)
                checked[host] = CheckedHost(site.name, state)
                problem = certificate_problem(state, now, self.expiry_warning)
                if problem is not None:
                    current[host] = problem
                    if self._problems.get(host) != problem:
                        self.events.record("edge.certificate", site.name, Outcome.FAILED, problem, actor="edge")
                elif host in self._problems:
                    self.events.record("edge.certificate", site.name, Outcome.OK, f"{host}: valid again",
                                       actor="edge")
        self._problems = current
        self._found = checked
        self._checked = True
        return current

    async def run(self, every: float = 600.0, first_after: float = 600.0) -> None:
        """Forever; the first check waits, so certificates being issued at start are not reported."""
        await asyncio.sleep(first_after)
        while True:
            try:
                await asyncio.to_thread(self.check_once)
            except Exception:  # noqa: BLE001 - the watch must outlive one bad round
                log.exception("certificate check failed")
            await asyncio.sleep(every)
