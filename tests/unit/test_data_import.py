"""Importing a tenant's data from a zip: refused with nothing changed when it is unsafe, lands elsewhere
than Data, or would overwrite without replace; otherwise a snapshot first, files owned by the instance,
and a copy that fails half way leaves the data as it was.

A real fleet (SQLite, directory storage) run as the test's user: as root, instances get their own uid,
so the ownership checked is a real chown."""

from __future__ import annotations

import asyncio
import os
import stat
import zipfile
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import Conflict, ExternalFailure, InvalidInput
from foundry_fleet.releases.policy import UnpackLimits
from foundry_fleet.services import data_import
from foundry_fleet.services.data_import import DataImport, checked_into
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.snapshot_files import not_exported
from foundry_fleet.wiring.services import FleetServices, make_backups
from tests.support.releases import LocalHTTPS, Route, local_policy, services_with_release
from tests.unit.test_operations import HeldSupervisor

WORLD = {"mine/world.json": b'{"id": "mine"}', "mine/data/actors.db": b"actors\n", "mine/scenes/map.webp": b"x" * 1000}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetServices:
    return services_with_release(tmp_path_factory.mktemp("imports"))


@pytest.fixture
def name(fleet: FleetServices, request: pytest.FixtureRequest) -> str:
    """A fresh instance per test."""
    made = f"t{abs(hash(request.node.name)) % 10**8}"
    fleet.provisioning.create("cli:admin", made, "13.345", start=False)
    return made


def _ops(fleet: FleetServices, tmp_path: Path, limits: UnpackLimits | None = None) -> Operations:
    supervisor = HeldSupervisor()
    supervisor.settle.set()
    return Operations(fleet.lifecycle(), supervisor, make_backups(fleet),  # type: ignore[arg-type]
                      fleet.config.supervisor.start_timeout,
                      imports=DataImport(limits or UnpackLimits(max_unpacked_bytes=1 << 20, max_entries=100),
                                         tmp_path / "staging"))


