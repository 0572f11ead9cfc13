"""Recording events: every state change leaves one (who, what, when, outcome)."""

from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session

from foundry_fleet.domain.events import Outcome
from foundry_fleet.store.models import EventRow

log = logging.getLogger("foundry_fleet.events")


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
