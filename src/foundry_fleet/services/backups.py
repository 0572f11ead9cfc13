"""Backups: snapshots taken on the plan's schedule, thinned as znapzend does, taken by hand, restored.

Scheduled snapshots are named with the time format at the start of their epoch-aligned slot;
manual ones are `<label>-<time>`, a name the format does not match, so thinning never touches them.

The disk limit (services/disk_limits): where the storage cannot hold it (plain directories), a new
snapshot of an instance at or over its limit is refused, scheduled or by hand, and so is an upgrade
(its pre-upgrade snapshot is never thinned, and an owner may upgrade). Two snapshots are always taken:
a restore's safety snapshot (refusing it would keep an owner from going back to smaller data, and
restoring without it would lose the current data) and the final snapshot of a delete (an admin's act,
and what makes the delete undoable).
"""

from __future__ import annotations

import re
import copy
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain.backup_plan import Plan, TimeFormat, current_slot, parse_plan, thin
from foundry_fleet.domain.errors import Conflict, ExternalFailure, FleetError, InvalidInput
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.snapshot_choice import choose_snapshot
from foundry_fleet.services.backup_records import BackupRecords
from foundry_fleet.services.disk_limits import DiskLimits, OverDiskLimit
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.services.metrics.backup_figures import BackupFigureReads
from foundry_fleet.services.replication import Replication
from foundry_fleet.storage.base import Storage
from foundry_fleet.storage.snapshots import SnapshotInfo

_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class InstanceSnapshot:
    instance: str
    snapshot: str


@dataclass(frozen=True)
class BackupFailure:
    instance: str
    why: str


@dataclass(frozen=True)
class ScheduleRound:
    taken: list[InstanceSnapshot]
    destroyed: list[InstanceSnapshot]
    failed: list[BackupFailure]


