"""Long work shown as it goes: one message edited with the latest step, at most once a second.

Steps may be reported from a worker thread (the wizard provisions in one)."""

from __future__ import annotations

import asyncio
import logging

import discord

from foundry_fleet.bot.text import clip, scrub, size

log = logging.getLogger(__name__)


class ProgressMessage:
    def __init__(self, interaction: discord.Interaction, every: float = 1.0) -> None:
        self.interaction = interaction
        self.every = every
        self.loop = asyncio.get_running_loop()
        self.shown: list[str] = []
        self._text: str | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump())

    def say(self, text: str) -> None:
        """From any thread."""
        self.loop.call_soon_threadsafe(self._set, text)

    def progress(self, what: str, done: int, total: int | None) -> None:
        """A releases ProgressCallback (download, unpack), from any thread."""
        of = f" of {size(total)}" if total else ""
        self.say(f"{what}: {size(done)}{of} …")

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    def _set(self, text: str) -> None:
        self._text = text
        self._wake.set()

    async def _pump(self) -> None:
        shown: str | None = None
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set() or self._text is None or self._text == shown:
                continue
            shown = self._text
            try:
                await self.interaction.edit_original_response(content=clip(scrub(shown)))
                self.shown.append(shown)
            except discord.HTTPException as e:  # progress is a courtesy; the outcome is still told
                log.warning("could not show progress on Discord: %s %s", e.status, e.code)
            try:
                await asyncio.wait_for(self._stop.wait(), self.every)
            except TimeoutError:
                pass
