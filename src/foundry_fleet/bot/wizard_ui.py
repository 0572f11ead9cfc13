"""What the setup wizard looks like in Discord: its buttons, its two forms and the panel for each step.

The buttons are dynamic items with fixed custom_ids: the wizard's state lives in the service (per
user), so a button works from the invite DM, from any panel, and after the bot restarted.
"""

from __future__ import annotations

from typing import Any, Protocol

import discord
from discord import ui

from foundry_fleet.bot.text import clip, scrub
from foundry_fleet.services.wizard import DETAILS, PROVISIONING, READY, RELEASE, WizardView



class WizardFlow(Protocol):
    """What the forms hand their answers to (bot/wizard_flow.py)."""

    async def details_submitted(self, interaction: discord.Interaction, name: str, license_key: str) -> None: ...

    async def release_submitted(self, interaction: discord.Interaction, version: str, url: str) -> None: ...

    async def failed(self, interaction: discord.Interaction, error: Exception) -> None: ...


MODAL_SECONDS = 900.0  # Discord keeps an open form for 15 minutes at most
LABELS = {
    "start": "Set up my instance",
    "details": "Enter name and license",
    "release": "Next: choose the release",
    "create": "Create my instance",
    "cancel": "Cancel setup",
}
STYLES = {"start": discord.ButtonStyle.success, "create": discord.ButtonStyle.success,
          "release": discord.ButtonStyle.primary, "details": discord.ButtonStyle.secondary,
          "cancel": discord.ButtonStyle.danger}


class WizardButton(ui.DynamicItem[ui.Button[Any]], template=r"fleet:wizard:(?P<action>start|details|release|create|cancel)"):
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
    return buttons("start")


def panel(view: WizardView, domain: str, choices: list[str]) -> tuple[str, ui.View | None]:
    """The message for where the wizard stands, with the buttons that go on from there."""
    note = f"⚠️ {scrub(view.message)}\n\n" if view.message else ""
    if view.step == DETAILS:
        return (note + "**Set up your Foundry instance, step 1 of 2.**\nChoose its name (players will connect at "
                f"`https://<name>.{domain}/`) and give your Foundry license key.",
                buttons("details", "cancel"))
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


class DetailsModal(ui.Modal):
    def __init__(self, flow: WizardFlow, domain: str, name: str | None = None) -> None:
        super().__init__(title="Set up your Foundry instance (1 of 2)", timeout=MODAL_SECONDS)
        self.flow = flow
        self.name = ui.TextInput(custom_id="name", min_length=1, max_length=63, default=name,
                                 placeholder="e.g. dragons")
        self.license = ui.TextInput(custom_id="license", min_length=24, max_length=64,
                                    placeholder="XXXX-XXXX-XXXX-XXXX-XXXX-XXXX")
        self.add_item(ui.Label(text="Instance name", component=self.name, description=clip(
            f"Lowercase letters, digits and dashes: it becomes <name>.{domain}", 100)))
        self.add_item(ui.Label(text="Foundry license key", component=self.license,
                               description="From your foundryvtt.com account, under Purchased Licenses"))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.flow.details_submitted(interaction, self.name.value, self.license.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await self.flow.failed(interaction, error)


class ReleaseModal(ui.Modal):
    def __init__(self, flow: WizardFlow, choices: list[str]) -> None:
        super().__init__(title="Set up your Foundry instance (2 of 2)", timeout=MODAL_SECONDS)
        self.flow = flow
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

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await self.flow.failed(interaction, error)