class Backups:
    def __init__(self, instances: InstanceViews, records: BackupRecords, events: EventLog, storage: Storage,
                 limits: DiskLimits, keep_stopped: Callable[[str, str], object], tsformat: str,
                 replication: Replication | None = None) -> None:
        """`keep_stopped(name, why)`: set the instance's desired state to stopped (a restore that could
        not be finished or undone must not be started on); `tsformat`: [backups] tsformat."""
        self.instances = instances
        self.records = records
        self.events = events
        self.storage = storage
        self.snapshots = storage.snapshots
        self.limits = limits
        self.keep_stopped = keep_stopped
        self.fmt = TimeFormat(tsformat)
        self.replication = replication  # None: no backup destinations
        self._refused: dict[str, float] = {}  # instance -> the slot whose snapshot the disk limit refused
        # Where every instance's snapshots stand, one reading kept a while: the panel, the control API's
        # status and /metrics all read this one (its newest snapshot, its count), and every snapshot taken
        # or removed here drops the reading, so what they show next includes it.
        self.figures = BackupFigureReads(self.snapshots, replication)

    def acting_as(self, actor: str) -> Backups:
        """The same service, recording its events and plan changes under another actor."""
        other = copy.copy(self)
        other.records = BackupRecords(self.records.sessions, self.records.default_plan, actor)
        other.events = self.events.acting_as(actor)
        return other

    # plans --------------------------------------------------------------------------------

    def plan_for(self, name: str) -> Plan:
        return parse_plan(self.records.facts(name).own_plan or self.records.default_plan)

    def set_plan(self, name: str, text: str | None) -> str:
        """Give an instance its own plan (validated), or None to follow the fleet's default."""
        plan = parse_plan(text) if text is not None else None
        self.records.set_plan(name, str(plan) if plan else None)
        return str(plan) if plan else f"default ({self.records.default_plan})"

    # taking and listing -------------------------------------------------------------------

    def newest_snapshot_times(self) -> dict[str, float]:
        """When each instance's newest snapshot was taken (instances without one left out)."""
        return self.figures.read(self.instances.names()).newest_at

    def list(self, name: str) -> list[SnapshotInfo]:
        self.instances.get(name)
        return self.snapshots.list(name)

    def take(self, name: str, label: str = "manual", now: float | None = None) -> SnapshotInfo:
        """A manual snapshot, never thinned; refused (OverDiskLimit) at the disk limit (see above)."""
        if not _LABEL.match(label):
            raise InvalidInput(f"snapshot label {label!r} is not usable", "use up to 40 lowercase letters, digits and dashes")
        self.check_room(name)
        return self._take(name, label, now)

    def check_room(self, name: str) -> None:
        """Raise OverDiskLimit (and record the refusal) when the instance may not get a new snapshot."""
        view = self.instances.get(name)
        try:
            self.limits.check_room(view.name)
        except OverDiskLimit as e:
            self.events.record("backup.snapshot", view.name, Outcome.REFUSED, e.message)
            raise

    def snapshot_name(self, label: str, now: float) -> str:
        """The name a snapshot with `label` taken at `now` gets (a counter is added to a name in use)."""
        return f"{label}-{self.fmt.name(now)}"

    def _take(self, name: str, label: str, now: float | None = None) -> SnapshotInfo:
        view = self.instances.get(name)
        stamp = self.snapshot_name(label, now or time.time())
        taken = set(self.snapshots.names(name))
        # Two snapshots with the same label in one second (an upgrade, then a second one at once) must
        # both be kept: the later one gets a counter.
        snap_name = next(n for n in (stamp, *(f"{stamp}-{i}" for i in range(2, 1000))) if n not in taken)
        info = self.snapshots.take(name, self.storage.paths(name).data, snap_name)
        self.figures.forget()
        self.events.record("backup.snapshot", view.name, Outcome.OK, f"{snap_name} ({info.bytes_new} bytes new)")
        return info

    def discard(self, name: str, snapshot: str) -> None:
        """Remove a snapshot taken for a passing need (an export's), which then no longer counts as the
        instance's newest."""
        self.snapshots.destroy(name, snapshot)
        self.figures.forget()

    def final_backup(self, name: str, purge: bool) -> str | None:
        """Before a delete: a last snapshot of the data (kept with the archive); before a purge, also sent
        to every backup destination, and the purge is refused if one cannot take it (nothing is lost)."""
        if not self.storage.paths(name).data.exists():
            return None
        info = self._take(name, label="final")  # even at the disk limit: see the module's docstring
        if purge and self.replication is not None:
            failures = [r for r in self.replication.run_round([name]) if r.error]
            if failures:
                raise ExternalFailure(
                    f"the final snapshot of {name} could not reach backup destination {failures[0].destination}: "
                    f"{failures[0].error}", "fix the destination and delete again, or delete without --purge")
        return info.name

    def status(self, name: str | None = None) -> dict[str, object]:
        """Per instance: its plan, snapshot count and newest; per destination: where each copy stands."""
        names = [name] if name else [v.name for v in self.instances.list()]
        instances = []
        for n in names:
            snaps = self.list(n)
            instances.append({"instance": n, "plan": str(self.plan_for(n)), "snapshots": len(snaps),
                              "newest": snaps[-1].name if snaps else None,
                              "newest_at": snaps[-1].created_at if snaps else None})
        replicas = self.replication.status(names) if self.replication is not None else []
        return {"instances": instances, "destinations": replicas}

    # the schedule -------------------------------------------------------------------------

    def run_schedule(self, now: float | None = None) -> ScheduleRound:
        """Take every due snapshot (one per instance per slot of its smallest interval; all instances due
        at the same slot together, atomically where the storage can), replicate, then thin."""
        now = time.time() if now is None else now
        rows = [(i.name, i.own_plan) for i in self.records.scheduled()]
        taken: list[InstanceSnapshot] = []
        destroyed: list[InstanceSnapshot] = []
        failed: list[BackupFailure] = []
        plans, due = {}, defaultdict(list)
        for name, own_plan in rows:
            try:
                plans[name] = plan = parse_plan(own_plan or self.records.default_plan)
                slot = current_slot(now, plan)
                latest = max((t for t in map(self.fmt.parse, self.snapshots.names(name)) if t is not None), default=None)
                if (latest is None or latest < slot) and not self._refused_at(name, slot, failed):
                    due[self.fmt.name(slot)].append(name)
            except Exception as e:  # noqa: BLE001 - one instance's failure must not stop the others' backups
                failed.append(BackupFailure(name, str(e)))
        for snap, names in due.items():
            taken += self._take_scheduled(names, snap, failed)
        if self.replication is not None:
            for r in self.replication.run_round([name for name in plans], now):
                if r.error and not r.offline:
                    failed.append(BackupFailure(r.instance, f"replication to {r.destination}: {r.error}"))
        for name, plan in plans.items():
            try:
                destroyed += self._thin(name, plan, now)
            except Exception as e:  # noqa: BLE001
                failed.append(BackupFailure(name, str(e)))
                self.events.record("backup.thin", name, Outcome.FAILED, str(e), actor="scheduler")
        thinned = sorted({d.instance for d in destroyed})
        try:
            self.limits.tighten(thinned)  # thinning may have freed what a quota held above its limit
        except Exception as e:  # noqa: BLE001 - the next thinning tries again
            failed += [BackupFailure(name, f"could not lower its quota to its limit: {e}") for name in thinned]
        self.snapshots.sweep_views()
        return ScheduleRound(taken, destroyed, failed)

    def _refused_at(self, name: str, slot: float, failed: list[BackupFailure]) -> bool:
        """True when the disk limit refuses this slot's snapshot. Checked once per slot (the round runs
        every 30 s, and measuring walks the instance's files): a refused instance is tried again at its
        next slot, or at once by `backup now`."""
        if self._refused.get(name) == slot:
            return True
        try:
            self.limits.check_room(name)
        except OverDiskLimit as e:
            self._refused[name] = slot
            failed.append(BackupFailure(name, e.message))
            self.events.record("backup.snapshot", name, Outcome.REFUSED, e.message, actor="scheduler")
            return True
        self._refused.pop(name, None)
        return False

    def _take_scheduled(self, names: list[str], snap: str, failed: list[BackupFailure]) -> list[InstanceSnapshot]:
        targets = [(name, self.storage.paths(name).data) for name in names]
        try:
            infos = self.snapshots.take_many(targets, snap)
        except Exception as e:  # noqa: BLE001 - one instance's failure must not stop the others' backups
            if len(names) > 1:  # the set failed as one: each alone, so one bad instance stays alone
                return [t for name in names for t in self._take_scheduled([name], snap, failed)]
            failed.append(BackupFailure(names[0], str(e)))
            self.events.record("backup.snapshot", names[0], Outcome.FAILED, str(e), actor="scheduler")
            return []
        self.figures.forget()
        for name, info in zip(names, infos, strict=True):
            self.events.record("backup.snapshot", name, Outcome.OK, f"{snap} ({info.bytes_new} bytes new)",
                               actor="scheduler")
        return [InstanceSnapshot(name, snap) for name in names]

    def _thin(self, name: str, plan: Plan, now: float) -> list[InstanceSnapshot]:
        """Destroy what the plan no longer keeps, except what a backup destination still needs."""
        existing = self.snapshots.names(name)
        doomed = thin(existing, now, plan, self.fmt).destroy
        if self.replication is not None and doomed:
            ordered = [s.name for s in self.snapshots.list(name)]
            needed = self.replication.needed_on_source(name, ordered, now)
            doomed = [snap for snap in doomed if snap not in needed]
        for snap in doomed:
            self.snapshots.destroy(name, snap)
        if doomed:
            self.figures.forget()
            self.events.record("backup.thin", name, Outcome.OK, f"{len(doomed)} snapshot(s) past the plan",
                               actor="scheduler")
        return [InstanceSnapshot(name, snap) for snap in doomed]

    # restoring ----------------------------------------------------------------------------

    def choose(self, name: str, wanted: str) -> str:
        """The snapshot `wanted` names: a full name, `latest` or a unique prefix (domain.snapshot_choice)."""
        return choose_snapshot(wanted, ((s.name, s.created_at) for s in self.snapshots.list(name)), name)

    def restore(self, name: str, snapshot: str) -> str:
        """Replace the instance's data with a snapshot; the current data is kept as a safety snapshot
        first, whose name is returned. The instance must not be running."""
        facts = self.records.facts(name)
        uid = facts.uid
        if facts.has_process:
            raise Conflict(f"instance {name} is running", "stop it first (`backup restore` through the daemon does)")
        self.snapshots.path(name, snapshot)  # NotFound before anything changes
        # Even at the disk limit (see the module's docstring); an instance left over it is told to its
        # owner and ops by the quota check of the status updates.
        safety = self._take(name, label="safety")
        data = self.storage.paths(name).data
        try:
            self.snapshots.restore(name, snapshot, data, uid)
        except Exception as e:
            self._put_back(name, snapshot, safety.name, data, uid, e)
            raise
        self.events.record("backup.restore", name, Outcome.OK, f"restored {snapshot}; previous data kept as {safety.name}")
        return safety.name

    def _put_back(self, name: str, snapshot: str, safety: str, data: Path, uid: int | None, error: Exception) -> None:
        """After a failed restore, make the data what it was before (from the safety snapshot) when the
        failure left it half replaced (a restore in place, on ZFS). If even that fails, the instance is
        kept stopped: the next start of the fleet finishes the restore before anything runs on it."""
        why = error.message if isinstance(error, FleetError) else str(error)
        if self.snapshots.restoring(name) is None:
            self.events.record("backup.restore", name, Outcome.FAILED, f"restoring {snapshot} failed: {why}; "
                               "its data was not changed")
            return
        try:
            self.snapshots.restore(name, safety, data, uid)
        except Exception as again:  # noqa: BLE001 - told below; the original error is what the caller sees
            again_why = again.message if isinstance(again, FleetError) else str(again)
            self.keep_stopped(name, "a restore failed half way; the next start finishes it")
            self.events.record("backup.restore", name, Outcome.FAILED,
                               f"restoring {snapshot} failed: {why}; putting back {safety} failed too: {again_why}; "
                               "the instance stays stopped until the next start of the fleet finishes it")
            return
        self.events.record("backup.restore", name, Outcome.FAILED,
                           f"restoring {snapshot} failed: {why}; the previous data was put back from {safety}")

    def repair(self) -> list[str]:
        """Finish restores a crash interrupted (run before any instance starts)."""
        done = []
        for view in self.instances.list():
            try:
                what = self.snapshots.finish_restore(view.name, self.storage.paths(view.name).data)
            except Exception as e:  # noqa: BLE001 - one instance's bad data must not keep the others (or the daemon) down
                why = e.message if isinstance(e, FleetError) else str(e)
                self.events.record("backup.restore", view.name, Outcome.FAILED,
                                   f"could not finish an interrupted restore: {why}", actor="repair")
                if view.desired == "running":  # never start on half-restored data; the next start tries again
                    self.keep_stopped(view.name, "an interrupted restore could not be finished")
                continue
            if what:
                self.events.record("backup.restore", view.name, Outcome.INFO, what, actor="repair")
                done.append(view.name)
        return done
