"""The local runtime's end-to-end scenarios, on the podman runtime: one fleet for the module, every
instance in its own container, players through real Caddy.

The scenarios that do not depend on how an instance is run are the local runtime's own test functions,
imported: pytest collects them here too, where `running`, `upgrades` and `backups` are this module's
podman fleet. Below them, what only a container shows: its name, labels and image, the port published
on loopback only, the same container adopted after the daemon was killed, one that died meanwhile
started again and one the fleet does not know removed, and one container per instance (none left
beside it) after a crash, a rolled back upgrade or a restore, and none after a delete; the last two
run the local runtime's scenario first, then look at the containers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import test_backups_scenarios as backups_scenarios
from tests.e2e import test_upgrade_scenarios as upgrade_scenarios
from tests.e2e.test_fleet_scenarios import (  # noqa: F401 (collected here, on podman)
    Running,
    create,
    create_alice_and_bob,
    test_a_crash_loop_ends_in_failed_leaving_the_neighbour_alone_until_started_by_hand,
    test_a_killed_server_is_back_within_seconds_with_a_new_pid,
    test_an_instance_cannot_see_another_tenants_data,
    test_an_instance_reads_shared_assets_but_cannot_write_them,
    test_an_instance_runs_in_its_own_pid_namespace,
    test_create_answers_with_a_running_instance_behind_the_edge,
    test_delete_keeps_the_data_aside_and_a_new_instance_of_that_name_starts_empty,
    test_each_instance_runs_as_its_own_uid,
    test_foundrys_files_are_written_for_the_edge_and_secrets_are_private,
    test_logs_show_the_servers_output,
    test_stop_start_and_restart,
)
from tests.e2e.test_upgrade_scenarios import (  # noqa: F401 (collected here, on podman)
    broken_release,
    test_an_upgrade_to_a_healthy_release_is_kept_after_a_snapshot,
)
from tests.support.edge_client import https, local_ca, wss
from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness, wait_until
from tests.support.podman import FLEET_LABEL, INSTANCE_LABEL, podman_missing

MISSING = podman_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[Running]:
    """One podman fleet for the module, up, holding 13.345, 13.347 and the broken 13.400, with alice
    (licence, owner, chosen password) and bob running; each other test makes its own instances."""
    tmp = tmp_path_factory.mktemp("podman-scenarios")
    fleet = make_fleet(tmp, runtime="podman")
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.cli("release", "add", str(release_zips["wrapped"]))  # 13.347
        fleet.cli("release", "add", str(broken_release(tmp)))  # 13.400
        fleet.up()
        yield create_alice_and_bob(fleet, tmp)
    finally:
        fleet.tear_down()
    assert fleet.containers() == [], "the fleet's containers outlived its tear-down"


@pytest.fixture(scope="module")
def upgrades(running: Running) -> FleetHarness:
    return running.fleet


@pytest.fixture(scope="module")
def backups(running: Running) -> FleetHarness:
    return running.fleet


def _edge(fleet: FleetHarness) -> tuple[int, Path]:
    return fleet.settings().edge.https_port, local_ca(fleet.root)


def _version_through_the_edge(fleet: FleetHarness, name: str) -> str | None:
    """The release the instance says it runs, asked through Caddy; None while the edge does not pass the
    request on (an instance back from a crash is running a moment before the edge has reloaded)."""
    port, ca = _edge(fleet)
    try:
        r = https(port, f"{name}.localhost", "/-/api/status", ca)
    except httpx.HTTPError:
        return None
    return r.json()["version"] if r.status_code == 200 else None


def _served_through_the_edge(fleet: FleetHarness, name: str, version: str = "13.345") -> None:
    wait_until(lambda: _version_through_the_edge(fleet, name) == version, 10, f"the edge to serve {name} {version}")


def _the_container_of(fleet: FleetHarness, name: str) -> str:
    """The id of the one container the fleet keeps for `name`, running (fails if there are more, or
    none, or it does not run)."""
    found = fleet.containers(name)
    assert [c.state for c in found] == ["running"], f"{name} has {len(found)} containers: {found}"
    return found[0].id


# --- what only a container shows ------------------------------------------------------------------------


def test_each_instance_is_a_container_named_and_labelled_for_the_fleet_published_on_loopback_only(
        running: Running) -> None:
    fleet = running.fleet
    running.alice_running()
    by_instance = {c.instance: c for c in fleet.containers()}
    assert {"alice", "bob"} <= set(by_instance)
    for name in ("alice", "bob"):
        c = by_instance[name]
        assert c.name == f"foundry-fleet-{fleet.fleet_id}-{name}" and c.state == "running", c
        assert c.labels[FLEET_LABEL] == fleet.fleet_id and c.labels[INSTANCE_LABEL] == name
        # No image is configured (and no registry reachable): the one built from the host's node, shared.
        assert c.image.startswith("localhost/foundry-fleet/node:") and c.image == by_instance["alice"].image
        port = fleet.instance(name)["port"]
        bindings = fleet.podman.inspect(c.id)["HostConfig"]["PortBindings"]
        assert bindings == {f"{port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}, bindings
        _served_through_the_edge(fleet, name)
    https_port, ca = _edge(fleet)
    with wss(https_port, "alice.localhost", "/-/socket.io/", ca) as ws:
        ws.send("hello from a player")
        assert ws.recv(timeout=5) == "hello from a player"


def test_a_crashed_server_is_back_in_one_container_through_the_edge(running: Running) -> None:
    fleet = running.fleet
    before = running.alice_running()
    fleet.get(before["port"], "/-/__crash?code=9")
    back = wait_until(lambda: (r := fleet.instance("alice"))["state"] == "running"
                      and r["restarts"] > before["restarts"] and r, 20, "alice to come back")
    assert back["restarts"] == before["restarts"] + 1
    _served_through_the_edge(fleet, "alice")
    _the_container_of(fleet, "alice")  # the crashed one is not left beside it


def test_the_daemon_killed_leaves_the_containers_running_and_the_next_up_adopts_them(running: Running) -> None:
    """Players stay connected through it all. Meanwhile one container died (started again by the next
    `up`), and one with the fleet's labels appeared that no instance owns (removed by the next `up`)."""
    fleet = running.fleet
    before = running.alice_running()
    container = _the_container_of(fleet, "alice")
    bobs = _the_container_of(fleet, "bob")
    https_port, ca = _edge(fleet)
    with wss(https_port, "alice.localhost", "/-/socket.io/", ca) as ws:
        fleet.daemons[-1].send_signal(signal.SIGKILL)
        fleet.daemons[-1].wait()
        assert fleet.podman.inspect(container)["State"]["Running"] is True  # conmon keeps it
        ws.send("players stay connected")
        assert ws.recv(timeout=5) == "players stay connected"
        fleet.podman.run("kill", bobs)
        wait_until(lambda: not fleet.podman.inspect(bobs)["State"]["Running"], 10, "bob's container to die")
        stray = _start_a_container_the_fleet_does_not_know(fleet, container, "ghost")

        fleet.up()
        after = fleet.wait_state("alice", "running")
        assert after["restarts"] == before["restarts"]
        assert _the_container_of(fleet, "alice") == container, "adopted, not started twice"
        ws.send("and after the daemon is back")
        assert ws.recv(timeout=5) == "and after the daemon is back"
    fleet.wait_state("bob", "running")
    assert _the_container_of(fleet, "bob") != bobs
    _served_through_the_edge(fleet, "bob")
    wait_until(lambda: fleet.containers("ghost") == [], 10, "the unknown container to be removed")
    assert not fleet.podman.exists(stray)
    assert "instance.reattach" in _actions(fleet, "alice")
    assert "instance.lost" in _actions(fleet, "bob")
    reported = [e for e in fleet.cli("events", "--instance", "ghost", "--json").json()
                if e["action"] == "instance.strays"]
    assert len(reported) == 1 and f"foundry-fleet-{fleet.fleet_id}-ghost" in reported[0]["message"], reported


