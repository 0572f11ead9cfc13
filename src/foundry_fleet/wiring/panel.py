"""The web panel's services, from the daemon's own: one operations service, one supervisor, one sampler,
shared with the control API and the bot. The admin pages also get what only the wiring can build: the
host's health (the checks of `foundry-fleet doctor`) and the runtime's facts (what `foundry-fleet status`
says of it), as plain async callables, so the web layer imports neither the doctor's probes nor a driver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import httpx

from foundry_fleet.api.answer import answer
from foundry_fleet.config import FleetConfig
from foundry_fleet.runtime.base import NodeInfo
from foundry_fleet.services.access import Access
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.bulletin import Bulletin
from foundry_fleet.services.certificates import CertificateWatch
from foundry_fleet.services.daemon_info import DaemonInfo
from foundry_fleet.services.doctor import DoctorReport
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.panel_cards import CardSources, PanelCards
from foundry_fleet.services.release_jobs import ReleaseJobs
from foundry_fleet.services.resource_samples import ResourceSamples
from foundry_fleet.services.runtime_report import node_report
from foundry_fleet.services.supervisor import Supervisor
from foundry_fleet.web.panel.services import PanelServices
from foundry_fleet.wiring.doctor import doctor_report
from foundry_fleet.wiring.services import FleetServices, make_invites

T = TypeVar("T")

HEALTH_FRESH_S = 30.0  # the checks resolve names and probe tools: seconds of work, not for every page view


def panel_services(config: FleetConfig, services: FleetServices, operations: Operations, supervisor: Supervisor,
                   backups: Backups, certificates: CertificateWatch, bulletin: Bulletin,
                   samples: ResourceSamples | None, access: Access,
                   health: Callable[[], Awaitable[DoctorReport]] | None = None,
                   runtime_facts: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> PanelServices:
    """`access`: the daemon's one; `health`, `runtime_facts`: see `health_check` and `runtime_facts` below
    (None: those admin pages say they are not available)."""
    https_port = config.edge.https_port
    return PanelServices(
        access=access,
        cards=PanelCards(access, card_sources(supervisor, backups, certificates, samples)),
        operations=operations,
        backups=backups,
        releases=services.releases,
        logs=supervisor.logs,
        bulletin=bulletin,
        port_suffix="" if https_port == 443 else f":{https_port}",
        invites=make_invites(services),
        release_jobs=ReleaseJobs(services.releases),
        events=services.events,
        health=health,
        runtime_facts=runtime_facts,
    )


def card_sources(supervisor: Supervisor, backups: Backups, certificates: CertificateWatch,
                 samples: ResourceSamples | None) -> CardSources:
    """Where each instance's figures come from: the panel's cards and the control API's status read
    the same ones."""
    return CardSources(players=supervisor.users, resources=samples,
                       history_slots=samples.keep if samples is not None else 1,
                       newest_snapshots=backups.newest_snapshot_times, certificate_problems=certificates.problems)


class SharedResult(Generic[T]):
    """One run of `produce` at a time, its result kept `fresh_for` seconds: callers arriving while it
    runs wait for that same run rather than starting another. A run that fails is not kept."""

    def __init__(self, produce: Callable[[], Awaitable[T]], fresh_for: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.produce = produce
        self.fresh_for = fresh_for
        self.clock = clock
        self._kept: tuple[float, T] | None = None
        self._running: asyncio.Task[T] | None = None

    async def __call__(self) -> T:
        if self._kept is not None and self.clock() - self._kept[0] < self.fresh_for:
            return self._kept[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        # Shielded: a viewer who leaves does not cancel the run the others are waiting for.
        return await asyncio.shield(self._running)

    async def _run(self) -> T:
        try:
            value = await self.produce()
            self._kept = (self.clock(), value)
            return value
        finally:
            self._running = None


def health_check(config: FleetConfig, services: FleetServices,
                 status_reader: Callable[[], Awaitable[dict[str, Any]]], fresh_for: float = HEALTH_FRESH_S,
                 **doctor_options: Any) -> Callable[[], Awaitable[DoctorReport]]:
    """The doctor's report for the panel's health page. `status_reader`: the daemon's status, as
    `foundry-fleet status` gets it (see `status_from`); `doctor_options`: doctor_report's own
    (public_addresses, resolve, clock)."""

    async def check() -> DoctorReport:
        status = await status_reader()
        return await asyncio.to_thread(doctor_report, config, services, status, **doctor_options)

    return SharedResult(check, fresh_for)


def status_from(control_app: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The daemon's status, asked of its own control app in process, as the fleet's user asks it over
    the socket (no principal: the whole fleet)."""
    async def read() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=control_app), base_url="http://fleet.invalid",
                                     timeout=120.0) as client:
            status: dict[str, Any] = answer(await client.get("/v1/status"))
        return status

    return read


def runtime_facts(info: DaemonInfo, nodes: Callable[[], Awaitable[list[NodeInfo]]]
                  ) -> Callable[[], Awaitable[dict[str, Any]]]:
    """For the panel's nodes page: the runtime (driver, what it offers, the health it found at start),
    every capability the daemon reported at start, and the runtime's nodes now (or why they are unknown)."""

    async def facts() -> dict[str, Any]:
        found, problem = await node_report(nodes)
        return {
            "runtime": info.runtime.to_dict() if info.runtime is not None else None,
            "capabilities": [{"name": c.name, "available": c.available, "detail": c.detail}
                             for c in info.capabilities],
            "nodes": found,
            "nodes_problem": problem,
            "started_at": info.started_at,
        }

    return facts
