"""instance upgrade: a healthy release is kept; one that is not is rolled back, data and all."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness

pytestmark = pytest.mark.e2e


def broken_release(tmp_path: Path) -> Path:
    """A release whose server dies at once, after scribbling on the data it was given."""
    z = tmp_path / "FoundryVTT-Node-13.400.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("package.json", json.dumps({"name": "foundryvtt", "version": "13.400",
                                                "release": {"generation": 13, "build": 400}}))
        zf.writestr("main.js", "const fs = require('fs');\n"
                               "const dp = process.argv.find(a => a.startsWith('--dataPath=')).slice(11);\n"
                               "fs.writeFileSync(dp + '/Data/world.db', 'migrated by 13.400');\n"
                               "console.log('13.400 cannot start'); process.exit(1);\n")
    return z


@pytest.fixture(scope="module")
def upgrades(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[FleetHarness]:
    """One fleet for the module, up, holding 13.345, 13.347 and the broken 13.400; each test makes its
    own instance."""
    tmp = tmp_path_factory.mktemp("upgrades")
    fleet = make_fleet(tmp)
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.cli("release", "add", str(release_zips["wrapped"]))  # 13.347
        fleet.cli("release", "add", str(broken_release(tmp)))
        fleet.up()
        yield fleet
    finally:
        fleet.tear_down()


def _instance_with_a_world(fleet: FleetHarness, name: str) -> tuple[dict, Path]:
    inst = fleet.cli("instance", "create", name, "--release", "13.345", "--json").json()["instance"]
    world = Path(inst["data_dir"], "Data", "world.db")
    world.write_text("campaign state")
    return inst, world


def _upgrade_outcomes(fleet: FleetHarness, name: str) -> list[str]:
    return [e["outcome"] for e in fleet.cli("events", "--instance", name, "--json").json()
            if e["action"] == "instance.upgrade"]


def test_an_upgrade_to_a_healthy_release_is_kept_after_a_snapshot(upgrades: FleetHarness) -> None:
    inst, world = _instance_with_a_world(upgrades, "ann")
    up = upgrades.cli("instance", "upgrade", "ann", "--release", "13.347", "--json").json()
    assert up["upgraded"] is True and up["instance"]["release"] == "13.347"
    assert up["snapshot"].startswith("pre-upgrade-")
    assert upgrades.get_from("ann", "/-/api/status").json()["version"] == "13.347"
    assert world.read_text() == "campaign state"
    assert _upgrade_outcomes(upgrades, "ann") == ["ok"]


def test_an_upgrade_to_a_release_that_does_not_start_is_rolled_back_data_and_all(upgrades: FleetHarness) -> None:
    inst, world = _instance_with_a_world(upgrades, "bert")
    bad = upgrades.cli("instance", "upgrade", "bert", "--release", "13.400", check=False)
    assert bad.code == 1 and "rolled back to 13.345" in bad.err
    after = upgrades.instance("bert")
    assert after["release"] == "13.345" and after["state"] == "running"
    assert upgrades.get_from("bert", "/-/api/status").json()["version"] == "13.345"
    assert world.read_text() == "campaign state", "the data the broken release touched is rolled back too"
    assert _upgrade_outcomes(upgrades, "bert") == ["failed"]


def test_an_upgrade_to_the_release_it_runs_is_refused(upgrades: FleetHarness) -> None:
    _instance_with_a_world(upgrades, "cleo")
    same = upgrades.cli("instance", "upgrade", "cleo", "--release", "13.345", check=False)
    assert same.code == 4 and "already runs" in same.err
    assert _upgrade_outcomes(upgrades, "cleo") == []


def test_an_upgrade_to_an_unknown_release_is_refused_and_the_instance_keeps_running(upgrades: FleetHarness) -> None:
    inst, _world = _instance_with_a_world(upgrades, "dora")
    missing = upgrades.cli("instance", "upgrade", "dora", "--release", "13.999", check=False)
    assert missing.code == 3
    after = upgrades.instance("dora")
    assert after["state"] == "running" and after["pid"] == inst["pid"] and after["release"] == "13.345"


def upgrade_then_roll_back(fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path) -> dict:
    """Upgrade alice to 13.347, then to a broken 13.400 that is rolled back; returns alice's instance.
    The whole path in one go, for the storage drivers' own tests (tests/e2e/test_zfs_backups.py)."""
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.cli("release", "add", str(release_zips["wrapped"]))  # 13.347
    fleet.cli("release", "add", str(broken_release(tmp_path)))
    fleet.up()
    inst = fleet.cli("instance", "create", "alice", "--release", "13.345", "--json").json()["instance"]
    world = Path(inst["data_dir"], "Data", "world.db")
    world.write_text("campaign state")

    up = fleet.cli("instance", "upgrade", "alice", "--release", "13.347", "--json").json()
    assert up["upgraded"] is True and up["instance"]["release"] == "13.347"
    assert fleet.get(inst["port"], "/-/api/status").json()["version"] == "13.347"
    assert up["snapshot"].startswith("pre-upgrade-")

    bad = fleet.cli("instance", "upgrade", "alice", "--release", "13.400", check=False)
    assert bad.code == 1 and "rolled back to 13.347" in bad.err
    after = fleet.instance("alice")
    assert after["release"] == "13.347" and after["state"] == "running"
    assert fleet.get(inst["port"], "/-/api/status").json()["version"] == "13.347"
    assert world.read_text() == "campaign state", "the data the broken release touched is rolled back too"
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert [e["outcome"] for e in events if e["action"] == "instance.upgrade"] == ["ok", "failed"]

    same = fleet.cli("instance", "upgrade", "alice", "--release", "13.347", check=False)
    assert same.code == 4 and "already runs" in same.err
    missing = fleet.cli("instance", "upgrade", "alice", "--release", "13.999", check=False)
    assert missing.code == 3 and fleet.instance("alice")["state"] == "running"
    return inst
