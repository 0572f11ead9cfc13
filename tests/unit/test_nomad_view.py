"""The view of Nomad's allocations and services: fed by blocking queries only, it wakes its waiters
as soon as Nomad answers with a change, and it outlasts Nomad being away.

Nomad here is a few lines answering through httpx's MockTransport: each query blocks until the
state's index passes the one asked for (or the wait runs out), with the three headers Nomad sends.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from foundry_fleet.runtime.base import TaskHandle
from foundry_fleet.runtime.nomad.api import NomadApi, NomadSettings
from foundry_fleet.runtime.nomad.driver import _exit_of, _placement_failure
from foundry_fleet.runtime.nomad.view import NomadView

pytestmark = pytest.mark.timeout(20)


class TinyNomad:
    def __init__(self) -> None:
        self.index = 10
        self.allocs: list[dict] = []
        self.services: list[dict] = []
        self.down = False
        self.requests: list[tuple[str, str]] = []  # (path, index asked)
        self._changed = asyncio.Condition()

    async def change(self, allocs: list[dict] | None = None, services: list[dict] | None = None) -> None:
        async with self._changed:
            self.index += 1
            if allocs is not None:
                self.allocs = allocs
            if services is not None:
                self.services = services
            self._changed.notify_all()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        asked = int(request.url.params.get("index", "0"))
        self.requests.append((request.url.path, request.url.params.get("index", "")))
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        wait = _seconds(request.url.params.get("wait", "0s"))
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.index > asked), wait)
            except TimeoutError:
                pass
        body = self.allocs if request.url.path == "/v1/allocations" else self.services
        return httpx.Response(200, json=body, headers={"X-Nomad-Index": str(self.index),
                                                       "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"})


def _seconds(duration: str) -> float:
    return float(duration[:-2]) / 1000 if duration.endswith("ms") else float(duration.rstrip("s") or 0)


def api_for(nomad: TinyNomad) -> NomadApi:
    return NomadApi(NomadSettings("http://nomad.test:4646", retries=0, timeout=2.0),
                    transport=httpx.MockTransport(nomad.handle))


def alloc(alloc_id: str, client: str, create: int, **more: object) -> dict:
    return {"ID": alloc_id, "JobID": "fvtt-alice", "ClientStatus": client, "DesiredStatus": "run",
            "CreateIndex": create, **more}


def test_a_change_wakes_the_waiters_at_once_and_an_idle_view_sends_nothing_more() -> None:
    async def main() -> None:
        nomad = TinyNomad()
        api = api_for(nomad)
        view = NomadView(api, wait=30.0)
        view.start()
        try:
            await view.loaded(timeout=2)
            assert view.job_allocs("fvtt-alice") == [] and view.indexes == {"allocations": 10, "services": 10}
            sent = len(nomad.requests)
            await asyncio.sleep(0.3)
            assert len(nomad.requests) == sent  # both queries are held open by Nomad: no polling
            waiter = asyncio.create_task(view.until(lambda: view.job_services("fvtt-alice") or None))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await nomad.change(services=[{"JobID": "fvtt-alice", "Address": "127.0.0.2", "Port": 21000}])
            found = await asyncio.wait_for(waiter, 2)
            assert found[0]["Port"] == 21000 and time.monotonic() - started < 0.5
            # Each answer re-asks with the index it carried.
            assert ("/v1/service/fvtt-instance", "11") in nomad.requests
            await nomad.change(allocs=[alloc("b", "running", 12), alloc("a", "lost", 5)])
            await view.until(lambda: view.job_allocs("fvtt-alice") or None, timeout=2)
            assert [a["ID"] for a in view.job_allocs("fvtt-alice")] == ["a", "b"]  # oldest first
        finally:
            await view.stop()
            await api.aclose()

    asyncio.run(main())


def test_nomad_away_is_said_and_retried_with_backoff_keeping_what_was_known() -> None:
    async def main() -> None:
        nomad = TinyNomad()
        nomad.allocs = [alloc("a", "running", 5)]
        api = api_for(nomad)
        view = NomadView(api, wait=0.2, backoff=0.05, backoff_max=0.2)
        view.start()
        try:
            await view.loaded(timeout=2)
            nomad.down = True
            await asyncio.sleep(0.8)
            assert view.problem is not None and "did not answer" in view.problem
            assert [a["ID"] for a in view.job_allocs("fvtt-alice")] == ["a"]  # still known
            attempts = len(nomad.requests)
            assert attempts < 30  # backed off: not a tight loop
            nomad.down = False
            await nomad.change(allocs=[alloc("a", "running", 5), alloc("c", "pending", 20)])
            await view.until(lambda: len(view.job_allocs("fvtt-alice")) == 2 or None, timeout=2)
            assert view.problem is None
        finally:
            await view.stop()
            await api.aclose()

    asyncio.run(main())


def test_an_allocation_that_nomad_replaces_is_no_exit_and_one_it_gave_up_on_is() -> None:
    running = alloc("a", "running", 5)
    assert _exit_of([running], "fvtt-alice") is None
    assert _exit_of([alloc("a", "lost", 5)], "fvtt-alice") is None  # Nomad places a replacement
    assert _exit_of([alloc("a", "failed", 5, NextAllocation="b")], "fvtt-alice") is None
    failed = alloc("a", "failed", 5, TaskStates={"foundry": {"Restarts": 3, "Events": [
        {"Type": "Started"},
        {"Type": "Terminated", "ExitCode": 7, "Signal": 0, "DisplayMessage": "Exit Code: 7"},
        {"Type": "Not Restarting", "DisplayMessage": "Exceeded allowed attempts 3 in interval 10m0s"}]}})
    exit_ = _exit_of([failed], "fvtt-alice")
    assert exit_ is not None and exit_.gave_up and exit_.exit_code == 7 and exit_.signal is None
    assert exit_.describe() == ("Nomad gave up after 3 restarts: Terminated: Exit Code: 7; "
                                "Not Restarting: Exceeded allowed attempts 3 in interval 10m0s")
    done = _exit_of([alloc("a", "complete", 5, TaskStates={"foundry": {"Events": [
        {"Type": "Terminated", "ExitCode": 0}]}})], "fvtt-alice")
    assert done is not None and not done.gave_up and done.describe() == "exited with code 0"
    assert _exit_of([], "fvtt-alice") is not None  # purged behind the fleet's back
    assert TaskHandle("nomad", "alice", 0.0).state == {}


def test_a_placement_failure_is_told_in_nomads_terms() -> None:
    assert _placement_failure(None) is None
    assert _placement_failure({"Status": "pending"}) is None
    assert _placement_failure({"Status": "complete"}) is None
    evaluation = {"Status": "complete", "FailedTGAllocs": {"foundry": {
        "NodesEvaluated": 2, "NodesFiltered": 1, "ConstraintFiltered": {"${node.unique.id} = abc": 1},
        "NodesExhausted": 1, "DimensionExhausted": {"memory": 1}}}}
    assert _placement_failure(evaluation) == \
        "group foundry: 2 nodes evaluated, 1 filtered by ${node.unique.id} = abc, 1 exhausted memory"
