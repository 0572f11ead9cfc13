"""Moving an instance's data to another home (`instance move` to a node with storage of its own), and
the journal that lets a move cut short by a crash be rolled back or finished at the next daemon start.

A move writes its journal row ("copying") before anything is copied. Up to the commit the source home
holds the instance: whatever the target has is a partial copy, discarded by a roll-back. The commit is
one transaction: the instance's home and node change and the row says "committed"; from then on the
target holds it, and finishing means starting it there and archiving the source's copy. So at every
moment exactly one home holds the instance, and the row says which: never two copies running, or none.

Whether the instance ran before the move (so a roll-back or a finish starts it again) is kept in the
row: the move itself stops the instance, so its desired state alone cannot tell afterwards.

The operation's steps (snapshot, copy while it runs, stop, final snapshot, copy, commit, start) are in
services/operations.py `move`; this service holds every step that touches the journal or the homes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import MAIN_HOME, FleetConfig
from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.services.events import record
from foundry_fleet.services.instance_views import changeable_row, instance_row
from foundry_fleet.store.models import MoveRow

if TYPE_CHECKING:
    from foundry_fleet.storage.base import Storage
    from foundry_fleet.storage.home_transfer import Copied
    from foundry_fleet.storage.homes import HomedStorage

log = logging.getLogger("foundry_fleet.moves")

COPYING = "copying"
COMMITTED = "committed"
_ARCHIVE_LABEL = "moved"


@dataclass(frozen=True)
class MoveRecord:
    """One journal row, with what the move's first event says of the instance before it."""

    instance: str
    source_home: str
    target_home: str
    source_node: str | None
    target_node: str
    phase: str
    started_at: float
    was_running: bool

    def route(self) -> str:
        return (f"node {self.source_node or '-'} (home {self.source_home}) -> node {self.target_node} "
                f"(home {self.target_home})")


@dataclass(frozen=True)
class Recovered:
    """What the daemon's start did with one move a crash interrupted."""

    instance: str
    outcome: str  # "rolled back" | "finished"
    detail: str

    def describe(self) -> str:
        return f"{self.outcome} the interrupted move of {self.instance}: {self.detail}"