def _zip(tmp_path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    path = tmp_path / f"in-{len(list(tmp_path.glob('in-*')))}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, body in files.items():
            zf.writestr(entry, body)
        for entry, target in (links or {}).items():
            info = zipfile.ZipInfo(entry)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _import(ops: Operations, name: str, zip_path: Path, into: str = "Data/worlds", replace: bool = False):  # noqa: ANN202
    return asyncio.run(ops.import_data("cli:admin", name, zip_path, into, replace))


@pytest.mark.parametrize("into", ["Config", "/etc", "Data/../Config", "Data/shared", "Data/shared/x", "", "Logs"])
def test_into_must_be_under_data_and_not_the_shared_assets(into: str) -> None:
    with pytest.raises(InvalidInput):
        checked_into(into)
    assert checked_into("Data/worlds/") == ("Data", "worlds") and checked_into("./Data") == ("Data",)


@pytest.mark.parametrize("files,links,says", [
    ({"../escape.txt": b"x"}, None, "outside"),
    ({"/abs.txt": b"x"}, None, "absolute"),
    ({"mine/world.json": b"{}"}, {"mine/etc": "../../../../etc"}, "points outside"),
    ({f"f{i}": b"x" for i in range(101)}, None, "entries"),
    ({"bomb.bin": b"\0" * (2 << 20)}, None, "too large"),
])
def test_an_unsafe_zip_is_refused_and_changes_nothing(fleet: FleetServices, name: str, tmp_path: Path,
                                                      files: dict[str, bytes], links: dict[str, str] | None,
                                                      says: str) -> None:
    ops = _ops(fleet, tmp_path)
    data = Path(fleet.instances.get(name).data_dir)
    before = _tree(data)
    with pytest.raises(InvalidInput, match=says):
        _import(ops, name, _zip(tmp_path, files, links))
    assert _tree(data) == before
    assert fleet.storage.snapshots.list(name) == []  # refused before the snapshot
    assert list((tmp_path / "staging").iterdir()) == []  # nothing staged is left behind
    assert ops.busy(name) is None


def test_an_import_lands_under_into_owned_by_the_instance_after_a_snapshot(fleet: FleetServices, name: str,
                                                                          tmp_path: Path) -> None:
    ops = _ops(fleet, tmp_path)
    view = fleet.instances.get(name)
    done = _import(ops, name, _zip(tmp_path, WORLD, {"mine/latest.webp": "scenes/map.webp"}))
    world = Path(view.data_dir) / "Data" / "worlds" / "mine"
    assert _tree(world) == {k.removeprefix("mine/"): v for k, v in WORLD.items()}
    assert os.readlink(world / "latest.webp") == "scenes/map.webp"
    assert (done.files, done.replaced, done.restarted) == (4, 0, False)
    assert done.snapshot is not None and done.snapshot.startswith("pre-import-")
    assert [s.name for s in fleet.storage.snapshots.list(name)] == [done.snapshot]
    if os.geteuid() == 0:
        assert view.uid not in (None, 0)  # the fleet runs as root: the instance has a uid of its own
    owner = view.uid if view.uid is not None else os.geteuid()
    for path in [world, world / "data", world / "latest.webp", *world.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (owner, owner), path
    assert stat.S_IMODE((world / "world.json").stat().st_mode) == 0o644  # the tenant's to change
    event = [e for e in fleet.events.recent(name) if e.action == "instance.import"][-1]
    assert event.outcome == "ok" and "4 file(s) into Data/worlds" in event.message
    assert list((tmp_path / "staging").iterdir()) == []


def test_existing_files_are_not_overwritten_without_replace(fleet: FleetServices, name: str, tmp_path: Path) -> None:
    ops = _ops(fleet, tmp_path)
    first = _import(ops, name, _zip(tmp_path, WORLD))
    data = Path(fleet.instances.get(name).data_dir)
    (data / "Data/worlds/mine/data/actors.db").write_bytes(b"played since\n")
    before = _tree(data)
    changed = {**WORLD, "mine/data/actors.db": b"new\n", "mine/new.txt": b"n"}
    with pytest.raises(Conflict, match="3 file.s. of the zip already exist") as refused:
        _import(ops, name, _zip(tmp_path, changed))
    assert "Data/worlds/mine/data/actors.db" in refused.value.message and "--replace" in (refused.value.hint or "")
    assert _tree(data) == before  # nothing changed, not even the new file
    assert [s.name for s in fleet.storage.snapshots.list(name)] == [first.snapshot]  # and no snapshot taken
    done = _import(ops, name, _zip(tmp_path, changed), replace=True)
    assert done.replaced == 3
    assert (data / "Data/worlds/mine/data/actors.db").read_bytes() == b"new\n"
    # The snapshot taken before holds what was replaced.
    snap = fleet.storage.snapshots.path(name, done.snapshot or "")
    assert (snap / "Data/worlds/mine/data/actors.db").read_bytes() == b"played since\n"


def test_a_zip_into_data_cannot_write_the_shared_assets(fleet: FleetServices, name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="shared assets"):
        _import(_ops(fleet, tmp_path), name, _zip(tmp_path, {"shared/x.png": b"x"}), into="Data")


def test_a_copy_failing_half_way_leaves_the_data_as_it_was(fleet: FleetServices, name: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ops = _ops(fleet, tmp_path)
    _import(ops, name, _zip(tmp_path, WORLD))
    data = Path(fleet.instances.get(name).data_dir)
    before = _tree(data)
    real = data_import._write_file
    calls = []

    def failing(*args: object) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(data_import, "_write_file", failing)
    bigger = {**WORLD, "mine/data/actors.db": b"overwritten\n", "mine/more/a.txt": b"a", "mine/zz.txt": b"z"}
    with pytest.raises(ExternalFailure, match="failed half way"):
        _import(ops, name, _zip(tmp_path, bigger), replace=True)
    assert _tree(data) == before  # what it overwrote is back, and what it added is gone
    assert not (data / "Data/worlds/mine/more").exists()
    event = [e for e in fleet.events.recent(name) if e.action == "instance.import"][-1]
    assert event.outcome == "failed" and "No space left" in event.message
    assert ops.busy(name) is None


def test_the_export_leaves_out_the_licence_the_admin_password_and_the_shared_assets() -> None:
    assert not not_exported(("Data",)) and not not_exported(("Data", "worlds", "mine", "world.json"))
    assert not not_exported(("Config",)) and not not_exported(("Config", "options.json"))
    for parts in [("Config", "license.json"), ("Config", "admin.txt"), ("Data", "shared"), ("Logs",),
                  ("Backups",), (".fleet-snapshot",)]:
        assert not_exported(parts), parts


def test_a_zip_from_a_link_is_downloaded_by_the_release_rules_then_imported(
        fleet: FleetServices, name: str, tmp_path: Path, https_server: LocalHTTPS) -> None:
    https_server.routes["/exports/mine.zip"] = Route(body=_zip(tmp_path, WORLD).read_bytes())
    imports = DataImport(UnpackLimits(max_unpacked_bytes=1 << 20, max_entries=100), tmp_path / "staging",
                         local_policy(https_server))
    path = imports.fetch(name, https_server.url("/exports/mine.zip?verify=S3CR3T"))
    ops = _ops(fleet, tmp_path)
    done = _import(ops, name, path)
    assert done.files == 3
    assert (Path(fleet.instances.get(name).data_dir) / "Data/worlds/mine/world.json").read_bytes() == WORLD[
        "mine/world.json"]
    for url, says in [(https_server.url("/exports/mine.zip").replace("https", "http"), "https"),
                      (https_server.url("/exports/mine.zip", host="localhost.localdomain"), "allowed")]:
        with pytest.raises(InvalidInput, match=says):
            imports.fetch(name, url)
    with pytest.raises(InvalidInput, match="does not download"):
        DataImport(imports.limits, tmp_path / "staging").fetch(name, https_server.url("/exports/mine.zip"))


def test_what_a_stopped_daemon_left_staged_is_swept(tmp_path: Path) -> None:
    imports = DataImport(UnpackLimits(max_unpacked_bytes=1 << 20, max_entries=100), tmp_path / "staging")
    assert imports.sweep() == 0
    upload = imports.upload_path("alice")
    upload.write_bytes(b"PK")
    folder = tmp_path / "staging" / "alice-0"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "f").write_text("x")
    assert imports.sweep() == 2 and list((tmp_path / "staging").iterdir()) == []
