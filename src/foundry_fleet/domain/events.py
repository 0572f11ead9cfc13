"""An event is the record of one state change: who, what, when, outcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    REFUSED = "refused"
    INFO = "info"


@dataclass(frozen=True)
class Event:
    actor: str
    action: str
    target: str
    outcome: Outcome
    message: str = ""
    detail: dict[str, object] = field(default_factory=dict)
