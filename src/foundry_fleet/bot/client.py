"""The bot: a discord.Client with the /fleet commands, the wizard's buttons and forms, and the
services it adapts. Built by `FleetBot(...)`, started by runner.run_bot."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import httpx
from discord import app_commands

from foundry_fleet.api.async_client import AsyncControlClient
from foundry_fleet.bot.command_sync import sync_if_changed
from foundry_fleet.bot.command_context import CommandContext, Limits
from foundry_fleet.bot.commands import fleet_group
from foundry_fleet.bot.confirm import ConfirmButton, Confirmations
from foundry_fleet.bot.control import CreateThroughApi, FleetApi
from foundry_fleet.bot.notifier import DiscordNotifier
from foundry_fleet.bot.principals import principal_for
from foundry_fleet.bot.replies import UNEXPECTED, Reply, claimed, say_privately
from foundry_fleet.bot.wizard_flow import WizardFlow
from foundry_fleet.bot.wizard_ui import AccountKeySelect, WizardButton
from foundry_fleet.config import FleetConfig
from foundry_fleet.services.access import Access, Principal
from foundry_fleet.services.account_keys import AccountKeys
from foundry_fleet.services.invites import Invites
from foundry_fleet.services.sftp_keys import SftpKeys
from foundry_fleet.services.views import CreatedInstance
from foundry_fleet.services.wizard import SetupWizard

log = logging.getLogger(__name__)

FORGOTTEN_AFTER = 2.0  # an unanswered button or form (e.g. opened before a restart) is answered by then
FORGOTTEN = ("That button or form is no longer active (the bot may have restarted since it was shown). "
             "Run the command again, or `/fleet setup` to continue setting up.")
STATE_FILE = "discord-commands.json"


@dataclass(frozen=True)
class BotServices:
    """The services the bot's commands and setup wizard use, built by the wiring."""

    access: Access
    invites: Invites  # recording events under the bot's own actor
    invites_for: Callable[[str], Invites]  # the invites, recording events under that actor
    wizard_for: Callable[[Invites, Callable[..., CreatedInstance]], SetupWizard]  # with these invites and create
    account_keys_for: Callable[[SetupWizard], AccountKeys]  # the wizard's reading of a foundryvtt.com account
    sftp_keys: SftpKeys | None = None


class FleetBot(discord.Client):
    def __init__(self, config: FleetConfig, services: BotServices, control_transport: httpx.AsyncBaseTransport, *,
                 create: Callable[..., CreatedInstance] | None = None, limits: Limits | None = None) -> None:
        # The bot never joins voice: discord.py's warnings about missing voice libraries are noise here.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(intents=discord.Intents(guilds=True), allowed_mentions=discord.AllowedMentions.none())
        self.config = config
        self.settings = config.discord
        self.services = services
        self.access = services.access
        self.control_transport = control_transport
        self.control = AsyncControlClient(control_transport)
        self.invites = services.invites
        # The daemon may pass its own create (one that also wakes its supervisor); by default the
        # instance is made through the control API, once the event loop is known (setup_hook).
        self._create = create
        self._api_create: CreateThroughApi | None = None
        self.wizard = services.wizard_for(self.invites, self._create_instance)
        self.wizard_flow = WizardFlow(self.wizard, services.account_keys_for(self.wizard), config.fleet.domain)
        self.confirmations = Confirmations()
        self.notifier = DiscordNotifier(self, self.settings.ops_channel_id)
        self.guild = discord.Object(int(self.settings.guild_id)) if self.settings.guild_id else None
        self.command_state = config.paths.database.parent / STATE_FILE
        self.tree: app_commands.CommandTree[FleetBot] = app_commands.CommandTree(self)
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]
        self.tree.add_command(fleet_group(self.command_context(), limits or Limits()), guild=self.guild)

    def command_context(self) -> CommandContext:
        """What the slash commands use (they never get the bot itself)."""
        return CommandContext(
            api=self.api, principal=self.principal, access=self.access, invites=self.invites,
            invites_by=self.services.invites_for, confirmations=self.confirmations,
            wizard_flow=self.wizard_flow, domain=self.config.fleet.domain,
            sftp_keys=self.services.sftp_keys if self.config.sftp.enabled else None,
            sftp_port=self.config.sftp.listen_address[1],
        )

    # who is asking ------------------------------------------------------------------------

    def principal(self, interaction: discord.Interaction) -> Principal:
        return principal_for(interaction, self.access, self.settings)

    def api(self, interaction: discord.Interaction) -> FleetApi:
        return FleetApi(self.control, self.principal(interaction))

    # lifecycle ----------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        self.add_dynamic_items(WizardButton, AccountKeySelect, ConfirmButton)
        if self._create is None:
            self._api_create = CreateThroughApi(self.control_transport, asyncio.get_running_loop())
        await self.sync_commands()

    async def sync_commands(self, state_file: Path | None = None) -> bool:
        return await sync_if_changed(self.tree, self.guild, state_file or self.command_state, self.application_id)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.wizard_flow.close()
            await self.control.aclose()
            if self._api_create is not None:
                await self._api_create.aclose()

    def _create_instance(self, *args: Any, **kwargs: Any) -> CreatedInstance:
        create = self._create or self._api_create
        if create is None:
            raise RuntimeError("the bot has not logged in yet")
        return create(*args, **kwargs)

    # errors and forgotten interactions ----------------------------------------------------

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError
                                   ) -> None:
        if isinstance(error, app_commands.CommandOnCooldown):
            name = interaction.command.qualified_name if interaction.command else "this command"
            text = (f"**Slow down:** you can use `/{name}` again in {math.ceil(error.retry_after)} s.\n"
                    "The limit is per person and keeps the fleet responsive for everyone.")
        elif isinstance(error, app_commands.CheckFailure):
            text = "**You cannot use this command here.**"
        else:
            log.error("a Discord command failed", exc_info=error)
            text = UNEXPECTED
        try:
            await say_privately(interaction, Reply(text, failed=True))
        except discord.HTTPException as e:
            log.warning("could not tell a Discord user about an error: %s %s", e.status, e.code)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type not in (discord.InteractionType.component, discord.InteractionType.modal_submit):
            return
        await asyncio.sleep(FORGOTTEN_AFTER)
        if claimed(interaction) or interaction.response.is_done():
            return
        try:
            await interaction.response.send_message(FORGOTTEN, ephemeral=True)
        except discord.HTTPException as e:
            log.info("could not answer a forgotten interaction: %s %s", e.status, e.code)
