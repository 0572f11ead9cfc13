"""Idle detection: running instances nobody uses are put to sleep after their idle time.

Every `every` seconds (the health-check interval: the connected-user counts come from the supervisor's
health checks of `/api/status`), one look at the edge's requests under way per upstream, then for each
healthy running instance: busy (a user connected, or a request of its hosts under way at the edge)
clears its `idle_since`; idle sets it once; idle for its `idle_after` asks the supervisor to put it to
sleep (which asks Foundry once more right before stopping it). Cheap by design: one admin call and one
read of the instances table per round, and a write only when an instance turns idle or busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.idle import Activity, IdleSetting, format_idle_after, idle_since, sleep_due
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.services.supervisor import Supervisor
from foundry_fleet.store.models import Instance

log = logging.getLogger("foundry_fleet.idle")

# Requests under way at the edge, by the upstream address ("host:port") they are proxied to; None when
# the edge cannot tell (then nothing is taken for idle).
InFlight = Callable[[], Awaitable[dict[str, int] | None]]


@dataclass(frozen=True)
class RunningRow:
    name: str
    address: str | None
    own_idle_after: float | None
    idle_since: float | None


class IdleRecords:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def running(self) -> list[RunningRow]:
        with self.sessions() as s:
            rows = s.execute(select(Instance.name, Instance.address, Instance.idle_after, Instance.idle_since).where(
                Instance.state == InstanceState.RUNNING.value, Instance.desired == DesiredState.RUNNING.value,
            )).all()
        return [RunningRow(*row) for row in rows]

    def set_idle_since(self, changes: dict[str, float | None]) -> None:
        """One transaction for a round's changes. Idleness is not routing: the edge is not told."""
        with self.sessions() as s, s.begin():
            for row in s.scalars(select(Instance).where(Instance.name.in_(changes))):
                if row.state == InstanceState.RUNNING.value:  # it may have stopped meanwhile
                    row.idle_since = changes[row.name]


class IdleWatch:
    def __init__(self, supervisor: Supervisor, records: IdleRecords, in_flight: InFlight,
                 fleet_idle_after: float | None, every: float, clock: Callable[[], float] = time.time,
                 busy: Callable[[str], str | None] = lambda _name: None) -> None:
        """`busy`: what operation holds an instance (operations' lock), if any: no sleep in the middle of it."""
        self.supervisor = supervisor
        self.busy = busy
        self.records = records
        self.in_flight = in_flight
        self.fleet_idle_after = fleet_idle_after
        self.every = every
        self.clock = clock
        self.rounds = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - one bad round must not end idle detection
                log.exception("idle check failed")

    async def check(self) -> list[str]:
        """One round; returns the instances it asked to sleep."""
        self.rounds += 1
        rows = await asyncio.to_thread(self.records.running)
        sleepers = any(IdleSetting(own=r.own_idle_after, fleet=self.fleet_idle_after).idle_after is not None
                       for r in rows)
        if not sleepers and all(r.idle_since is None for r in rows):
            return []  # none may sleep, none is marked idle: the edge need not be asked
        try:
            in_flight = await self.in_flight()
        except FleetError as e:
            log.warning("idle check: the edge did not say which requests are under way (%s)", e.message)
            in_flight = None
        now = self.clock()
        changes: dict[str, float | None] = {}
        sleepy: list[str] = []
        for row in rows:
            sup = self.supervisor.instances.get(row.name)
            if sup is None or not sup.healthy:
                continue
            idle_after = IdleSetting(own=row.own_idle_after, fleet=self.fleet_idle_after).idle_after
            activity = Activity(users=sup.users if in_flight is not None else None,
                                requests_in_flight=(in_flight or {}).get(row.address or "", 0))
            since = idle_since(row.idle_since, activity, now) if idle_after is not None else None
            if since != row.idle_since:
                changes[row.name] = since
            if sleep_due(since, idle_after, now) and self.busy(row.name) is None:
                self.supervisor.sleep(row.name, f"idle for {format_idle_after(idle_after)}: no players, no visits")
                sleepy.append(row.name)
        if changes:
            await asyncio.to_thread(self.records.set_idle_since, changes)
        return sleepy
