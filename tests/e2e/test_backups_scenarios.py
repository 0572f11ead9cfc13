"""Backups through the CLI and the daemon: take, list, plan, restore a running instance, repair on start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import FleetHarness, pids_with_arg

pytestmark = pytest.mark.e2e


def test_backup_now_list_plan_and_restore_a_running_instance(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    inst = fleet.cli("instance", "create", "alice", "--release", "13.345", "--json").json()["instance"]
    world = Path(inst["data_dir"], "Data", "world.db")
    world.write_text("session 1")

    snap = fleet.cli("backup", "now", "alice", "--label", "before-session-2", "--json").json()
    assert snap["name"].startswith("before-session-2-")
    world.write_text("session 2 went badly")

    listed = fleet.cli("backup", "list", "alice", "--json").json()
    assert snap["name"] in [s["name"] for s in listed]

    assert "30d=>1d" in fleet.cli("backup", "plan", "alice").out
    fleet.cli("backup", "plan", "alice", "2d=>1h")
    assert fleet.cli("backup", "plan", "alice").out.strip() == "2d=>1h"
    bad = fleet.cli("backup", "plan", "alice", "1h=>2d", check=False)
    assert bad.code == 2 and "shorter than the interval" in bad.err

    out = fleet.cli("backup", "restore", "alice", snap["name"], "--yes").out
    assert "kept as snapshot safety-" in out
    assert world.read_text() == "session 1"
    after = fleet.instance("alice")
    assert after["state"] == "running" and after["pid"] != inst["pid"]
    assert pids_with_arg(f"--port={inst['port']}") == [after["pid"]]
    safety = [s["name"] for s in fleet.cli("backup", "list", "alice", "--json").json() if s["name"].startswith("safety-")]
    assert len(safety) == 1
    kept = fleet.root / "snapshots" / "alice" / safety[0] / "Data" / "world.db"
    assert kept.read_text() == "session 2 went badly"
    actions = [e["action"] for e in fleet.cli("events", "--instance", "alice", "--json").json()]
    assert "backup.restore" in actions and "backup.snapshot" in actions

    missing = fleet.cli("backup", "restore", "alice", "no-such", "--yes", check=False)
    assert missing.code == 3 and fleet.instance("alice")["state"] == "running"


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
    fleet.up()
    inst = fleet.cli("instance", "create", "carol", "--release", "13.345", "--no-start", "--json").json()["instance"]
    fleet.stop_daemons()
    data = Path(inst["data_dir"])
    (data / "Data" / "world.db").write_text("restored copy")
    # The restore had moved the live data aside and the complete copy was about to take its place.
    data.rename(data.parent / "data.restore-new")
    (data.parent / "data.restore-old").mkdir()
    fleet.up()
    fleet.cli("instance", "start", "carol")
    assert (data / "Data" / "world.db").read_text() == "restored copy"
    assert not (data.parent / "data.restore-new").exists() and not (data.parent / "data.restore-old").exists()
