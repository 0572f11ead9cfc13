"""/fleet sftp-key add|list|remove: the owner of an instance chooses which keys may sign in over SFTP
as it. Only the owner (or an admin) may: the key opens every file of the instance's Data/."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

from foundry_fleet.bot.command_context import CommandContext, Limits
from foundry_fleet.bot.replies import Reply, respond
from foundry_fleet.bot.text import scrub

INSTANCE = "which instance (not needed when you have just one)"


def register(group: app_commands.Group, bot: CommandContext, limits: Limits) -> None:
    keys = bot.sftp_keys
    if keys is None:  # [sftp] is off: no commands for a door that is closed
        return
    sub = app_commands.Group(name="sftp-key", description="Keys that may open your instance's files over SFTP",
                             parent=group)

    async def owned(interaction: discord.Interaction, instance: str | None, action: str) -> str:
        name = await bot.api(interaction).resolve(instance)
        view = await asyncio.to_thread(bot.access.instance, bot.principal(interaction), name, action)
        return view.name

    def connect_line(name: str) -> str:
        return f"Connect with: `sftp -P {bot.sftp_port} {name}@{name}.{bot.domain}` (your files are in `/`)."

    @sub.command(name="add", description="Let a public key (the line of your .pub file) open your files over SFTP")
    @app_commands.describe(key="the one line of your .pub file, e.g. ~/.ssh/id_ed25519.pub", instance=INSTANCE)
    @app_commands.checks.cooldown(*limits.act)
    async def add(interaction: discord.Interaction, key: str, instance: str | None = None) -> None:
        async def work() -> Reply:
            name = await owned(interaction, instance, "sftp-keys")
            added = await asyncio.to_thread(keys.add, name, key, bot.principal(interaction).actor)
            return Reply(f"Key `{added.fingerprint}` ({added.key_type}) may now open **{name}**'s files.\n"
                         + connect_line(name))

        await respond(interaction, work)

    @sub.command(name="list", description="The keys that may open your instance's files over SFTP")
    @app_commands.describe(instance=INSTANCE)
    @app_commands.checks.cooldown(*limits.read)
    async def list_(interaction: discord.Interaction, instance: str | None = None) -> None:
        async def work() -> Reply:
            name = await owned(interaction, instance, "sftp-keys")
            found = await asyncio.to_thread(keys.list, name)
            if not found:
                return Reply(f"**{name}** has no SFTP keys: `/fleet sftp-key add` adds one.")
            lines = [f"`{k.id}` {k.key_type} `{k.fingerprint}` {scrub(k.comment)}" for k in found]
            return Reply(f"**{name}**'s SFTP keys:\n" + "\n".join(lines) + "\n" + connect_line(name))

        await respond(interaction, work)

    @sub.command(name="remove", description="Stop a key from opening your instance's files")
    @app_commands.describe(key="the key's number or fingerprint (see /fleet sftp-key list)", instance=INSTANCE)
    @app_commands.checks.cooldown(*limits.act)
    async def remove(interaction: discord.Interaction, key: str, instance: str | None = None) -> None:
        async def work() -> Reply:
            name = await owned(interaction, instance, "sftp-keys")
            gone = await asyncio.to_thread(keys.remove, name, key, bot.principal(interaction).actor)
            return Reply(f"Key `{gone.fingerprint}` can no longer open **{name}**'s files.")

        await respond(interaction, work)
