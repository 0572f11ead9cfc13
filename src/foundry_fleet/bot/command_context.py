"""What the slash commands use, handed to them by the bot that builds them.

The commands never see the bot itself: they get the few things they call, so bot/ reads one way
(client -> commands -> this) with no import cycle back to the client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import discord

from foundry_fleet.bot.confirm import Confirmations
from foundry_fleet.bot.control import FleetApi
from foundry_fleet.bot.wizard_flow import WizardFlow
from foundry_fleet.services.access import Access, Principal
from foundry_fleet.services.invites import Invites
from foundry_fleet.services.sftp_keys import SftpKeys


@dataclass(frozen=True)
class Limits:
    """Per-user cooldowns, (uses, per seconds), for each kind of command."""

    read: tuple[int, float] = (5, 15.0)  # status, url, logs, backups
    act: tuple[int, float] = (3, 60.0)  # start, stop, restart, backup, restore, upgrade
    admin: tuple[int, float] = (10, 60.0)
    onboarding: tuple[int, float] = (5, 60.0)  # join (the service also locks out guessing), setup

    @classmethod
    def unlimited(cls) -> Limits:
        lots = (1_000_000, 1.0)
        return cls(lots, lots, lots, lots)


@dataclass(frozen=True)
class CommandContext:
    api: Callable[[discord.Interaction], FleetApi]  # the control API, on behalf of whoever interacted
    principal: Callable[[discord.Interaction], Principal]
    access: Access
    invites: Invites
    invites_by: Callable[[str], Invites]  # invites whose events name this actor
    confirmations: Confirmations
    wizard_flow: WizardFlow
    domain: str
    sftp_keys: SftpKeys | None = None  # None: [sftp] is off
    sftp_port: int = 2222
