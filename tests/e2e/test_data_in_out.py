"""A tenant's data in and out through the CLI and a real daemon: a world zip imported into a running
instance lands owned by the instance's uid while it keeps running; the export holds it back, with the
instance's options but not its licence or admin password."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness, wait_until
from tests.support.releases import LocalHTTPS, Route

pytestmark = pytest.mark.e2e

WORLD = {"mine/world.json": b'{"id": "mine", "title": "Mine"}', "mine/data/actors.db": b"{}\n",
         "mine/scenes/map.webp": os.urandom(2000)}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path],
          https_server_session: LocalHTTPS) -> Iterator[FleetHarness]:
    h = make_fleet(tmp_path_factory.mktemp("data"))
    try:
        # Downloads from the test's own HTTPS server on loopback (what only tests allow).
        h.edit_config('allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com"]',
                      'allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com", "127.0.0.1"]')
        h.edit_config("[releases]\n", f'[releases]\nallow_private_addresses = true\n'
                                      f'extra_ca_file = "{https_server_session.cert}"\n')
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        yield h
    finally:
        h.tear_down()


def _world_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in files.items():
            zf.writestr(name, body)
    return path


def _snapshots(fleet: FleetHarness, name: str) -> list[str]:
    return [s["name"] for s in fleet.cli("backup", "list", name, "--json").json()]


def _exporting(fleet: FleetHarness, name: str) -> bool:
    return any(s.startswith("export-") for s in _snapshots(fleet, name))


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
    snapshots_before = _snapshots(fleet, "dana")
    fleet.cli("instance", "export", "dana", "-o", str(out))
    assert _snapshots(fleet, "dana") == snapshots_before  # the export's own snapshot is gone, no other
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


def test_a_zip_from_a_timed_link_is_downloaded_by_the_daemon_and_imported(fleet: FleetHarness, tmp_path: Path,
                                                                          https_server: LocalHTTPS) -> None:
    fleet.cli("instance", "create", "fern", "--release", "13.345", "--no-start")
    https_server.routes["/export/mine.zip"] = Route(body=_world_zip(tmp_path / "w.zip", WORLD).read_bytes())
    link = https_server.url("/export/mine.zip?verify=SECRET-TOKEN")
    done = fleet.cli("instance", "import", "fern", link, "--into", "Data/worlds", "--json").json()
    assert done["files"] == 3
    assert Path(fleet.instance("fern")["data_dir"], "Data/worlds/mine/world.json").read_bytes() == WORLD[
        "mine/world.json"]
    refused = fleet.cli("instance", "import", "fern", link.replace("https://", "http://"), check=False)
    assert refused.code == 2 and "https" in refused.err and "SECRET-TOKEN" not in refused.err


def test_an_export_the_client_leaves_half_way_leaves_no_snapshot_behind(fleet: FleetHarness) -> None:
    fleet.cli("instance", "create", "gwen", "--release", "13.345", "--no-start")
    world = Path(fleet.instance("gwen")["data_dir"], "Data", "worlds", "big")
    world.mkdir(parents=True)
    (world / "map.webp").write_bytes(os.urandom(16 << 20))  # far more than the socket holds unread
    fleet.cli("backup", "now", "gwen")
    kept = _snapshots(fleet, "gwen")

    transport = httpx.HTTPTransport(uds=str(fleet.socket))
    with httpx.Client(transport=transport, base_url="http://fleet.invalid", timeout=30) as client:
        with client.stream("POST", "/v1/instances/gwen/export", headers={"X-Fleet-Actor": "test:admin"}) as r:
            assert r.status_code == 200
            body = r.iter_raw()
            assert next(body)  # the zip has started, and is made from the export's own snapshot
            assert _exporting(fleet, "gwen")
        # The client goes away half way.
    left = wait_until(lambda: _snapshots(fleet, "gwen") if not _exporting(fleet, "gwen") else None, 20,
                      "the export's snapshot to be removed")
    assert set(kept) <= set(left)  # a scheduled snapshot may have come meanwhile
