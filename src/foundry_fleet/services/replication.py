"""Replication: every backup round copies new snapshots to each destination, then thins the destination
by its own plan.

What the source must keep for a destination (`needed_on_source`): the newest snapshot the destination
holds (the base of the next incremental send) and every newer snapshot the destination's plan would keep.
So a destination that is offline for a while misses nothing it wants: when it answers again it catches
up from its last snapshot, and only then may the source's own plan thin what it got.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import DestinationSection
from foundry_fleet.domain.backup_plan import TimeFormat, parse_plan, thin
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.events import EventLog
from foundry_fleet.storage.base import Snapshots
from foundry_fleet.storage.base import DestinationOffline
from foundry_fleet.store.models import ReplicationRow

log = logging.getLogger(__name__)


class Destination(Protocol):
    target: str

    def snapshots(self, instance: str) -> list[str]:
        """Names the destination holds for the instance, oldest first; DestinationOffline when unreachable."""

    def send(self, instance: str, source_names: Sequence[str], base: str | None, latest: str) -> int:
        """Bring the destination to `latest`, starting from `base` (None: nothing there yet); returns bytes
        sent. `source_names` are the source's snapshots, oldest first, for drivers that send one by one."""

    def destroy(self, instance: str, names: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class SyncResult:
    instance: str
    destination: str
    sent_to: str | None  # the snapshot the destination now has, when something was sent
    bytes_sent: int
    thinned: int
    error: str = ""
    offline: bool = False


class Replication:
    def __init__(self, sessions: sessionmaker[Session], events: EventLog, snapshots: Snapshots,
                 destinations: list[tuple[DestinationSection, Destination]], fmt: TimeFormat) -> None:
        self.sessions = sessions  # where each copy stands: the replication table
        self.events = events
        self.snapshots = snapshots
        self.destinations = destinations
        self.fmt = fmt

    def covers(self, section: DestinationSection, instance: str) -> bool:
        return not section.instances or instance in section.instances

    # what the source keeps ----------------------------------------------------------------

    def needed_on_source(self, instance: str, names: list[str], now: float) -> set[str]:
        """Snapshots (of `names`, oldest first) that some destination still needs."""
        held = self._rows(instance)
        needed: set[str] = set()
        for section, _dest in self.destinations:
            if not self.covers(section, instance):
                continue
            last = held.get(section.name)
            newer = names[names.index(last) + 1:] if last in names else list(names)
            if last in names:
                needed.add(last)
            keep = set(thin(newer, now, parse_plan(section.plan), self.fmt).keep)
            needed |= {n for n in newer if n in keep or self.fmt.parse(n) is None}
        return needed

    # one round ----------------------------------------------------------------------------

    def run_round(self, instances: list[str], now: float | None = None) -> list[SyncResult]:
        now = time.time() if now is None else now
        results = []
        for section, dest in self.destinations:
            offline: str | None = None
            for instance in instances:
                if not self.covers(section, instance):
                    continue
                if offline is not None:  # one failed contact is enough for this round
                    results.append(self._record(instance, section.name, now, error=offline, offline=True))
                    continue
                try:
                    results.append(self._sync(instance, section, dest, now))
                except DestinationOffline as e:
                    offline = _said(e)
                    results.append(self._record(instance, section.name, now, error=offline, offline=True))
                except ExternalFailure as e:
                    results.append(self._record(instance, section.name, now, error=_said(e)))
        return results

    def _sync(self, instance: str, section: DestinationSection, dest: Destination, now: float) -> SyncResult:
        infos = self.snapshots.list(instance)
        source = [s.name for s in infos]
        created = {s.name: s.created_at for s in infos}
        if not source or self._rows(instance).get(section.name) == source[-1]:
            # Nothing new since the last round that reached it: no need to ask the destination (the
            # daemon's rounds come every 30 s; snapshots far less often).
            return SyncResult(instance, section.name, None, 0, 0)
        there = dest.snapshots(instance)
        common = next((n for n in reversed(source) if n in set(there)), None)
        if there and common is None:
            raise ExternalFailure(
                f"backup destination {section.name} holds snapshots of {instance}, none of which are here any more",
                f"move {dest.target}/{instance} aside on the destination; the next round then sends in full",
            )
        latest, sent = source[-1], 0
        if common != latest:
            sent = dest.send(instance, source, common, latest)
            there = dest.snapshots(instance)
            self.events.record("backup.replicate", instance, Outcome.OK,
                               f"{section.name}: {common or '(full)'} -> {latest}, {sent} bytes", actor="scheduler")
        plan = parse_plan(section.plan)
        doomed = [n for n in thin(there, now, plan, self.fmt).destroy if n != latest]
        if doomed:
            dest.destroy(instance, doomed)
        return self._record(instance, section.name, now, last=latest, created=created.get(latest),
                            sent_to=latest if sent else None, bytes_sent=sent, thinned=len(doomed))

    # state --------------------------------------------------------------------------------

    def _rows(self, instance: str) -> dict[str, str | None]:
        with self.sessions() as s:
            return {r.destination: r.last_snapshot
                    for r in s.scalars(select(ReplicationRow).where(ReplicationRow.instance == instance))}

    def _record(self, instance: str, destination: str, now: float, *, last: str | None = None,
                created: float | None = None, sent_to: str | None = None, bytes_sent: int = 0, thinned: int = 0,
                error: str = "", offline: bool = False) -> SyncResult:
        with self.sessions.begin() as s:
            row = s.scalars(select(ReplicationRow).where(ReplicationRow.instance == instance,
                                                         ReplicationRow.destination == destination)).first()
            if row is None:
                row = ReplicationRow(instance=instance, destination=destination, last_error="", bytes_sent=0)
                s.add(row)
            row.last_attempt_at = now
            newly_failing = bool(error) and not row.last_error
            row.last_error = error
            if not error:
                row.last_snapshot, row.last_snapshot_at, row.last_sync_at = last, created, now
                row.bytes_sent = bytes_sent
        if error:
            log.warning("replication of %s to %s: %s", instance, destination, error)
        if newly_failing:  # once when it starts failing, not every round while it stays so
            self.events.record("backup.replicate", instance, Outcome.FAILED, f"{destination}: {error}",
                               actor="scheduler")
        return SyncResult(instance, destination, sent_to, bytes_sent, thinned, error, offline)

    def status(self, instances: list[str], now: float | None = None) -> list[dict[str, object]]:
        """Per instance and destination: the newest snapshot there, how far behind it is, the last error."""
        now = time.time() if now is None else now
        with self.sessions() as s:
            rows = {(r.instance, r.destination): r for r in s.scalars(select(ReplicationRow))}
        out: list[dict[str, object]] = []
        for section, _dest in self.destinations:
            for instance in instances:
                if not self.covers(section, instance):
                    continue
                infos = self.snapshots.list(instance)
                row = rows.get((instance, section.name))
                last = row.last_snapshot if row else None
                names = [i.name for i in infos]
                behind = len(names) - names.index(last) - 1 if last in names else len(names)
                newest = infos[-1].created_at if infos else None
                lag = (newest - row.last_snapshot_at) if newest and row and row.last_snapshot_at else None
                out.append({
                    "instance": instance,
                    "destination": section.name,
                    "target": section.target,
                    "last_snapshot": last,
                    "snapshots_behind": behind,
                    "seconds_behind": lag if last else (now - infos[0].created_at if infos else None),
                    "last_sync_at": row.last_sync_at if row else None,
                    "last_error": row.last_error if row else "",
                })
        return out


def _said(e: ExternalFailure) -> str:
    """The message with what to do about it: `backup status` shows this, and nothing else, to the operator."""
    return f"{e.message} ({e.hint})" if e.hint else e.message
