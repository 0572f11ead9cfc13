"""What the panel's pages call: the daemon's services, handed over once they exist.

The web app serves from the daemon's first moment (sign-in, the wake page); the operations exist only
once the supervisor has started, so until then every panel page says the fleet is starting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from foundry_fleet.services.access import Access
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.bulletin import Bulletin
from foundry_fleet.services.doctor import DoctorReport
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.invites import Invites
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.panel_cards import PanelCards
from foundry_fleet.services.panel_sessions import PanelSessions
from foundry_fleet.services.release_jobs import ReleaseJobs
from foundry_fleet.services.release_registry import ReleaseRegistry


@dataclass
class PanelServices:
    access: Access
    cards: PanelCards
    operations: Operations
    backups: Backups
    releases: ReleaseRegistry
    logs: Callable[..., AsyncIterator[str]]  # (name, lines, follow): the supervisor's
    bulletin: Bulletin
    port_suffix: str  # ":8443", or "" on 443: tenant hosts' links
    # The admin pages' services; a page whose service is None says it is not available.
    invites: Invites | None = None
    release_jobs: ReleaseJobs | None = None  # downloads of releases from a link, on the registry above
    events: EventLog | None = None
    health: Callable[[], Awaitable[DoctorReport]] | None = None  # wiring/panel.py health_check
    runtime_facts: Callable[[], Awaitable[dict[str, Any]]] | None = None  # wiring/panel.py runtime_facts


@dataclass
class Panel:
    sessions: PanelSessions | None  # None: nobody can sign in (the panel is off)
    services: PanelServices | None = None  # None: the daemon is still starting
