"""Recording events: every state change leaves one (who, what, when, outcome)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.views import EventView
from foundry_fleet.store.models import EventRow

log = logging.getLogger("foundry_fleet.events")

MAX_SEARCH = 1000  # a page of the log, not an export: `foundry-fleet events --json` is for that


def record(
    session: Session,
    actor: str,
    action: str,
    target: str,
    outcome: Outcome,
    message: str = "",
    **detail: object,
) -> None:
    """Add an event to the session (committed with the change it describes)."""
    session.add(
        EventRow(
            at=time.time(), actor=actor, action=action, target=target,
            outcome=outcome.value, message=message, detail=detail,
        )
    )
    level = logging.WARNING if outcome in (Outcome.FAILED, Outcome.REFUSED) else logging.INFO
    log.log(level, "%s %s: %s%s [%s]", action, target, outcome.value, f" ({message})" if message else "", actor)


@dataclass(frozen=True)
class RecordedEvent:
    id: int  # increasing: what a reader has seen up to
    action: str
    outcome: str
    target: str
    message: str


class EventLog:
    """The event log, read and written on its own: who did what, when, with what outcome."""

    def __init__(self, sessions: sessionmaker[Session], actor: str = "cli") -> None:
        self.sessions = sessions
        self.actor = actor

    def acting_as(self, actor: str) -> EventLog:
        """The same log, recording under another actor (e.g. the CLI user behind an API call)."""
        return EventLog(self.sessions, actor)

    def record(self, action: str, target: str, outcome: Outcome, message: str = "", actor: str | None = None) -> None:
        """Record an event on its own (one that describes no change made in the same transaction)."""
        with self.sessions.begin() as s:
            record(s, actor or self.actor, action, target, outcome, message)

    def recent(self, target: str | None = None, limit: int = 50) -> list[EventView]:
        """The last `limit` events, oldest first; only those about `target` when given."""
        with self.sessions() as s:
            q = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
            if target:
                q = q.where(EventRow.target == target)
            rows = s.scalars(q).all()
            return [EventView(r.at, r.actor, r.action, r.target, r.outcome, r.message) for r in reversed(rows)]

    def search(self, target: str | None = None, action_prefix: str | None = None, outcome: str | None = None,
               limit: int = 100) -> list[EventView]:
        """The newest `limit` events (at most MAX_SEARCH) matching every filter given, newest first.
        `action_prefix` matches literally (`backup.` is not a pattern: `%` and `_` in it are plain)."""
        q = select(EventRow).order_by(EventRow.id.desc()).limit(max(1, min(limit, MAX_SEARCH)))
        if target:
            q = q.where(EventRow.target == target)
        if action_prefix:
            q = q.where(EventRow.action.startswith(action_prefix, autoescape=True))
        if outcome:
            q = q.where(EventRow.outcome == outcome)
        with self.sessions() as s:
            return [EventView(r.at, r.actor, r.action, r.target, r.outcome, r.message) for r in s.scalars(q)]

    def last_id(self) -> int:
        """The id of the newest event (0 when there is none): read from here on with `since`."""
        with self.sessions() as s:
            return s.scalar(select(func.max(EventRow.id))) or 0

    def since(self, event_id: int) -> list[RecordedEvent]:
        """Every event after `event_id`, oldest first."""
        with self.sessions() as s:
            rows = s.scalars(select(EventRow).where(EventRow.id > event_id).order_by(EventRow.id)).all()
            return [RecordedEvent(r.id, r.action, r.outcome, r.target, r.message) for r in rows]
