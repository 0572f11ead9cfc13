"""What a visit to an instance that does not serve gets: the wake handler's decisions, without HTTP.

The edge sends an instance's visitors here while it is to run and does not (domain/instance.py):
a sleeping instance is woken (once, however many visit at once) if the host has the memory for it; one
on its way up is waited for; a failed one says why; a suspended or stopped one never wakes (the edge
routes those to its static page anyway; this is the answer should a visit race a change).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from foundry_fleet.domain.errors import NotFound
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.services.operation_lock import InstanceBusy
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.views import InstanceView

ACTOR = "visitor"
# Asleep, or on its way to sleep (the operations tell that from a stop for another reason).
_WAKEABLE = (InstanceState.SLEEPING.value, InstanceState.STOPPING.value)
POLL = 0.02  # seconds between looks while a waiter waits for the instance to answer


class Verdict(str, enum.Enum):
    UP = "up"  # it serves: send the visitor on
    STARTING = "starting"  # on its way up (woken now, or already)
    FULL = "full"  # asleep: the host has not the memory to wake it
    FAILED = "failed"  # it could not start; `detail` says why
    UNAVAILABLE = "unavailable"  # stopped or suspended: it does not wake for visitors
    UNKNOWN = "unknown"  # no instance has this host


@dataclass(frozen=True)
class WakeAnswer:
    verdict: Verdict
    host: str
    detail: str = ""


class Wakes:
    def __init__(self, instance_for_host: Callable[[str], str | None], operations: Operations | None) -> None:
        """`operations` None: the daemon is still starting (the edge it left may already send visits
        here); visitors are told their table is starting, and their page keeps asking."""
        self.instance_for_host = instance_for_host
        self.operations = operations

    async def visit(self, host: str) -> WakeAnswer:
        """Someone asked for `host`: wake its instance if it sleeps, and say where it stands."""
        if self.operations is None:
            return WakeAnswer(Verdict.STARTING, host, "the fleet is starting")
        name = await asyncio.to_thread(self.instance_for_host, host)
        if name is None:
            return WakeAnswer(Verdict.UNKNOWN, host)
        view = await self._view(name)
        if view is not None and view.state in _WAKEABLE and _wants_to_run(view):
            assert self.operations is not None
            try:
                full = await self.operations.wake(ACTOR, name)
            except InstanceBusy:
                full = None  # another visit (or an operation) holds it this very moment
            except NotFound:
                return WakeAnswer(Verdict.UNKNOWN, host)
            if full:
                return WakeAnswer(Verdict.FULL, host, full)
            view = await self._view(name)
        return _judge(host, view)

    async def wait(self, host: str, timeout: float) -> WakeAnswer:
        """Visit, then wait up to `timeout` seconds for the instance to serve: once it does, the edge is
        brought up to date first, so the visitor sent on reaches Foundry, not this handler again."""
        answer = await self.visit(host)
        deadline = time.monotonic() + timeout
        while answer.verdict is Verdict.STARTING and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
            # Visited again, not only looked at: one still asleep (its wake met another operation holding
            # it) is woken once that is done.
            answer = await self.visit(host)
        if answer.verdict is Verdict.UP and self.operations is not None and self.operations.edge is not None:
            await self.operations.edge.sync()
        return answer

    async def _view(self, name: str) -> InstanceView | None:
        assert self.operations is not None
        try:
            return await asyncio.to_thread(self.operations.lifecycle.instances.get, name)
        except NotFound:
            return None


def _wants_to_run(view: InstanceView) -> bool:
    return view.desired == DesiredState.RUNNING.value and view.suspended is None


def _judge(host: str, view: InstanceView | None) -> WakeAnswer:
    if view is None:
        return WakeAnswer(Verdict.UNKNOWN, host)
    if not _wants_to_run(view):
        return WakeAnswer(Verdict.UNAVAILABLE, host)
    if view.state == InstanceState.RUNNING.value and view.address:
        return WakeAnswer(Verdict.UP, host)
    if view.state == InstanceState.FAILED.value:
        return WakeAnswer(Verdict.FAILED, host, public_reason(view.state_reason))
    return WakeAnswer(Verdict.STARTING, host)


def public_reason(state_reason: str) -> str:
    """Why it failed, as anyone who opens its URL may read it: the kind of failure, never the fleet's own
    words (they can name paths, users or the cluster's address); its game master sees those."""
    if state_reason.startswith("crash loop"):
        return "it crashed again each time it was started"
    if "not healthy within" in state_reason or "health checks failed" in state_reason:
        return "it did not answer in time after starting"
    return "the server could not start it"
