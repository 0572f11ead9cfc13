"""Which home holds each instance's data: the one place that reads `instances.home`.

The storage of a fleet with homes (storage/homes.py, HomedStorage) asks this for every call about an
instance, so an instance's snapshots, backups, restores and files are always looked for where its data
is. Only a move's commit (services/moves.py) changes the answer.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.homes import MAIN_HOME
from foundry_fleet.store.models import Instance


class InstanceHomes:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def home_of(self, name: str) -> str:
        """The home holding `name`'s data; the fleet's own for an instance it does not know (one being
        created is known: its row is written before its storage is laid out)."""
        with self.sessions() as s:
            home = s.scalar(select(Instance.home).where(Instance.name == name))
        return home or MAIN_HOME
