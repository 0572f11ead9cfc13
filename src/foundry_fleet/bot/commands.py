"""The `/fleet` command group, built per bot (so each bot has its own cooldowns).

Tenant commands act on the caller's own instance (the instance argument is optional when they have
exactly one); admin commands are refused to everyone else; join and setup are for anyone invited.
"""

from __future__ import annotations

from discord import app_commands

from foundry_fleet.bot import (
    admin_commands,
    import_commands,
    onboarding_commands,
    sftp_key_commands,
    tenant_commands,
)
from foundry_fleet.bot.command_context import CommandContext, Limits

__all__ = ["Limits", "fleet_group"]


def fleet_group(ctx: CommandContext, limits: Limits) -> app_commands.Group:
    group = app_commands.Group(name="fleet", description="Your Foundry VTT instance on this fleet")
    tenant_commands.register(group, ctx, limits)
    admin_commands.register(group, ctx, limits)
    onboarding_commands.register(group, ctx, limits)
    sftp_key_commands.register(group, ctx, limits)
    import_commands.register(group, ctx, limits)
    return group
