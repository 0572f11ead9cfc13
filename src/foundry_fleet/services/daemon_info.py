"""What the running daemon says about itself: its process, its fleet and what the host gives it."""

from __future__ import annotations

from dataclasses import dataclass, field

from foundry_fleet.runtime.base import Capability


@dataclass
class DaemonInfo:
    pid: int
    started_at: float
    root: str
    capabilities: list[Capability] = field(default_factory=list)
