"""Who is asking: a Discord user, and whether they are a fleet admin.

An admin holds the configured admin role (by name or id) in the fleet's guild, or is listed in
[discord] admin_users; services/access.py makes the decision from those two facts. Roles are read
from the guild the gateway delivered (the `guilds` intent); in a DM only admin_users count.
"""

from __future__ import annotations

import discord

from foundry_fleet.config import DiscordSection
from foundry_fleet.services.access import Access, Principal


def has_admin_role(interaction: discord.Interaction, settings: DiscordSection) -> bool:
    if interaction.guild_id is None:
        return False
    if settings.guild_id is not None and str(interaction.guild_id) != settings.guild_id:
        return False  # a role of the same name elsewhere means nothing
    member = interaction.user
    if not isinstance(member, discord.Member):
        return False
    wanted = settings.admin_role
    return any(role.name == wanted or str(role.id) == wanted for role in member.roles)


def principal_for(interaction: discord.Interaction, access: Access, settings: DiscordSection) -> Principal:
    return access.principal(str(interaction.user.id), has_admin_role(interaction, settings))