class Moves:
    def __init__(self, config: FleetConfig, sessions: sessionmaker[Session], storage: Storage) -> None:
        # `storage` is the fleet's HomedStorage when it has homes (a fleet without has no move to make).
        self.config = config
        self.sessions = sessions
        self.storage = storage

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # where --------------------------------------------------------------------------------

    def home_of_node(self, node: str) -> str:
        """The home a node keeps instances' data in ([[nomad.homes]]; else the fleet's own)."""
        return self.config.nomad.home_of_node(node)

    def reach(self, home: str) -> None:
        """The home laid out (idempotent), before a move into it begins: a home that cannot be reached (its
        host does not answer over ssh, its mount is gone) is refused here, with no journal row to roll back."""
        self._home(home).ensure_layout()

    def _home(self, name: str) -> Storage:
        homed: HomedStorage = self.storage  # type: ignore[assignment]
        return homed.home(name)

    # the journal --------------------------------------------------------------------------

    def get(self, name: str) -> MoveRecord | None:
        with self.sessions() as s:
            row = s.get(MoveRow, name)
            return None if row is None else self._record(row)

    def unfinished(self) -> list[MoveRecord]:
        with self.sessions() as s:
            return [self._record(row) for row in s.scalars(select(MoveRow).order_by(MoveRow.started_at))]

    def begin(self, actor: str, name: str, source_home: str, target_home: str, source_node: str | None,
              target_node: str, was_running: bool) -> MoveRecord:
        """The journal row ("copying") and the move's first event, in one transaction, before anything is
        copied. Refused while another move of the instance is unfinished."""
        if source_home == target_home:
            raise InvalidInput(f"{name} is in home {source_home} already: there is no data to send",
                               "move it to a node of another home, or let its runtime re-pin it")
        with self._session() as s:
            row = changeable_row(s, name)
            if s.get(MoveRow, name) is not None:
                raise Conflict(f"a move of {name} is unfinished", "restart the daemon: it rolls the move back "
                                                                  "or finishes it, then move again")
            if (row.home or MAIN_HOME) != source_home:
                raise Conflict(f"{name} is in home {row.home or MAIN_HOME}, not {source_home}", "move it again")
            started = time.time()
            s.add(MoveRow(instance=name, source_home=source_home, target_home=target_home, source_node=source_node,
                          target_node=target_node, phase=COPYING, started_at=started, was_running=was_running))
            move = MoveRecord(name, source_home, target_home, source_node, target_node, COPYING, started,
                              was_running)
            record(s, actor, "instance.move", name, Outcome.INFO, f"started: {move.route()}")
        return move

    def copy(self, move: MoveRecord, uid: int | None) -> Copied:
        """Bring the target home's copy up to the source's newest snapshot (resumable, reads the source only)."""
        from foundry_fleet.storage.home_transfer import copy_instance_data

        return copy_instance_data(move.instance, self._home(move.source_home), self._home(move.target_home), uid)

    def install_at_target(self, move: MoveRecord) -> None:
        """The instance's release installed in the target home (each home keeps installs of its own), so the
        target holds a whole instance at the commit, whatever runtime starts it there."""
        with self.sessions() as s:
            release = Path(instance_row(s, move.instance).release.path)
        self._home(move.target_home).install_release(move.instance, release)

    def commit(self, actor: str, move: MoveRecord, snapshots: int, sent: int) -> MoveRecord:
        """The commit point, one transaction: the instance's home and node are the target's, the row says
        "committed". From here the target holds the instance."""
        with self._session() as s:
            row = instance_row(s, move.instance)
            journal = s.get(MoveRow, move.instance)
            if journal is None or journal.phase != COPYING:
                raise Conflict(f"the move of {move.instance} is no longer under way", "see `instance show`")
            row.home = None if move.target_home == MAIN_HOME else move.target_home
            row.node = move.target_node
            journal.phase = COMMITTED
            record(s, actor, "instance.move", move.instance, Outcome.OK,
                   f"committed: {move.route()}; {snapshots} snapshot(s), {sent} bytes copied")
        return MoveRecord(**{**move.__dict__, "phase": COMMITTED})

    def finish(self, actor: str, move: MoveRecord, detail: str = "") -> str | None:
        """After the commit: archive the source home's copy and close the journal. Returns where the source
        copy was archived (None: there was none left). An archive that fails is reported, not retried: the
        instance runs on the target whatever happens to the old copy."""
        kept: str | None = None
        source = self._home(move.source_home)
        try:
            if source.paths(move.instance).root.exists():
                kept = str(source.archive_instance(move.instance, f"{_ARCHIVE_LABEL}-{time.strftime('%Y%m%d-%H%M%S')}"))
        except (FleetError, OSError) as e:
            why = e.message if isinstance(e, FleetError) else str(e)
            self._close(actor, move, Outcome.FAILED,
                        f"moved, but its copy in home {move.source_home} could not be archived: {why}; "
                        f"archive or remove {source.paths(move.instance).root} by hand")
            return None
        self._close(actor, move, Outcome.OK, "; ".join(x for x in (
            f"{move.route()}", detail, f"the old copy is archived at {kept}" if kept else "") if x))
        return kept

    def roll_back(self, actor: str, move: MoveRecord, why: str) -> None:
        """Before the commit: discard the target home's partial copy, start the instance where it was if the
        move had stopped it, and close the journal."""
        from foundry_fleet.storage.home_transfer import discard_copy

        discarded = discard_copy(move.instance, self._home(move.target_home))
        with self._session() as s:
            row = instance_row(s, move.instance)
            if s.get(MoveRow, move.instance) is None:
                return
            if move.was_running and row.desired == DesiredState.STOPPED.value and row.suspended_reason is None:
                row.desired = DesiredState.RUNNING.value
            s.delete(s.get(MoveRow, move.instance))
            record(s, actor, "instance.moved", move.instance, Outcome.FAILED,
                   f"rolled back ({why}): it stays on node {move.source_node or '-'} (home {move.source_home})"
                   + ("; the partial copy in home " + move.target_home + " is discarded" if discarded else ""))

    def _close(self, actor: str, move: MoveRecord, outcome: Outcome, message: str) -> None:
        with self._session() as s:
            journal = s.get(MoveRow, move.instance)
            if journal is not None:
                s.delete(journal)
            record(s, actor, "instance.moved", move.instance, outcome, message)

    # at the daemon's start ----------------------------------------------------------------

    def recover(self, actor: str) -> list[Recovered]:
        """Every move a crash interrupted, rolled back ("copying") or finished ("committed"), before the
        supervisor starts anything: afterwards the instance is in exactly one home, started again (by the
        supervisor's first reconcile) when it ran before its move."""
        done = []
        for move in self.unfinished():
            try:
                if move.phase == COMMITTED:
                    self._start_after_commit(actor, move)
                    kept = self.finish(actor, move, "finished at the daemon's start")
                    done.append(Recovered(move.instance, "finished", f"now in home {move.target_home} on node "
                                          f"{move.target_node}" + (f"; the old copy is at {kept}" if kept else "")))
                else:
                    self.roll_back(actor, move, "interrupted; rolled back at the daemon's start")
                    done.append(Recovered(move.instance, "rolled back", f"stays in home {move.source_home}"))
            except FleetError as e:
                # One move that cannot be recovered must not keep the fleet down: it is left in the journal
                # (its instance stays as it is) and tried again at the next start.
                log.error("could not recover the interrupted move of %s: %s (%s)", move.instance, e.message, e.hint)
        return done

    def _start_after_commit(self, actor: str, move: MoveRecord) -> None:
        if not move.was_running:
            return
        with self._session() as s:
            row = instance_row(s, move.instance)
            if row.desired == DesiredState.STOPPED.value and row.suspended_reason is None:
                row.desired = DesiredState.RUNNING.value
                record(s, actor, "instance.start", move.instance, Outcome.OK, f"moved to node {move.target_node}")

    @staticmethod
    def _record(row: MoveRow) -> MoveRecord:
        return MoveRecord(row.instance, row.source_home, row.target_home, row.source_node, row.target_node, row.phase,
                          row.started_at, row.was_running)
