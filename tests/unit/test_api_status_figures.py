"""`/v1/status`, `/v1/instances` and `/v1/instances/{name}` carry each instance's figures (uptime,
players, memory, CPU, newest snapshot) from the same cards the web panel shows, read once for the lot."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import StarletteDeprecationWarning

from foundry_fleet.api.app import Reads, create_app
from foundry_fleet.domain.errors import NotFound
from foundry_fleet.services.access import Access
from foundry_fleet.services.daemon_info import DaemonInfo
from foundry_fleet.services.panel_cards import CardSources, PanelCards
from foundry_fleet.domain.instance import DAEMON_FIGURES as FIGURES
from foundry_fleet.services.views import InstanceView

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW = 1_800_000_000.0
MIB = 1024 * 1024


def view(name: str, state: str, **more: Any) -> InstanceView:
    fields: dict[str, Any] = dict(
        name=name, state=state, desired="running", state_reason="", release="13.345", port=30001,
        host=f"{name}.games.example.org", hosts=[f"{name}.games.example.org"], url=f"https://{name}.games.example.org/",
        data_dir="/d", install_dir="/i", pid=None, restarts=0, owner="111", uid=None, created_at=NOW - 86400)
    return InstanceView(**{**fields, **more})


@dataclass(frozen=True)
class Point:
    at: float
    memory_bytes: int
    cpu_percent: float | None
    memory_limit_bytes: int | None


class Samples:
    def latest(self, name: str) -> Point | None:
        return Point(NOW, 312 * MIB, 7.5, 2048 * MIB) if name == "alice" else None

    def history(self, name: str) -> list[Point]:
        return []


class Instances:
    def __init__(self, views: list[InstanceView]) -> None:
        self.views = views
        self.reads = 0

    def list(self) -> list[InstanceView]:
        self.reads += 1
        return list(self.views)

    def get(self, name: str) -> InstanceView:
        self.reads += 1
        for v in self.views:
            if v.name == name:
                return v
        raise NotFound(f"no instance {name}")


class NoHostnames:
    def known_hosts(self) -> set[str]:
        return set()

    def conflicts(self) -> list[Any]:
        return []


FLEET = [view("alice", "running", pid=4242, started_at=NOW - 3600),
         view("bob", "failed", state_reason="crashed 5 times in 10 min"),
         view("carol", "stopped", suspended="unpaid")]


def control_api(instances: Instances) -> TestClient:
    nothing: Any = None
    access = Access(instances, frozenset())  # type: ignore[arg-type]
    cards = PanelCards(access, CardSources(players=lambda n: 3 if n == "alice" else None, resources=Samples(),
                                           newest_snapshots=lambda: {"alice": NOW - 720},
                                           certificate_problems=lambda: None), clock=lambda: NOW)
    reads = Reads(instances, NoHostnames(), nothing, nothing, access)  # type: ignore[arg-type]
    app = create_app(reads, nothing, nothing, nothing, DaemonInfo(pid=1, started_at=NOW, root="/fleet"),
                     figures=cards.figures)
    return TestClient(app, base_url="http://fleet.invalid")


def test_status_carries_the_figures_of_every_instance_from_one_read() -> None:
    instances = Instances(FLEET)
    status = control_api(instances).get("/v1/status").json()
    assert instances.reads == 1
    by_name = {i["name"]: i for i in status["instances"]}
    assert {k: by_name["alice"][k] for k in FIGURES} == {
        "uptime_s": 3600.0, "players": 3, "memory_bytes": 312 * MIB, "memory_limit_bytes": 2048 * MIB,
        "cpu_percent": 7.5, "last_backup_at": NOW - 720}
    assert {k: by_name["bob"][k] for k in FIGURES} == dict.fromkeys(FIGURES)
    assert by_name["bob"]["state_reason"] == "crashed 5 times in 10 min"
    assert by_name["carol"]["suspended"] == "unpaid"
    # Added, not renamed: what programs read before is still there.
    assert {"sleeps_after", "idle_since", "pid", "url", "state", "state_reason"} <= set(by_name["alice"])


def test_instances_and_one_instance_carry_them_too_and_the_schema_names_them() -> None:
    api = control_api(Instances(FLEET))
    listed = {i["name"]: i for i in api.get("/v1/instances").json()}
    assert listed["alice"]["players"] == 3 and listed["carol"]["memory_bytes"] is None
    assert api.get("/v1/instances/alice").json()["memory_limit_bytes"] == 2048 * MIB
    schema = api.get("/openapi.json").json()
    one = schema["paths"]["/v1/instances/{name}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(FIGURES) <= set(one["properties"]) and "sleeps_after" in one["properties"]
