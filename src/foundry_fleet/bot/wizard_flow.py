"""The setup wizard, driven from Discord.

    invite DM or /fleet setup or /fleet join
      -> [Set up] -> form 1 (name, license key) -> panel with [Next]   (a form cannot answer a form)
         or [Read my key from foundryvtt.com] -> login form -> the key (or a list to choose from) -> form 1
      -> form 2 (a cached release, or a timed download link) -> "thinking", progress edits
      -> the URL and the generated admin password, privately, once.

Every step is the service's (services/wizard.py): it validates, keeps the secrets out of the database
and remembers where a user left off, so /fleet setup resumes and a failure says what to fix with a
button to go on. Everything here is ephemeral: only the tenant sees it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

import discord

from foundry_fleet.bot.progress import ProgressMessage
from foundry_fleet.bot.replies import UNEXPECTED, Reply, claim, failure, say_privately
from foundry_fleet.bot.text import clip, error_text, public_url, scrub, sleep_note
from foundry_fleet.bot.wizard_ui import AccountModal, DetailsModal, ReleaseModal, buttons, panel
from foundry_fleet.domain.errors import FleetError, NotFound, RateLimited
from foundry_fleet.services.account_keys import AccountKeys
from foundry_fleet.services.wizard import DETAILS, KEY_STEPS, READY, RELEASE, SetupWizard, WizardView

log = logging.getLogger(__name__)

CANCELLED = ("Setup cancelled; nothing was made. Your invite stays valid until it expires: "
             "run `/fleet setup` to start again.")


class WizardFlow:
    def __init__(self, wizard: SetupWizard, account_keys: AccountKeys, domain: str, provisioners: int = 4) -> None:
        self.wizard = wizard
        self.account_keys = account_keys
        self.domain = domain
        # Provisioning blocks a thread on the control API; in the daemon that API runs on the same
        # event loop and uses the default executor, so provisioning must not take threads from it.
        self.pool = ThreadPoolExecutor(max_workers=provisioners, thread_name_prefix="fleet-provision")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def panel_for(self, view: WizardView) -> Reply:
        choices = await asyncio.to_thread(self.wizard.release_choices) if view.step == RELEASE else []
        content, buttons_view = panel(view, self.domain, choices)
        return Reply(content, buttons_view)

    async def begin(self, user: str) -> Reply:
        """/fleet setup and /fleet join: start, or resume where the user left off."""
        return await self.panel_for(await asyncio.to_thread(self.wizard.start, user))

    # buttons ------------------------------------------------------------------------------

    async def pressed(self, interaction: discord.Interaction, action: str) -> None:
        claim(interaction)
        user = str(interaction.user.id)
        try:
            if action in ("start", "account"):  # both are on the invite: either starts (or resumes) the wizard
                view = await asyncio.to_thread(self.wizard.start, user)
            else:
                found = await asyncio.to_thread(self.wizard.get, user)
                if found is None:
                    raise NotFound("there is no setup in progress", "run /fleet setup to start (again)")
                view = found
            if action == "cancel":
                await asyncio.to_thread(self.wizard.cancel, user)
                await interaction.response.edit_message(content=CANCELLED, view=None)
            elif (action == "start" and view.step == DETAILS) or (
                    action == "details" and view.step in (DETAILS, RELEASE, READY)):
                await interaction.response.send_modal(DetailsModal(self, self.domain, view.instance_name,
                                                                   view.license_ending))
            elif action == "account" and view.step in KEY_STEPS:
                await interaction.response.send_modal(AccountModal(self))
            elif action == "release" and view.step in (RELEASE, READY):
                choices = await asyncio.to_thread(self.wizard.release_choices)
                await interaction.response.send_modal(ReleaseModal(self, choices))
            elif action == "create" and view.step == READY:
                await interaction.response.defer(ephemeral=True, thinking=True)
                await self.provision(interaction)
            else:  # the wizard has moved on (another message, another device): show where it is
                reply = await self.panel_for(view)
                await interaction.response.send_message(**reply.kwargs(), ephemeral=True)
        except Exception as e:  # noqa: BLE001 - the person hears what went wrong
            await say_privately(interaction, failure(e))

    # forms --------------------------------------------------------------------------------

    async def details_submitted(self, interaction: discord.Interaction, name: str, license_key: str) -> None:
        claim(interaction)
        user = str(interaction.user.id)
        try:
            view = await asyncio.to_thread(self.wizard.submit_details, user, name, license_key)
        except FleetError as e:
            await interaction.response.send_message(
                error_text(e) + "\nNothing was saved from that form; press the button to fill it in again.",
                view=buttons(("details", "Try again"), "cancel"), ephemeral=True)
            return
        reply = await self.panel_for(view)
        await interaction.response.send_message(**reply.kwargs(), ephemeral=True)

    async def release_submitted(self, interaction: discord.Interaction, version: str, url: str) -> None:
        claim(interaction)
        user = str(interaction.user.id)
        try:
            await asyncio.to_thread(self.wizard.submit_release, user, version=version or None, url=url or None)
        except FleetError as e:
            await interaction.response.send_message(
                error_text(e) + "\nPress the button to choose again.",
                view=buttons(("release", "Choose the release again"), "cancel"), ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.provision(interaction)

    async def account_submitted(self, interaction: discord.Interaction, username: str, password: str) -> None:
        """One login to the tenant's account, its keys to the wizard; the password goes no further."""
        claim(interaction)
        user = str(interaction.user.id)
        await interaction.response.defer(ephemeral=True, thinking=True)  # a login can take seconds
        try:
            view = await asyncio.to_thread(self.account_keys.read, user, username, password)
        except Exception as e:  # noqa: BLE001 - the person hears what went wrong; the wizard is unchanged
            await interaction.edit_original_response(**self._account_failed(e))
            return
        reply = await self.panel_for(view)
        read = "" if view.key_choices else (f"License key ending in `{view.license_ending}` read from your "
                                            "foundryvtt.com account; your password was not kept.\n\n")
        await interaction.edit_original_response(content=clip(read + reply.content), view=reply.view)

    async def key_chosen(self, interaction: discord.Interaction, number: int) -> None:
        claim(interaction)
        user = str(interaction.user.id)
        try:
            view = await asyncio.to_thread(self.wizard.choose_account_key, user, number)
        except Exception as e:  # noqa: BLE001 - the person hears what went wrong
            await say_privately(interaction, failure(e))
            return
        reply = await self.panel_for(view)
        await interaction.response.edit_message(
            content=clip(f"License key ending in `{view.license_ending}` chosen.\n\n{reply.content}"), view=reply.view)

    def _account_failed(self, error: Exception) -> dict[str, object]:
        if isinstance(error, FleetError):
            text = error_text(error)
        else:
            log.error("reading a license key from a foundryvtt.com account failed: %s", type(error).__name__)
            text = UNEXPECTED
        again = [] if isinstance(error, RateLimited) else [("account", "Try again")]
        return {"content": clip(text + "\nNothing in your setup changed."),
                "view": buttons(*again, ("details", "Paste the key instead"), "cancel")}

    async def failed(self, interaction: discord.Interaction, error: Exception) -> None:
        await say_privately(interaction, failure(error))

    # making the instance ------------------------------------------------------------------

    async def provision(self, interaction: discord.Interaction) -> None:
        """After the interaction was deferred: create, showing progress, then the one-time details."""
        user = str(interaction.user.id)
        progress = ProgressMessage(interaction)
        progress.start()
        try:
            created = await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(
                self.wizard.provision, user, progress=progress.progress, say=progress.say))
        except Exception as e:  # noqa: BLE001 - the wizard went back a step and says what to fix
            await progress.stop()
            await self._provision_failed(interaction, user, e)
            return
        await progress.stop()
        instance = created.instance
        url = public_url(instance.to_dict())
        sleeps = sleep_note(instance.to_dict())
        sleeps += "\n" if sleeps else ""
        await interaction.edit_original_response(content=f"**`{instance.name}` is ready.** Details below.")
        password = (f"\nAdmin password for Foundry's setup screen: ||`{created.admin_password}`||\n"
                    "It is shown this once and not kept anywhere: store it in your password manager now."
                    if created.admin_password else "")
        await interaction.followup.send(
            f"**Your Foundry instance is running at {url}**{password}\n{sleeps}"
            "`/fleet status`, `/fleet backups` and the other `/fleet` commands work on it from now on.",
            ephemeral=True)

    async def _provision_failed(self, interaction: discord.Interaction, user: str, error: Exception) -> None:
        view = await asyncio.to_thread(self.wizard.get, user)
        if not isinstance(error, FleetError):
            log.error("setting up an instance for a Discord user failed", exc_info=error)
        if view is None:
            await interaction.edit_original_response(content=failure(error).content)
            return
        reason = view.message or (error.message if isinstance(error, FleetError) else "an unexpected error")
        content, next_steps = panel(WizardView(**{**view.to_dict(), "message": ""}), self.domain,
                                    await asyncio.to_thread(self.wizard.release_choices))
        kwargs = {"content": clip(f"**Setting up did not work:** {scrub(reason)}\n\n{content}")}
        await interaction.edit_original_response(**kwargs, view=next_steps)
