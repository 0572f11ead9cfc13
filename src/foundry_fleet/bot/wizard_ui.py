"""What the setup wizard looks like in Discord: its buttons, its forms and the panel for each step.

The buttons (and the list of an account's license keys) are dynamic items with fixed custom_ids: the
wizard's state lives in the service (per user), so they work from the invite DM, from any panel, and
after the bot restarted.
"""

from __future__ import annotations

from typing import Any, Protocol

import discord
from discord import ui

from foundry_fleet.bot.text import clip, scrub
from foundry_fleet.services.wizard import DETAILS, KEY_STEPS, PROVISIONING, READY, RELEASE, WizardView


class WizardFlow(Protocol):
    """What the forms hand their answers to (bot/wizard_flow.py)."""

    async def details_submitted(self, interaction: discord.Interaction, name: str, license_key: str) -> None: ...

    async def release_submitted(self, interaction: discord.Interaction, version: str, url: str) -> None: ...

    async def account_submitted(self, interaction: discord.Interaction, username: str, password: str) -> None: ...

    async def key_chosen(self, interaction: discord.Interaction, number: int) -> None: ...

    async def failed(self, interaction: discord.Interaction, error: Exception) -> None: ...


MODAL_SECONDS = 900.0  # Discord keeps an open form for 15 minutes at most
MAX_OPTIONS = 25  # Discord's limit for a select menu
LABELS = {
    "start": "Set up my instance",
    "details": "Enter name and license",
    "account": "Read my key from foundryvtt.com",
    "release": "Next: choose the release",
    "create": "Create my instance",
    "cancel": "Cancel setup",
}
STYLES = {"start": discord.ButtonStyle.success, "create": discord.ButtonStyle.success,
          "release": discord.ButtonStyle.primary, "details": discord.ButtonStyle.secondary,
          "account": discord.ButtonStyle.secondary, "cancel": discord.ButtonStyle.danger}


