"""The stand-in's state: one raft-like index raised by every change, each table's own last index, and
blocking queries that return when a table they read moves past the index they were given."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

TABLES = ("jobs", "allocs", "evals", "services", "nodes", "volumes")
MAX_WAIT = 600.0  # Nomad caps a blocking query's wait at 10 minutes


class Store:
    def __init__(self) -> None:
        self.index = 1
        self.table_index = dict.fromkeys(TABLES, 1)
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, id)
        self.allocs: dict[str, dict[str, Any]] = {}
        self.evals: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self._changed: asyncio.Condition | None = None
        self.closing = False  # the stand-in stops: blocked queries answer now

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def bump(self, *tables: str) -> int:
        """A change to `tables`: the next index, which they now carry. Wakes the blocked queries."""
        self.index += 1
        for table in tables:
            self.table_index[table] = self.index
        asyncio.get_running_loop().create_task(self._notify())
        return self.index

    async def _notify(self) -> None:
        changed = self._condition()
        async with changed:
            changed.notify_all()

    async def close(self) -> None:
        self.closing = True
        await self._notify()

    def index_of(self, tables: tuple[str, ...]) -> int:
        return max(self.table_index[t] for t in tables)

    async def block(self, tables: tuple[str, ...], index: int, wait: float | None) -> int:
        """Wait (at most `wait`, plus Nomad's jitter of up to wait/16) until `tables` pass `index`;
        their index then. Without an index the answer is immediate."""
        if index <= 0 or self.index_of(tables) > index:
            return self.index_of(tables)
        wait = min(wait if wait is not None else 300.0, MAX_WAIT)
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        changed = self._condition()
        async with changed:
            while self.index_of(tables) <= index and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), left)
                except TimeoutError:
                    break
        return self.index_of(tables)


def parse_wait(text: str | None) -> float | None:
    """A Go duration as Nomad takes it for `wait` ("300s", "5m", "250ms", "1m30s")."""
    if text is None or text == "":
        return None
    import re

    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"Invalid wait time: time: invalid duration \"{text}\"")
    return sum(float(n) * units[u] for n, u in parts)
