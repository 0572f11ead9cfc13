"""instance upgrade: a healthy release is kept; one that is not is rolled back, data and all."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

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


def test_upgrade_then_a_failed_upgrade_is_rolled_back(fleet: FleetHarness, release_zips: dict[str, Path],
                                                     tmp_path: Path) -> None:
    upgrade_then_roll_back(fleet, release_zips, tmp_path)


def upgrade_then_roll_back(fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path) -> dict:
    """Upgrade alice to 13.347, then to a broken 13.400 that is rolled back; returns alice's instance."""
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
