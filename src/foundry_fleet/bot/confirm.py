"""Confirm buttons for what cannot be undone from Discord (restore, delete).

The button's custom_id carries a short random token for a pending confirmation kept in memory: only
the person who asked may press it, it expires, and after a bot restart it says so instead of failing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import discord
from discord import ui

from foundry_fleet.bot.replies import claim, failure, say_privately


CONFIRM_SECONDS = 300.0


class KeepsConfirmations(Protocol):
    """The bot a button was pressed in: it keeps the pending confirmations."""

    confirmations: Confirmations
Action = Callable[[discord.Interaction], Awaitable[None]]


@dataclass
class Pending:
    user_id: int
    instance: str
    run: Action  # called with the press, not yet acknowledged
    expires_at: float


class Confirmations:
    def __init__(self, ttl: float = CONFIRM_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._pending: dict[str, Pending] = {}

    def add(self, user_id: int, instance: str, run: Action) -> str:
        now = self.clock()
        self._pending = {k: p for k, p in self._pending.items() if p.expires_at > now}
        token = secrets.token_urlsafe(12)
        self._pending[token] = Pending(user_id, instance, run, now + self.ttl)
        return token

    def get(self, token: str) -> Pending | None:
        pending = self._pending.get(token)
        if pending is not None and pending.expires_at <= self.clock():
            del self._pending[token]
            return None
        return pending

    def drop(self, token: str) -> None:
        self._pending.pop(token, None)

    def view(self, token: str, confirm: str) -> ui.View:
        view = ui.View(timeout=None)
        view.add_item(ConfirmButton(token, "yes", confirm))
        view.add_item(ConfirmButton(token, "no", "Cancel"))
        return view


class ConfirmButton(ui.DynamicItem[ui.Button[Any]], template=r"fleet:confirm:(?P<token>[A-Za-z0-9_-]{8,32}):(?P<answer>yes|no)"):
    def __init__(self, token: str, answer: str, label: str = "") -> None:
        style = discord.ButtonStyle.danger if answer == "yes" else discord.ButtonStyle.secondary
        super().__init__(ui.Button(label=label or answer, style=style, custom_id=f"fleet:confirm:{token}:{answer}"))
        self.token, self.answer = token, answer

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any
                             ) -> ConfirmButton:
        return cls(match["token"], match["answer"])

    async def callback(self, interaction: discord.Interaction) -> None:
        claim(interaction)
        bot: KeepsConfirmations = interaction.client  # type: ignore[assignment]
        pending = bot.confirmations.get(self.token)
        try:
            if pending is None:
                await interaction.response.edit_message(
                    content="This confirmation has expired; nothing was changed. Run the command again.", view=None)
            elif interaction.user.id != pending.user_id:
                await interaction.response.send_message("Only the person who asked can confirm this.", ephemeral=True)
            elif self.answer == "no":
                bot.confirmations.drop(self.token)
                await interaction.response.edit_message(content="Cancelled: nothing was changed.", view=None)
            else:
                bot.confirmations.drop(self.token)
                await pending.run(interaction)
        except Exception as e:  # noqa: BLE001 - the person hears about it, the log gets the rest
            await say_privately(interaction, failure(e))
