"""A counter that goes up whenever something the panel shows may have changed (an instance's state, a
new sample), so that each live page re-reads once per change rather than on a timer of its own."""

from __future__ import annotations

import asyncio


class Bulletin:
    """Lives on the daemon's event loop: `bump` from another thread through loop.call_soon_threadsafe."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()  # those waiting hold the old one, which stays set

    async def wait_past(self, version: int, timeout: float) -> int:
        """The version once it is past `version`, or after `timeout` seconds (the same one then)."""
        if self.version == version:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
        return self.version
