"""Which home holds each instance's data: the one place that reads `instances.home`.

The storage of a fleet with homes (storage/homes.py, HomedStorage) asks this for every call about an
instance, so an instance's snapshots, backups, restores and files are always looked for where its data
is. Only a move's commit (services/moves.py) changes the answer.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.homes import MAIN_HOME
from foundry_fleet.store.models import Instance, MoveRow


class InstanceHomes:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def home_of(self, name: str) -> str:
        """The home holding `name`'s data; the fleet's own for an instance it does not know (one being
        created is known: its row is written before its storage is laid out)."""
        with self.sessions() as s:
            home = s.scalar(select(Instance.home).where(Instance.name == name))
        return home or MAIN_HOME

    def check_configured(self, homes: tuple[str, ...]) -> None:
        """Refuse (InvalidInput) when an instance, or a move under way, is in a home fleet.toml no longer
        lists: its data would be looked for in the wrong place, and a start would lay it out afresh there."""
        with self.sessions() as s:
            held = s.execute(select(Instance.name, Instance.home).where(Instance.home.is_not(None))).all()
            journal = s.execute(select(MoveRow.instance, MoveRow.source_home, MoveRow.target_home)).all()
        lost = sorted({(name, home) for name, home in held if home not in homes}
                      | {(name, home) for name, *ends in journal for home in ends if home not in homes})
        if lost:
            shown = ", ".join(f"{name} (home {home!r})" for name, home in lost[:5])
            raise InvalidInput(f"fleet.toml lists no home for instances {shown}: their data is there, and the fleet "
                               "would look for it in the wrong place",
                               "put those [[nomad.homes]] back in fleet.toml (nothing was changed); the homes it "
                               f"lists now are: {', '.join(homes)}")
