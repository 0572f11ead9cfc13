"""For anyone invited: /fleet setup starts or resumes the setup wizard, /fleet join redeems a
shareable invite code and starts it."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

from foundry_fleet.bot.command_context import CommandContext, Limits
from foundry_fleet.bot.replies import Reply, respond



def register(group: app_commands.Group, bot: CommandContext, limits: Limits) -> None:
    onboarding = limits.onboarding

    @group.command(name="setup", description="Set up your instance after an invite (or continue where you left off)")
    @app_commands.checks.cooldown(*onboarding)
    async def setup(interaction: discord.Interaction) -> None:
        user = str(interaction.user.id)

        async def work() -> Reply:
            return await bot.wizard_flow.begin(user)

        await respond(interaction, work)

    @group.command(name="join", description="Redeem an invite code someone gave you, then set up your instance")
    @app_commands.describe(code="the invite code, exactly as you were given it")
    @app_commands.checks.cooldown(*onboarding)
    async def join(interaction: discord.Interaction, code: app_commands.Range[str, 1, 100]) -> None:
        user = str(interaction.user.id)

        async def work() -> Reply:
            await asyncio.to_thread(bot.invites.redeem_code, code.strip(), user)
            step = await bot.wizard_flow.begin(user)
            return Reply("Your invite code is accepted.\n\n" + step.content, view=step.view)

        await respond(interaction, work)
