"""What the fleet knows of Nomad's allocations, service registrations and nodes, kept current by
blocking queries (`index` = the last X-Nomad-Index, `wait`): one query per kind always open, so an
idle fleet sends Nomad nothing but these long-held requests, and a change reaches the waiters here
as soon as Nomad answers.

A query that fails (Nomad down, no leader) is asked again after a backoff that doubles up to a
ceiling; what was known stays known meanwhile, and `problem` says why it is not current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.runtime.nomad.api import Indexed, NomadApi
from foundry_fleet.runtime.nomad.jobs import SERVICE_NAME

log = logging.getLogger("foundry_fleet.nomad")

T = TypeVar("T")
TERMINAL_CLIENT_STATUSES = ("complete", "failed", "lost")


class NomadView:
    def __init__(self, api: NomadApi, *, wait: float = 300.0, backoff: float = 0.5, backoff_max: float = 30.0,
                 service_name: str = SERVICE_NAME) -> None:
        self.api = api
        self.wait = wait
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.service_name = service_name
        self.allocs: dict[str, dict[str, Any]] = {}  # by allocation id
        self.services: list[dict[str, Any]] = []
        self.node_stubs: list[dict[str, Any]] | None = None  # None until nodes are watched
        self.indexes: dict[str, int] = {}
        self.problem: str | None = None
        self.changes = 0  # counts the answers that changed something, for tests and the bench
        self._changed = asyncio.Condition()
        self._loaded: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._follow("allocations", self.api.allocations, self._set_allocs)
        self._follow("services", lambda index, wait: self.api.services(self.service_name, index, wait),
                     self._set_services)

    def watch_nodes(self) -> None:
        """Nodes are followed from the first time someone asks for them (placement, `status`)."""
        self._follow("nodes", self.api.nodes, self._set_nodes)

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        self._stopping = True  # a cancellation that an answer arriving at the same moment swallows still ends it
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stopping = False

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def is_loaded(self, *kinds: str) -> bool:
        return all(self._loaded.get(kind, asyncio.Event()).is_set() for kind in kinds or ("allocations", "services"))

    async def loaded(self, *kinds: str, timeout: float | None = None) -> None:
        """Wait until each kind ("allocations", "services", "nodes") has had its first answer."""
        for kind in kinds or ("allocations", "services"):
            event = self._loaded.setdefault(kind, asyncio.Event())
            await asyncio.wait_for(event.wait(), timeout)

    # reads -----------------------------------------------------------------------------------

    def job_allocs(self, job_id: str) -> list[dict[str, Any]]:
        """The job's allocations, oldest first."""
        return sorted((a for a in self.allocs.values() if a.get("JobID") == job_id),
                      key=lambda a: int(a.get("CreateIndex") or 0))

    def job_services(self, job_id: str) -> list[dict[str, Any]]:
        return [s for s in self.services if s.get("JobID") == job_id]

    async def until(self, found: Callable[[], T | None], timeout: float | None = None) -> T:
        """The first non-None answer of `found`, asked now and after every change the view sees;
        TimeoutError after `timeout` seconds."""
        async with self._changed:
            return await asyncio.wait_for(self._changed.wait_for(found), timeout)  # type: ignore[arg-type]

    # inside ----------------------------------------------------------------------------------

    def _follow(self, kind: str, query: Callable[[int, float], Awaitable[Indexed[Any]]],
                apply: Callable[[Any], None]) -> None:
        if kind in self._tasks and not self._tasks[kind].done():
            return
        self._loaded.setdefault(kind, asyncio.Event())
        self._tasks[kind] = asyncio.create_task(self._loop(kind, query, apply), name=f"nomad-view:{kind}")

    async def _loop(self, kind: str, query: Callable[[int, float], Awaitable[Indexed[Any]]],
                    apply: Callable[[Any], None]) -> None:
        index, delay = 0, self.backoff
        while not self._stopping:
            try:
                answer = await query(index, self.wait)
            except FleetError as e:
                self.problem = f"watching Nomad's {kind}: {e.message}"
                log.warning("%s; asking again in %.1fs", self.problem, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff
            self.problem = None
            if answer.index == index and self._loaded[kind].is_set():
                continue  # the wait ran out with nothing new
            # An index that goes backwards (a restored or new cluster) starts the watch afresh.
            index = answer.index if answer.index > 0 else 1
            self.indexes[kind] = index
            apply(answer.value)
            self._loaded[kind].set()
            self.changes += 1
            async with self._changed:
                self._changed.notify_all()

    def _set_allocs(self, stubs: list[dict[str, Any]]) -> None:
        self.allocs = {a["ID"]: a for a in stubs if isinstance(a, dict) and "ID" in a}

    def _set_services(self, registrations: list[dict[str, Any]]) -> None:
        self.services = [s for s in registrations if isinstance(s, dict)]

    def _set_nodes(self, stubs: list[dict[str, Any]]) -> None:
        self.node_stubs = [n for n in stubs if isinstance(n, dict)]
