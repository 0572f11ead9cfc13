"""What a scrape needs of every instance, in one read of the instances table however many there are."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.store.models import Instance


@dataclass(frozen=True)
class InstanceFigures:
    name: str
    state: str  # an InstanceState value
    restarts: int  # restarts after crashes since it was created (the supervisor counts them)
    suspended: bool


class InstanceFigureReads:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def all(self) -> list[InstanceFigures]:
        # Only these columns: an instance view would load each owner and release on its own.
        query = select(Instance.name, Instance.state, Instance.restarts, Instance.suspended_reason).order_by(Instance.name)
        with self.sessions() as s:
            return [InstanceFigures(name, state, restarts or 0, suspended is not None)
                    for name, state, restarts, suspended in s.execute(query)]
