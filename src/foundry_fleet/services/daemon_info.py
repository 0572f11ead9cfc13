"""What the running daemon says about itself: its process, its fleet and what the host gives it."""

from __future__ import annotations

from dataclasses import dataclass, field

from foundry_fleet.runtime.base import Capability
from foundry_fleet.services.runtime_report import RuntimeReport


@dataclass
class DaemonInfo:
    pid: int
    started_at: float
    root: str
    capabilities: list[Capability] = field(default_factory=list)
    runtime: RuntimeReport | None = None  # the runtime's own lines among `capabilities`, with what it offers
