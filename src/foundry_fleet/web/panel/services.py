"""What the panel's pages call: the daemon's services, handed over once they exist.

The web app serves from the daemon's first moment (sign-in, the wake page); the operations exist only
once the supervisor has started, so until then every panel page says the fleet is starting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from foundry_fleet.services.access import Access
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.bulletin import Bulletin
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.panel_cards import PanelCards
from foundry_fleet.services.panel_sessions import PanelSessions
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


@dataclass
class Panel:
    sessions: PanelSessions | None  # None: nobody can sign in (the panel is off)
    services: PanelServices | None = None  # None: the daemon is still starting
