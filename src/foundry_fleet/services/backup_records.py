"""What the backup service reads and writes of an instance's record: its own plan, whether a process
is recorded for it, and the uid its restored files belong to."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.services.events import record
from foundry_fleet.services.instance_views import instance_row
from foundry_fleet.store.models import Instance


@dataclass(frozen=True)
class BackupFacts:
    own_plan: str | None  # None: the fleet's default plan
    has_process: bool  # a process is recorded for it: its data may change under a restore
    uid: int | None  # who owns its files (None: the fleet's own user)


@dataclass(frozen=True)
class ScheduledInstance:
    name: str
    own_plan: str | None


class BackupRecords:
    def __init__(self, sessions: sessionmaker[Session], default_plan: str, actor: str = "cli") -> None:
        self.sessions = sessions
        self.default_plan = default_plan
        self.actor = actor

    def facts(self, name: str) -> BackupFacts:
        with self.sessions() as s:
            row = instance_row(s, name)
            return BackupFacts(own_plan=row.backup_plan, has_process=row.task is not None, uid=row.uid)

    def set_plan(self, name: str, plan: str | None) -> None:
        with self.sessions.begin() as s:
            row = instance_row(s, name)
            row.backup_plan = plan
            record(s, self.actor, "backup.plan", name, Outcome.OK, plan or f"default ({self.default_plan})")

    def scheduled(self) -> list[ScheduledInstance]:
        """Every instance the schedule backs up: created, and not being deleted."""
        with self.sessions() as s:
            rows = s.scalars(select(Instance).where(
                Instance.state != InstanceState.CREATING.value, Instance.desired != DesiredState.DELETED.value)).all()
            return [ScheduledInstance(r.name, r.backup_plan) for r in rows]
