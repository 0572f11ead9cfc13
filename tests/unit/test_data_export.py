"""An export streams the zip of a snapshot taken for it, and removes that snapshot once the zip is sent,
read to the end or left half way; the instance's other snapshots stay.

A real fleet (SQLite, directory storage) run as the test's user."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from pathlib import Path

import pytest

from foundry_fleet.services.operations import Operations
from foundry_fleet.wiring.services import FleetServices, make_backups
from tests.support.releases import services_with_release
from tests.unit.test_operations import HeldSupervisor

BIG = os.urandom(3 << 20)  # does not compress: the zip is many pieces


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetServices:
    return services_with_release(tmp_path_factory.mktemp("exports"))


@pytest.fixture
def name(fleet: FleetServices, request: pytest.FixtureRequest) -> str:
    """A fresh instance per test, with a world too large for one piece of the zip."""
    made = f"x{abs(hash(request.node.name)) % 10**8}"
    fleet.provisioning.create("cli:admin", made, "13.345", start=False)
    world = Path(fleet.instances.get(made).data_dir, "Data", "worlds", "mine")
    world.mkdir(parents=True)
    (world / "map.webp").write_bytes(BIG)
    return made


def _ops(fleet: FleetServices) -> Operations:
    supervisor = HeldSupervisor()
    supervisor.settle.set()
    return Operations(fleet.lifecycle(), supervisor, make_backups(fleet),  # type: ignore[arg-type]
                      fleet.config.supervisor.start_timeout)


def _snapshots(fleet: FleetServices, name: str) -> list[str]:
    return [s.name for s in fleet.storage.snapshots.list(name)]


def test_the_export_snapshot_is_removed_once_the_zip_is_read_and_no_other(fleet: FleetServices, name: str) -> None:
    ops = _ops(fleet)
    kept = asyncio.run(ops.take_backup("cli:admin", name, "mine")).name

    async def read_all() -> tuple[str, bytes]:
        export = await ops.export("cli:admin", name)
        assert export.snapshot in _snapshots(fleet, name)  # the zip is made from it as it is read
        return export.snapshot, b"".join([chunk async for chunk in export.stream()])

    snapshot, body = asyncio.run(read_all())
    assert snapshot.startswith("export-")
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.read("Data/worlds/mine/map.webp") == BIG
    assert _snapshots(fleet, name) == [kept]
    newest = {s.name: s.created_at for s in fleet.storage.snapshots.list(name)}[kept]
    assert ops.backups.newest_snapshot_times()[name] == newest  # the export's no longer counts
    assert ops.busy(name) is None


def test_the_export_snapshot_is_removed_when_the_reader_goes_away_half_way(fleet: FleetServices,
                                                                         name: str) -> None:
    ops = _ops(fleet)
    kept = asyncio.run(ops.take_backup("cli:admin", name, "mine")).name

    async def read_one_piece() -> None:
        export = await ops.export("cli:admin", name)
        stream = export.stream()
        assert len(await anext(stream)) > 0
        await stream.aclose()

    asyncio.run(read_one_piece())
    assert _snapshots(fleet, name) == [kept]
