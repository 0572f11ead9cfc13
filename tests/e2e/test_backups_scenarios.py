"""Backups through the CLI and the daemon: take, list, plan, restore a running instance, repair on start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fleets import make_fleet
from tests.support.offline import create_offline
from tests.support.edge_client import https, local_ca, serves_certificate
from tests.support.harness import FleetHarness, pids_with_arg, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[FleetHarness]:
    """One fleet for the module, up; each test makes its own instance."""
    fleet = make_fleet(tmp_path_factory.mktemp("backups"))
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.up()
        yield fleet
    finally:
        fleet.tear_down()


def _instance_with_a_world(fleet: FleetHarness, name: str, *extra: str) -> tuple[dict, Path]:
    inst = fleet.cli("instance", "create", name, "--release", "13.345", "--json", *extra).json()["instance"]
    world = Path(inst["data_dir"], "Data", "world.db")
    world.write_text("session 1")
    return inst, world


def test_backup_now_takes_a_labelled_snapshot_that_is_listed(backups: FleetHarness) -> None:
    _instance_with_a_world(backups, "alice", "--no-start")  # a snapshot needs no running server
    snap = backups.cli("backup", "now", "alice", "--label", "before-session-2", "--json").json()
    assert snap["name"].startswith("before-session-2-")
    listed = backups.cli("backup", "list", "alice", "--json").json()
    assert snap["name"] in [s["name"] for s in listed]
    assert (backups.root / "snapshots" / "alice" / snap["name"] / "Data" / "world.db").read_text() == "session 1"
    actions = [e["action"] for e in backups.cli("events", "--instance", "alice", "--json").json()]
    assert "backup.snapshot" in actions


def test_a_backup_plan_is_shown_changed_and_checked(backups: FleetHarness) -> None:
    _instance_with_a_world(backups, "bob", "--no-start")
    assert "30d=>1d" in backups.cli("backup", "plan", "bob").out
    backups.cli("backup", "plan", "bob", "2d=>1h")
    assert backups.cli("backup", "plan", "bob").out.strip() == "2d=>1h"
    bad = backups.cli("backup", "plan", "bob", "1h=>2d", check=False)
    assert bad.code == 2 and "shorter than the interval" in bad.err
    assert backups.cli("backup", "plan", "bob").out.strip() == "2d=>1h"  # the bad one changed nothing


def test_a_running_instance_restored_runs_again_on_the_snapshot_and_its_data_is_kept_as_safety(
        backups: FleetHarness) -> None:
    inst, world = _instance_with_a_world(backups, "carol")
    snap = backups.cli("backup", "now", "carol", "--label", "before-session-2", "--json").json()
    world.write_text("session 2 went badly")
    out = backups.cli("backup", "restore", "carol", snap["name"], "--yes").out
    assert "kept as snapshot safety-" in out
    assert world.read_text() == "session 1"
    after = backups.instance("carol")
    assert after["state"] == "running" and after["pid"] != inst["pid"]
    assert pids_with_arg(f"--port={inst['port']}") == [after["pid"]]
    safety = [s["name"] for s in backups.cli("backup", "list", "carol", "--json").json()
              if s["name"].startswith("safety-")]
    assert len(safety) == 1
    kept = backups.root / "snapshots" / "carol" / safety[0] / "Data" / "world.db"
    assert kept.read_text() == "session 2 went badly"
    actions = [e["action"] for e in backups.cli("events", "--instance", "carol", "--json").json()]
    assert "backup.restore" in actions


def test_players_see_the_being_restored_page_through_the_edge_while_a_restore_runs(backups: FleetHarness) -> None:
    inst, world = _instance_with_a_world(backups, "fern")
    # Restored with the data, so the start after the restore takes a while, however fast this host is:
    # players reload the page meanwhile.
    Path(inst["data_dir"], "start-delay-ms").write_text("1500")
    port, host, ca = backups.settings().edge.https_port, inst["host"], local_ca(backups.root)
    wait_until(lambda: serves_certificate(port, host, ca), 20, f"{host}'s certificate")
    assert https(port, host, "/-/", ca).status_code == 200
    snap = backups.cli("backup", "now", "fern", "--json").json()["name"]

    seen: list[httpx.Response] = []
    done = threading.Event()

    def player() -> None:  # keeps reloading the game's page, as a player's browser would
        while not done.is_set():
            try:
                seen.append(https(port, host, "/-/", ca))
            except httpx.TransportError:
                pass  # a connection Caddy closed as it loaded a new config: a browser asks again
            time.sleep(0.02)

    reloading = threading.Thread(target=player)
    reloading.start()
    try:
        backups.cli("backup", "restore", "fern", snap, "--yes")
    finally:
        done.set()
        reloading.join()
    restoring = [r for r in seen if r.status_code == 503]
    assert restoring, [r.status_code for r in seen]
    assert all("This table is being restored" in r.text for r in restoring), restoring[0].text
    assert restoring[0].headers["retry-after"] == "30" and "<meta http-equiv=refresh content='30'>" in restoring[0].text
    assert https(port, host, "/-/", ca).status_code == 200 and world.read_text() == "session 1"


def test_restoring_an_unknown_snapshot_is_refused_and_the_instance_keeps_running(backups: FleetHarness) -> None:
    inst, world = _instance_with_a_world(backups, "dave")
    missing = backups.cli("backup", "restore", "dave", "no-such", "--yes", check=False)
    assert missing.code == 3
    after = backups.instance("dave")
    assert after["state"] == "running" and after["pid"] == inst["pid"] and world.read_text() == "session 1"


def test_the_daemon_takes_scheduled_snapshots(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    fleet.cli("instance", "create", "bob", "--release", "13.345", "--no-start")
    fleet.stop_daemons()
    fleet.up()  # its first round finds bob without a snapshot in the current slot
    fleet.cli("instance", "start", "bob")
    fleet.wait_state("bob", "running")
    snaps = fleet.cli("backup", "list", "bob", "--json").json()
    assert len(snaps) == 1 and snaps[0]["name"].endswith("0000Z"), snaps  # the current hour's slot


def test_an_interrupted_restore_is_finished_before_the_instance_starts(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    inst = create_offline(fleet, "carol")["instance"]
    data = Path(inst["data_dir"])
    (data / "Data" / "world.db").write_text("restored copy")
    # The restore had moved the live data aside and the complete copy was about to take its place.
    data.rename(data.parent / "data.restore-new")
    (data.parent / "data.restore-old").mkdir()
    fleet.up()
    fleet.cli("instance", "start", "carol")
    assert (data / "Data" / "world.db").read_text() == "restored copy"
    assert not (data.parent / "data.restore-new").exists() and not (data.parent / "data.restore-old").exists()


def test_a_snapshot_is_named_by_latest_or_a_prefix_only_it_has(backups: FleetHarness) -> None:
    from foundry_fleet.api.client import ControlClient

    _, world = _instance_with_a_world(backups, "emma", "--no-start")
    one = backups.cli("backup", "now", "emma", "--label", "week-one", "--json").json()["name"]
    world.write_text("session 2")
    two = backups.cli("backup", "now", "emma", "--label", "week-two", "--json").json()["name"]
    ambiguous = backups.cli("backup", "restore", "emma", "week", "--yes", check=False)
    assert ambiguous.code == 2 and one in ambiguous.err and two in ambiguous.err, ambiguous.err
    none = backups.cli("backup", "restore", "emma", "month", "--yes", check=False)
    assert none.code == 3 and "no snapshot named or starting with 'month'" in none.err
    world.write_text("session 3")
    assert f"restored {one} into emma" in backups.cli("backup", "restore", "emma", "week-o", "--yes").out
    assert world.read_text() == "session 1"
    # The control API resolves too (the bot and other clients send what the person typed).
    restored = ControlClient(backups.socket).restore("emma", "week-t")
    assert restored["snapshot"] == two and world.read_text() == "session 2"
    newest = backups.cli("backup", "list", "emma", "--json").json()[-1]["name"]
    assert newest.startswith("safety-")
    assert f"restored {newest} into emma" in backups.cli("backup", "restore", "emma", "latest", "--yes").out
