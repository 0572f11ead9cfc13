"""The idle watch's rounds on a real fleet database: when it marks an instance idle, when it asks for a
sleep, and when it leaves the edge alone. The supervisor is a stand-in that reports users and records
the sleeps asked for (its own sleeping is tested in test_supervisor.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import update

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.services.idle_watch import IdleRecords, IdleWatch
from foundry_fleet.services.init import init_fleet
from foundry_fleet.store.models import Instance
from foundry_fleet.wiring.services import FleetServices, open_services
from tests.support.foundry_standin import build_release_zip


@dataclass
class Watched:
    healthy: bool = True
    users: int | None = 0


@dataclass
class StandInSupervisor:
    instances: dict[str, Watched] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def sleep(self, name: str, why: str) -> None:
        self.asked.append((name, why))


class Edge:
    def __init__(self) -> None:
        self.counts: dict[str, int] | None = {}
        self.fails = False
        self.calls = 0

    async def __call__(self) -> dict[str, int] | None:
        self.calls += 1
        if self.fails:
            raise ExternalFailure("Caddy's admin endpoint did not answer")
        return self.counts


@pytest.fixture
def fleet(tmp_path: Path) -> FleetServices:
    services = open_services(load_config(init_fleet(tmp_path / "fleet")), actor="test")
    services.releases.add(str(build_release_zip(tmp_path, ReleaseLayout.NODE, 13, 345)))
    for port, name in enumerate(("alice", "bob"), start=1):
        services.provisioning.create("cli:admin", name, "13.345", start=False)
        with services.sessions.begin() as s:
            s.execute(update(Instance).where(Instance.name == name).values(
                state="running", desired="running", address=f"127.0.0.1:{port}"))
    return services


def _idle_since(fleet: FleetServices, name: str) -> float | None:
    return fleet.instances.get(name).idle_since


def _watch(fleet: FleetServices, sup: StandInSupervisor, edge: Edge, now: list[float], fleet_idle_after: float | None,
           busy: set[str] | None = None) -> IdleWatch:
    return IdleWatch(sup, IdleRecords(fleet.sessions), edge, fleet_idle_after, every=1.0,  # type: ignore[arg-type]
                     clock=lambda: now[0], busy=lambda name: "being backed up" if name in (busy or set()) else None)


def test_an_instance_nobody_uses_is_marked_idle_once_and_asked_to_sleep_after_its_idle_time(
        fleet: FleetServices) -> None:
    sup = StandInSupervisor({"alice": Watched(users=0), "bob": Watched(users=2)})
    edge, now = Edge(), [1000.0]
    watch = _watch(fleet, sup, edge, now, fleet_idle_after=60.0)
    assert asyncio.run(watch.check()) == []
    assert _idle_since(fleet, "alice") == 1000.0 and _idle_since(fleet, "bob") is None
    now[0] = 1059.0
    assert asyncio.run(watch.check()) == [] and _idle_since(fleet, "alice") == 1000.0  # kept, not moved on
    now[0] = 1060.0
    assert asyncio.run(watch.check()) == ["alice"]
    assert sup.asked == [("alice", "idle for 1min: no players, no visits")]
    # A player comes back before the sleep: the clock starts over.
    sup.instances["alice"].users = 1
    now[0] = 1061.0
    assert asyncio.run(watch.check()) == [] and _idle_since(fleet, "alice") is None


def test_a_request_under_way_at_the_edge_or_an_unanswered_status_is_never_idle(fleet: FleetServices) -> None:
    sup = StandInSupervisor({"alice": Watched(users=0), "bob": Watched(users=None)})
    edge, now = Edge(), [0.0]
    edge.counts = {"127.0.0.1:1": 1, "127.0.0.1:2": 0}  # alice has an open websocket on the join screen
    watch = _watch(fleet, sup, edge, now, fleet_idle_after=1.0)
    for now[0] in (10.0, 20.0, 30.0):
        assert asyncio.run(watch.check()) == []
    assert _idle_since(fleet, "alice") is None and _idle_since(fleet, "bob") is None
    # The edge cannot say: nobody is taken for idle, and an idle mark already made goes.
    edge.counts = {}
    assert asyncio.run(watch.check()) == [] and _idle_since(fleet, "alice") == 30.0
    edge.fails = True
    now[0] = 40.0
    assert asyncio.run(watch.check()) == [] and _idle_since(fleet, "alice") is None and sup.asked == []


def test_instances_that_never_sleep_cost_no_edge_call_and_a_busy_one_is_not_put_to_sleep(
        fleet: FleetServices) -> None:
    sup = StandInSupervisor({"alice": Watched(), "bob": Watched()})
    edge, now = Edge(), [0.0]
    off = _watch(fleet, sup, edge, now, fleet_idle_after=None)
    assert asyncio.run(off.check()) == [] and edge.calls == 0
    # Its own setting wins over the fleet's off; an operation under way on it holds the sleep back.
    fleet.desired.set_idle_after("cli:admin", "alice", "5s")
    busy = _watch(fleet, sup, edge, now, fleet_idle_after=None, busy={"alice"})
    asyncio.run(busy.check())
    now[0] = 10.0
    assert asyncio.run(busy.check()) == [] and edge.calls == 2 and _idle_since(fleet, "alice") == 0.0
    free = _watch(fleet, sup, edge, now, fleet_idle_after=None)
    assert asyncio.run(free.check()) == ["alice"]
    assert _idle_since(fleet, "bob") is None
    # An unhealthy (just re-attached, or failing its checks) instance is left as it is.
    fleet.desired.set_idle_after("cli:admin", "bob", "5s")
    sup.instances["bob"].healthy = False
    assert "bob" not in asyncio.run(free.check())