class WizardButton(ui.DynamicItem[ui.Button[Any]], template=r"fleet:wizard:(?P<action>start|details|account|release|create|cancel)"):
    def __init__(self, action: str, label: str | None = None) -> None:
        super().__init__(ui.Button(label=label or LABELS[action], style=STYLES[action],
                                   custom_id=f"fleet:wizard:{action}"))
        self.action = action

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any) -> WizardButton:
        return cls(match["action"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.wizard_flow.pressed(interaction, self.action)  # type: ignore[attr-defined]


def buttons(*actions: str | tuple[str, str]) -> ui.View:
    view = ui.View(timeout=None)
    for action in actions:
        if isinstance(action, tuple):
            view.add_item(WizardButton(action[0], action[1]))
        else:
            view.add_item(WizardButton(action))
    return view


def invite_view() -> ui.View:
    return buttons("start", "account")


class AccountKeySelect(ui.DynamicItem[ui.Select[Any]], template=r"fleet:wizard:key"):
    """The license keys read from the tenant's account, shown by their last 4 characters only."""

    def __init__(self, endings: tuple[str, ...] = ()) -> None:
        shown = endings[:MAX_OPTIONS]
        options = [discord.SelectOption(label=f"Key {i} of {len(endings)}, ending in {ending}", value=str(i))
                   for i, ending in enumerate(shown, 1)]
        super().__init__(ui.Select(custom_id="fleet:wizard:key", placeholder="Choose the license key",
                                   options=options))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any
                             ) -> AccountKeySelect:
        return cls()

    async def callback(self, interaction: discord.Interaction) -> None:
        number = int(self.item.values[0]) if self.item.values else 0
        await interaction.client.wizard_flow.key_chosen(interaction, number)  # type: ignore[attr-defined]


def key_choice(view: WizardView) -> tuple[str, ui.View]:
    """The account's keys to choose from: one will be the instance's license key."""
    count = len(view.key_choices)
    more = (f"\nOnly the first {MAX_OPTIONS} are listed: paste any other key instead."
            if count > MAX_OPTIONS else "")
    choice = ui.View(timeout=None)
    choice.add_item(AccountKeySelect(view.key_choices))
    for action in (("details", "Paste a key instead"), "cancel"):
        choice.add_item(WizardButton(*action) if isinstance(action, tuple) else WizardButton(action))
    return (f"**Your foundryvtt.com account has {count} license keys.** Choose the one for this instance "
            f"(each is shown by its last 4 characters; they are in the order of your account page).{more}",
            choice)


def panel(view: WizardView, domain: str, choices: list[str]) -> tuple[str, ui.View | None]:
    """The message for where the wizard stands, with the buttons that go on from there."""
    note = f"⚠️ {scrub(view.message)}\n\n" if view.message else ""
    if view.key_choices and view.step in KEY_STEPS:
        content, choice = key_choice(view)
        return note + content, choice
    if view.step == DETAILS and view.has_license:
        return (note + "**Set up your Foundry instance, step 1 of 2.**\nYour license key (ending in "
                f"`{view.license_ending}`) is ready. Choose the instance's name: players will connect at "
                f"`https://<name>.{domain}/`.", buttons(("details", "Enter the name"), "account", "cancel"))
    if view.step == DETAILS:
        return (note + "**Set up your Foundry instance, step 1 of 2.**\nChoose its name (players will connect at "
                f"`https://<name>.{domain}/`) and give your Foundry license key, or let the fleet read it from "
                "your foundryvtt.com account (your password is used for that one login and not kept).",
                buttons("details", "account", "cancel"))
    if view.step == RELEASE:
        cached = ", ".join(choices) or "none yet"
        return (note + f"**Step 2 of 2: choose the Foundry release for `{view.instance_name}`.**\n"
                f"Cached here: {cached}. Or paste a timed download link from your foundryvtt.com account.",
                buttons("release", ("details", "Change name or license"), "cancel"))
    if view.step == READY:
        release = f"Foundry {view.release_version}" if view.release_version else "the release from your link"
        return (note + f"**Ready to create `{view.instance_name}` with {release}.**",
                buttons("create", ("release", "Change the release"), "cancel"))
    if view.step == PROVISIONING:
        return f"`{view.instance_name}` is being created right now; this message will not change, but the one " \
               "that started it will.", None
    return "Your instance is set up: run `/fleet status` to see it.", None


class _WizardModal(ui.Modal):
    """A step's form: whatever goes wrong while it is handled goes to the wizard's one failure path."""

    def __init__(self, flow: WizardFlow, title: str) -> None:
        super().__init__(title=title, timeout=MODAL_SECONDS)
        self.flow = flow

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await self.flow.failed(interaction, error)


class DetailsModal(_WizardModal):
    def __init__(self, flow: WizardFlow, domain: str, name: str | None = None,
                 license_ending: str | None = None) -> None:
        """`license_ending`: a key is held already (its last 4 characters); the field may stay empty."""
        super().__init__(flow, "Set up your Foundry instance (1 of 2)")
        self.name = ui.TextInput(custom_id="name", min_length=1, max_length=63, default=name,
                                 placeholder="e.g. dragons")
        self.license = ui.TextInput(custom_id="license", min_length=24, max_length=64,
                                    required=license_ending is None,
                                    placeholder="XXXX-XXXX-XXXX-XXXX-XXXX-XXXX")
        self.add_item(ui.Label(text="Instance name", component=self.name, description=clip(
            f"Lowercase letters, digits and dashes: it becomes <name>.{domain}", 100)))
        held = f"Leave empty to keep the key ending in {license_ending}" if license_ending else \
            "From your foundryvtt.com account, under Purchased Licenses"
        self.add_item(ui.Label(text="Foundry license key", component=self.license, description=held))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.flow.details_submitted(interaction, self.name.value, self.license.value)


class AccountModal(_WizardModal):
    """The tenant's foundryvtt.com login, used once to read their license keys and not kept. Discord's
    forms have no password field that hides what is typed: only the tenant sees this form."""

    def __init__(self, flow: WizardFlow) -> None:
        super().__init__(flow, "Read your key from foundryvtt.com")
        self.username = ui.TextInput(custom_id="username", min_length=1, max_length=254,
                                     placeholder="as you log in on foundryvtt.com")
        self.password = ui.TextInput(custom_id="password", min_length=1, max_length=256)
        self.add_item(ui.Label(text="Username or e-mail", component=self.username,
                               description="Your foundryvtt.com account: the fleet reads its license keys"))
        self.add_item(ui.Label(text="Password", component=self.password,
                               description="Used for one login, then forgotten: never stored or shown"))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.flow.account_submitted(interaction, self.username.value, self.password.value)


class ReleaseModal(_WizardModal):
    def __init__(self, flow: WizardFlow, choices: list[str]) -> None:
        super().__init__(flow, "Set up your Foundry instance (2 of 2)")
        listed = ", ".join(choices)
        label = f"Release ({listed})" if choices and len(listed) <= 35 else "Release (a cached version)"
        cached = f"Cached here: {listed}." if choices else "No release is cached yet."
        self.version = ui.TextInput(custom_id="version", required=False, max_length=32,
                                    placeholder=choices[0] if choices else "leave empty and paste a link below")
        self.url = ui.TextInput(custom_id="url", required=False, max_length=4000, style=discord.TextStyle.long,
                                placeholder="https://… the timed link from foundryvtt.com")
        self.add_item(ui.Label(text=label, component=self.version, description=clip(
            f"{cached} Or leave this empty and paste a download link below.", 100)))
        self.add_item(ui.Label(text="Or a timed download link", component=self.url,
                               description="foundryvtt.com, Purchased Licenses: the Node.js download link"))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.flow.release_submitted(interaction, self.version.value, self.url.value)
