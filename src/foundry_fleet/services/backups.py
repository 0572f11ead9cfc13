"""Backups: snapshots taken on the plan's schedule, thinned as znapzend does, taken by hand, restored.

Scheduled snapshots are named with the time format at the start of their epoch-aligned slot;
manual ones are `<label>-<time>`, a name the format does not match, so thinning never touches them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy import select

from foundry_fleet.domain.backup_plan import Plan, TimeFormat, current_slot, parse_plan, thin
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.storage.snapshots import SnapshotInfo, finish_restore, restore_into
from foundry_fleet.store.models import Instance

_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class ScheduleRound:
    taken: list[tuple[str, str]]  # (instance, snapshot)
    destroyed: list[tuple[str, str]]
    failed: list[tuple[str, str]]  # (instance, why)


class Backups:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.snapshots = fleet.storage.snapshots
        self.fmt = TimeFormat(fleet.config.backups.tsformat)

    # plans --------------------------------------------------------------------------------

    def plan_for(self, name: str) -> Plan:
        own, _running, _uid = self.fleet.backup_facts(name)
        return parse_plan(own or self.fleet.config.backups.plan)

    def set_plan(self, name: str, text: str | None) -> str:
        """Give an instance its own plan (validated), or None to follow the fleet's default."""
        plan = parse_plan(text) if text is not None else None
        self.fleet.set_backup_plan(name, str(plan) if plan else None)
        return str(plan) if plan else f"default ({self.fleet.config.backups.plan})"

    # taking and listing -------------------------------------------------------------------

    def list(self, name: str) -> list[SnapshotInfo]:
        self.fleet.get_instance(name)
        return self.snapshots.list(name)

    def take(self, name: str, label: str = "manual", now: float | None = None) -> SnapshotInfo:
        """A manual snapshot, never thinned."""
        if not _LABEL.match(label):
            raise InvalidInput(f"snapshot label {label!r} is not usable", "use up to 40 lowercase letters, digits and dashes")
        view = self.fleet.get_instance(name)
        snap_name = f"{label}-{self.fmt.name(now or time.time())}"
        info = self.snapshots.take(name, self.fleet.storage.paths(name).data, snap_name)
        self.fleet.record_event("backup.snapshot", view.name, Outcome.OK, f"{snap_name} ({info.bytes_new} bytes new)")
        return info

    # the schedule -------------------------------------------------------------------------

    def run_schedule(self, now: float | None = None) -> ScheduleRound:
        """Take every due snapshot (one per instance per slot of its smallest interval), then thin."""
        now = time.time() if now is None else now
        with self.fleet.sessions() as s:
            rows = [(r.name, r.backup_plan) for r in s.scalars(select(Instance)).all()
                    if r.state != "creating" and r.desired != "deleted"]
        taken, destroyed, failed = [], [], []
        for name, own_plan in rows:
            try:
                plan = parse_plan(own_plan or self.fleet.config.backups.plan)
                existing = self.snapshots.names(name)
                slot = current_slot(now, plan)
                latest = max((t for t in map(self.fmt.parse, existing) if t is not None), default=None)
                if latest is None or latest < slot:
                    snap = self.fmt.name(slot)
                    info = self.snapshots.take(name, self.fleet.storage.paths(name).data, snap)
                    existing.append(snap)
                    taken.append((name, snap))
                    self.fleet.record_event("backup.snapshot", name, Outcome.OK,
                                            f"{snap} ({info.bytes_new} bytes new)", actor="scheduler")
                result = thin(existing, now, plan, self.fmt)
                for snap in result.destroy:
                    self.snapshots.destroy(name, snap)
                    destroyed.append((name, snap))
                if result.destroy:
                    self.fleet.record_event("backup.thin", name, Outcome.OK,
                                            f"{len(result.destroy)} snapshot(s) past the plan", actor="scheduler")
            except Exception as e:  # noqa: BLE001 - one instance's failure must not stop the others' backups
                failed.append((name, str(e)))
                self.fleet.record_event("backup.snapshot", name, Outcome.FAILED, str(e), actor="scheduler")
        return ScheduleRound(taken, destroyed, failed)

    # restoring ----------------------------------------------------------------------------

    def restore(self, name: str, snapshot: str) -> str:
        """Replace the instance's data with a snapshot; the current data is kept as a safety snapshot
        first, whose name is returned. The instance must not be running."""
        _own, running, uid = self.fleet.backup_facts(name)
        if running:
            raise Conflict(f"instance {name} is running", "stop it first (`backup restore` through the daemon does)")
        source = self.snapshots.path(name, snapshot)
        safety = self.take(name, label="safety")
        restore_into(source, self.fleet.storage.paths(name).data, uid)
        self.fleet.record_event("backup.restore", name, Outcome.OK, f"restored {snapshot}; previous data kept as {safety.name}")
        return safety.name

    def repair(self) -> list[str]:
        """Finish restores a crash interrupted (run before any instance starts)."""
        done = []
        for view in self.fleet.list_instances():
            what = finish_restore(self.fleet.storage.paths(view.name).data)
            if what:
                self.fleet.record_event("backup.restore", view.name, Outcome.INFO, what, actor="repair")
                done.append(view.name)
        return done
