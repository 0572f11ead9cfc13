"""What the wiring hands the panel's admin pages (wiring/panel.py): the doctor's checks run once for
every viewer who asks while they run and kept a while, and the runtime's facts as the nodes page reads
them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import DaemonNotRunning, ExternalFailure
from foundry_fleet.runtime.base import Capabilities, Capability, NodeInfo
from foundry_fleet.services.daemon_info import DaemonInfo
from foundry_fleet.services.doctor.clock import ClockReading
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.runtime_report import RuntimeReport
from foundry_fleet.wiring.panel import SharedResult, health_check, runtime_facts, status_from
from foundry_fleet.wiring.services import open_services


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_callers_while_it_runs_share_one_run_and_its_result_is_kept_a_while() -> None:
    clock = Clock()
    runs: list[int] = []

    async def scenario() -> None:
        gate = asyncio.Event()

        async def produce() -> int:
            runs.append(len(runs) + 1)
            await gate.wait()
            return len(runs)

        shared = SharedResult(produce, fresh_for=30, clock=clock)
        waiting = [asyncio.ensure_future(shared()) for _ in range(3)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # a viewer who leaves stops nobody else's answer
        gate.set()
        assert await asyncio.gather(*waiting[1:]) == [1, 1]
        clock.now += 29
        assert await shared() == 1 and runs == [1]
        clock.now += 2
        assert await shared() == 2 and runs == [1, 2]

    asyncio.run(scenario())


def test_a_failed_run_is_not_kept() -> None:
    calls: list[str] = []

    async def scenario() -> None:
        async def produce() -> str:
            calls.append("run")
            if len(calls) == 1:
                raise ExternalFailure("the daemon did not answer")
            return "fine"

        shared = SharedResult(produce, fresh_for=30)
        with pytest.raises(ExternalFailure):
            await shared()
        assert await shared() == "fine"

    asyncio.run(scenario())


def test_the_health_check_runs_the_doctor_on_the_daemons_status(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = load_config(init_fleet(tmp_path_factory.mktemp("health") / "fleet"))
    services = open_services(config, actor="test")
    asked: list[str] = []

    async def status() -> dict[str, Any]:
        asked.append("status")
        await asyncio.sleep(0.05)
        return {"daemon": {"running": False}}

    check = health_check(config, services, status, resolve=lambda name: [],
                         clock=lambda: ClockReading(True, "a test clock"))

    async def scenario() -> None:
        first, second = await asyncio.gather(check(), check())
        assert first is second and asked == ["status"]
        assert first.daemon == {"running": False, "pid": None}
        names = [c.name for c in first.checks]
        assert f"port {config.edge.https_port} (https)" in names and "clock" in names
        assert next(c for c in first.checks if c.name == "clock").status.value == "pass"
        assert await check() is first

    asyncio.run(scenario())


def test_runtime_facts_carry_the_runtime_the_host_and_the_nodes() -> None:
    caps = [Capability("sandbox", True, "bubblewrap"), Capability("storage", True, "directories")]
    info = DaemonInfo(pid=1, started_at=50.0, root="/srv/fleet", capabilities=caps,
                      runtime=RuntimeReport("local", Capabilities("bubblewrap", True, False, False), caps[:1]))

    async def nodes() -> list[NodeInfo]:
        return [NodeInfo("this host", "127.0.0.1", True, "ready", 2, 512)]

    async def away() -> list[NodeInfo]:
        raise ExternalFailure("Nomad did not answer")

    facts = asyncio.run(runtime_facts(info, nodes)())
    assert facts["runtime"]["driver"] == "local" and facts["runtime"]["isolation"] == "bubblewrap"
    assert facts["capabilities"][1] == {"name": "storage", "available": True, "detail": "directories"}
    assert facts["nodes"] == [{"name": "this host", "address": "127.0.0.1", "healthy": True, "status": "ready",
                               "instances": 2, "free_memory_mb": 512, "home": None}]
    assert facts["nodes_problem"] is None and facts["started_at"] == 50.0
    unknown = asyncio.run(runtime_facts(info, away)())
    assert unknown["nodes"] is None and unknown["nodes_problem"] == "Nomad did not answer"


def test_the_status_is_read_from_the_control_app_as_the_fleets_own_user() -> None:
    seen: list[dict[str, str]] = []
    answers = [JSONResponse({"daemon": {"running": True, "pid": 7}}),
               JSONResponse({"error": "daemon_not_running", "message": "shutting down", "hint": None}, 503)]

    async def status(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return answers.pop(0)

    read = status_from(Starlette(routes=[Route("/v1/status", status)]))
    assert asyncio.run(read()) == {"daemon": {"running": True, "pid": 7}}
    assert "x-fleet-principal" not in seen[0]  # no Discord user: the whole fleet
    with pytest.raises(DaemonNotRunning, match="shutting down"):
        asyncio.run(read())
