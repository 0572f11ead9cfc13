"""Ownership through the control API, as the bot calls it: a tenant acts on their own instances only,
an admin (by role or by the config's admin_users) on all; suspension holds against the tenant."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from foundry_fleet.api.endpoints import PRINCIPAL_HEADER
from tests.support.harness import FleetHarness
from tests.support.offline import create_offline

pytestmark = pytest.mark.e2e
ALICE, BOB, BOSS, ROOT_ADMIN = "111111111111111111", "222222222222222222", "333333333333333333", "444444444444444444"


def as_user(fleet: FleetHarness, user: str, role: str = "") -> httpx.Client:
    header = f"{user};{role}" if role else user
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(fleet.root / "run" / "control.sock")),
                        base_url="http://fleet.invalid", headers={PRINCIPAL_HEADER: header}, timeout=60)


def test_tenants_reach_only_their_own_instances_and_admins_reach_all(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.edit_config("admin_users = []", f'admin_users = ["{ROOT_ADMIN}"]')
    fleet.cli("release", "add", str(release_zips["node"]))
    for name, owner in (("alice", ALICE), ("bob", BOB)):
        create_offline(fleet, name, owner=owner)
    fleet.up()
    alice, boss, root_admin = as_user(fleet, ALICE), as_user(fleet, BOSS, "admin"), as_user(fleet, ROOT_ADMIN)

    assert [i["name"] for i in alice.get("/v1/instances").json()] == ["alice"]
    assert alice.get("/v1/instances/alice").json()["owner"] == ALICE
    for method, path in (("GET", "/v1/instances/bob"), ("POST", "/v1/instances/bob/start"),
                         ("GET", "/v1/instances/bob/logs"), ("GET", "/v1/instances/bob/backups"),
                         ("POST", "/v1/instances/bob/restore")):
        r = alice.request(method, path, json={"snapshot": "x"} if path.endswith("restore") else None)
        assert r.status_code == 404 and "no instance named bob" in r.json()["message"], (method, path, r.text)
    for method, path, body in (("POST", "/v1/instances", {"name": "mine", "release": "13.345"}),
                               ("DELETE", "/v1/instances/alice", None),
                               ("POST", "/v1/instances/alice/suspend", {}),
                               ("POST", "/v1/instances/alice/move", {"node": "node-b"}),
                               ("GET", "/v1/edge/config", None), ("GET", "/v1/events", None),
                               ("POST", "/v1/reload", None)):
        r = alice.request(method, path, json=body)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text)

    started = alice.post("/v1/instances/alice/start", params={"wait": "true"}).json()
    assert started["state"] == "running"
    assert alice.get("/v1/instances/alice/logs", params={"lines": 5}).status_code == 200
    assert alice.post("/v1/instances/alice/backups", json={"label": "mine"}).status_code == 201
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["actor"] == f"discord:{ALICE}" and e["action"] == "instance.start" for e in events)

    assert sorted(i["name"] for i in boss.get("/v1/instances").json()) == ["alice", "bob"]
    assert sorted(i["name"] for i in root_admin.get("/v1/instances").json()) == ["alice", "bob"]
    suspended = boss.post("/v1/instances/alice/suspend", json={"reason": "unpaid"}).json()
    assert suspended["state"] == "stopped" and suspended["suspended"] == "unpaid"
    refused = alice.post("/v1/instances/alice/start")
    assert refused.status_code == 409 and "suspended: unpaid" in refused.json()["message"]
    resumed = root_admin.post("/v1/instances/alice/resume").json()
    assert resumed["state"] == "running" and resumed["suspended"] is None
    # The same through the CLI (the fleet's own user is always an admin).
    assert "suspended (maintenance), stopped" in fleet.cli("instance", "suspend", "alice", "--reason", "maintenance", "--yes").out
    assert fleet.cli("instance", "start", "alice", check=False).code == 4
    assert "resumed, running" in fleet.cli("instance", "resume", "alice").out

    forged = httpx.Client(transport=httpx.HTTPTransport(uds=str(fleet.root / "run" / "control.sock")),
                          base_url="http://fleet.invalid", headers={PRINCIPAL_HEADER: "not-an-id;admin"})
    assert forged.get("/v1/instances").status_code == 400
