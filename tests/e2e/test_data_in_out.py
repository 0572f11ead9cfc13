"""A tenant's data in and out through the CLI and a real daemon: a world zip imported into a running
instance lands owned by the instance's uid while it keeps running; the export holds it back, with the
instance's options but not its licence or admin password."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from tests.support.fleets import fleet_up_with
from tests.support.harness import FleetHarness

pytestmark = pytest.mark.e2e

WORLD = {"mine/world.json": b'{"id": "mine", "title": "Mine"}', "mine/data/actors.db": b"{}\n",
         "mine/scenes/map.webp": os.urandom(2000)}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]):  # noqa: ANN201
    yield from fleet_up_with(tmp_path_factory.mktemp("data"), "local", release_zips["node"])


def test_a_world_imported_into_a_running_instance_is_its_own_and_comes_back_in_the_export(
        fleet: FleetHarness, tmp_path: Path) -> None:
    fleet.cli("instance", "create", "dana", "--release", "13.345")
    before = fleet.wait_state("dana", "running")
    world_zip = tmp_path / "mine.zip"
    with zipfile.ZipFile(world_zip, "w") as zf:
        for name, body in WORLD.items():
            zf.writestr(name, body)

    done = fleet.cli("instance", "import", "dana", str(world_zip), "--into", "Data/worlds", "--json").json()
    assert (done["files"], done["replaced"], done["restarted"]) == (3, 0, False)
    assert done["snapshot"].startswith("pre-import-")
    after = fleet.instance("dana")
    assert after["state"] == "running" and after["restarts"] == before["restarts"]  # it kept running
    assert after["pid"] == before["pid"]
    assert after["uid"] not in (None, 0) or os.geteuid() != 0  # as root, the instance has a uid of its own
    world = Path(after["data_dir"], "Data", "worlds", "mine")
    uid = after["uid"] if after["uid"] is not None else os.geteuid()
    for path in [world, *world.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, uid), path
    assert (world / "scenes" / "map.webp").read_bytes() == WORLD["mine/scenes/map.webp"]

    again = fleet.cli("instance", "import", "dana", str(world_zip), "--into", "Data/worlds", check=False)
    assert again.code == 4 and "already exist" in again.err and "--replace" in again.err
    outside = fleet.cli("instance", "import", "dana", str(world_zip), "--into", "Config", check=False)
    assert outside.code == 2 and "not under Data" in outside.err
    events = fleet.cli("events", "--instance", "dana", "--json").json()
    assert [e["outcome"] for e in events if e["action"] == "instance.import"] == ["ok"]

    # A folder is sent as a zip of its files.
    folder = tmp_path / "module"
    (folder / "my-module").mkdir(parents=True)
    (folder / "my-module" / "module.json").write_text('{"id": "my-module"}')
    fleet.cli("instance", "import", "dana", str(folder), "--into", "Data/modules")
    assert Path(after["data_dir"], "Data", "modules", "my-module", "module.json").stat().st_uid == uid

    out = tmp_path / "dana.zip"
    fleet.cli("instance", "export", "dana", "-o", str(out))
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert zf.read("Data/worlds/mine/scenes/map.webp") == WORLD["mine/scenes/map.webp"]
    assert {f"Data/worlds/{n}" for n in WORLD} | {"Data/modules/my-module/module.json",
                                                   "Config/options.json"} <= names
    assert not names & {"Config/license.json", "Config/admin.txt"}
    assert all(n.startswith(("Data/", "Config/")) and not n.startswith("Data/shared/") for n in names)
    assert fleet.instance("dana")["state"] == "running"


def test_a_world_replaced_while_it_runs_is_replaced_stopped_and_started_again(fleet: FleetHarness,
                                                                             tmp_path: Path) -> None:
    fleet.cli("instance", "create", "erin", "--release", "13.345")
    fleet.wait_state("erin", "running")
    world_zip = tmp_path / "mine.zip"
    with zipfile.ZipFile(world_zip, "w") as zf:
        for name, body in WORLD.items():
            zf.writestr(name, body)
    fleet.cli("instance", "import", "erin", str(world_zip), "--into", "Data/worlds")
    with zipfile.ZipFile(world_zip, "w") as zf:
        zf.writestr("mine/data/actors.db", b"replaced\n")
    done = fleet.cli("instance", "import", "erin", str(world_zip), "--into", "Data/worlds", "--replace",
                     "--json").json()
    assert (done["replaced"], done["restarted"]) == (1, True)
    after = fleet.wait_state("erin", "running")
    assert Path(after["data_dir"], "Data/worlds/mine/data/actors.db").read_bytes() == b"replaced\n"
    snapshot = fleet.root / "snapshots" / "erin" / done["snapshot"] / "Data/worlds/mine/data/actors.db"
    assert snapshot.read_bytes() == b"{}\n"  # what it replaced is kept
