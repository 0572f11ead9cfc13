"""Answering an interaction the way Discord requires: one initial response within 3 s, then edits.

A command's work runs first; if it is done within DEFER_AFTER the answer is the initial response,
otherwise the interaction is deferred ("thinking") and the answer edits that message. Work known to be
slow defers straight away. Errors (FleetError: message and hint) are always ephemeral, even when the
answer would have been public.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from foundry_fleet.bot.text import clip, error_text, scrub
from foundry_fleet.domain.errors import FleetError

log = logging.getLogger(__name__)

DEFER_AFTER = 1.0  # well inside Discord's 3 s, with room for a slow network
UNEXPECTED = ("**Something went wrong on the fleet's side.**\n"
              "Nothing more is known here; a fleet admin can find the details in the daemon's log.")
CLAIMED = "foundry_fleet.claimed"


@dataclass
class Reply:
    content: str
    view: discord.ui.View | None = None
    public: bool = False  # ephemeral unless said otherwise
    failed: bool = False

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"content": clip(scrub(self.content))}
        if self.view is not None:
            out["view"] = self.view
        return out


def failure(error: BaseException) -> Reply:
    if isinstance(error, FleetError):
        return Reply(error_text(error), failed=True)
    log.error("unexpected error answering a Discord interaction", exc_info=error)
    return Reply(UNEXPECTED, failed=True)


def claim(interaction: discord.Interaction) -> None:
    """Mark an interaction as handled, so the fallback for forgotten forms leaves it alone."""
    interaction.extras[CLAIMED] = True


def claimed(interaction: discord.Interaction) -> bool:
    return bool(interaction.extras.get(CLAIMED))


async def _outcome(work: Callable[[], Awaitable[Reply]]) -> Reply:
    try:
        return await work()
    except Exception as e:  # noqa: BLE001 - every failure becomes an answer to the person
        return failure(e)


async def respond(interaction: discord.Interaction, work: Callable[[], Awaitable[Reply]], *, slow: bool = False,
                  public: bool = False) -> None:
    """Run `work` and answer with its Reply (or its error), deferring when it takes long."""
    claim(interaction)
    deferred_public = False
    if slow:
        await interaction.response.defer(ephemeral=not public, thinking=True)
        deferred_public = public
        reply = await _outcome(work)
    else:
        task = asyncio.ensure_future(_outcome(work))
        try:
            reply = await asyncio.wait_for(asyncio.shield(task), DEFER_AFTER)
        except TimeoutError:
            await interaction.response.defer(ephemeral=not public, thinking=True)
            deferred_public = public
            reply = await task
    await deliver(interaction, reply, deferred_public=deferred_public)


async def deliver(interaction: discord.Interaction, reply: Reply, *, deferred_public: bool = False) -> None:
    """The reply as the initial response, or as the edit of a deferred one."""
    ephemeral = reply.failed or not reply.public
    if not interaction.response.is_done():
        await interaction.response.send_message(**reply.kwargs(), ephemeral=ephemeral)
    elif deferred_public and ephemeral:
        # A public "thinking" message cannot turn private: replace it with a private follow-up.
        await interaction.delete_original_response()
        await interaction.followup.send(**reply.kwargs(), ephemeral=True)
    else:
        await interaction.edit_original_response(**reply.kwargs())


async def say_privately(interaction: discord.Interaction, reply: Reply) -> None:
    """An ephemeral answer, as the initial response or a follow-up, whichever is still possible."""
    if interaction.response.is_done():
        await interaction.followup.send(**reply.kwargs(), ephemeral=True)
    else:
        await interaction.response.send_message(**reply.kwargs(), ephemeral=True)


async def respond_by_update(interaction: discord.Interaction, started: str,
                            work: Callable[[], Awaitable[Reply]]) -> None:
    """For a button: turn its message into `started` (buttons gone), then into the outcome."""
    claim(interaction)
    await interaction.response.edit_message(content=started, view=None)
    reply = await _outcome(work)
    await interaction.edit_original_response(**reply.kwargs())