def _actions(fleet: FleetHarness, name: str) -> list[str]:
    return [e["action"] for e in fleet.cli("events", "--instance", name, "--json").json()]


def _start_a_container_the_fleet_does_not_know(fleet: FleetHarness, like: str, name: str) -> str:
    """A container labelled as the fleet's instance `name`, which the fleet has no record of (as a crash
    between starting a container and recording it leaves one), running the image `like` runs. Without an
    init, node as PID 1 ignores SIGTERM: the fleet removes it without waiting out a stop timeout."""
    image = fleet.podman.inspect(like)["ImageName"]  # node only: its command is node's
    out = fleet.podman.run("run", "-d", "--name", f"foundry-fleet-{fleet.fleet_id}-{name}",
                           "--label", f"{FLEET_LABEL}={fleet.fleet_id}", "--label", f"{INSTANCE_LABEL}={name}",
                           image, "node", "-e", "setInterval(() => {}, 1000)").stdout
    return out.strip()


def test_an_upgrade_that_does_not_start_is_rolled_back_to_one_container_behind_the_edge(running: Running) -> None:
    fleet = running.fleet
    upgrade_scenarios.test_an_upgrade_to_a_release_that_does_not_start_is_rolled_back_data_and_all(fleet)
    _the_container_of(fleet, "bert")  # the broken release's is gone
    _served_through_the_edge(fleet, "bert", "13.345")


def test_a_restored_instance_runs_in_one_new_container_behind_the_edge(running: Running) -> None:
    fleet = running.fleet
    backups_scenarios.test_a_running_instance_restored_runs_again_on_the_snapshot_and_its_data_is_kept_as_safety(
        fleet)
    _the_container_of(fleet, "carol")  # the one stopped for the restore is gone
    _served_through_the_edge(fleet, "carol")


def test_a_deleted_instance_leaves_no_container_and_its_data_is_archived(running: Running) -> None:
    fleet = running.fleet
    inst = create(fleet, "gus", "13.345")["instance"]
    _the_container_of(fleet, "gus")
    Path(inst["data_dir"], "Data", "world.db").write_text("precious")
    deleted = fleet.cli("instance", "delete", "gus", "--yes")
    kept = Path(deleted.out.split("data kept at ")[1].strip())
    assert (kept / "data" / "Data" / "world.db").read_text() == "precious"
    assert fleet.containers("gus") == []
