"""The `/fleet` command group, built per bot (so each bot has its own cooldowns).

Tenant commands act on the caller's own instance (the instance argument is optional when they have
exactly one); admin commands are refused to everyone else; join and setup are for anyone invited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from discord import app_commands

from foundry_fleet.bot import admin_commands, onboarding_commands, tenant_commands

if TYPE_CHECKING:
    from foundry_fleet.bot.client import FleetBot


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


def fleet_group(bot: FleetBot, limits: Limits) -> app_commands.Group:
    group = app_commands.Group(name="fleet", description="Your Foundry VTT instance on this fleet")
    tenant_commands.register(group, bot, limits)
    admin_commands.register(group, bot, limits)
    onboarding_commands.register(group, bot, limits)
    return group
