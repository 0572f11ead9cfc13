"""A fleet on real ZFS (zfs-fuse, pools on files): storage init, quotas, snapshots, browsing, restore, and
replication into a second pool that goes offline and comes back."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from foundry_fleet.config import load_config
from foundry_fleet.services.backups import Backups
from foundry_fleet.wiring.services import make_backups, make_status_updates, open_services
from foundry_fleet.storage.zfs_snapshots import RESTORING
from tests.support.fleets import zfs_fleet_on
from tests.support.harness import BIN, FleetHarness, file_digests, wait_until
from tests.support.sshd import Sshd, running_sshd
from tests.support.offline import create_offline
from tests.e2e.test_upgrade_scenarios import upgrade_then_roll_back
from tests.support.zfs import FilePool, make_file_pool, zfs, zpool

pytestmark = pytest.mark.e2e
OWNER = {"X-Fleet-User": "123456789012345678"}
HOUR = 3600.0


@pytest.fixture
def zfs_fleet(tmp_path: Path, zfs_base: str) -> Iterator[FleetHarness]:
    """A fleet whose storage is `zfs_base`; stopped (and its processes gone) before the datasets go."""
    yield from zfs_fleet_on(tmp_path, zfs_base, disk_mb=64)


@pytest.fixture
def second_pool(tmp_path_factory: pytest.TempPathFactory, zfs_daemon: None) -> Iterator[FilePool]:
    pool = make_file_pool(tmp_path_factory.mktemp("dest"), size="256M")
    try:
        yield pool
    finally:
        if zpool("list", pool.name, check=False).returncode != 0:
            zpool("import", "-d", str(pool.file.parent), pool.name, check=False)
        pool.destroy()


def test_storage_init_lays_out_datasets_once_and_records_them(zfs_fleet: FleetHarness, zfs_base: str) -> None:
    config = load_config(zfs_fleet.config)
    assert config.storage.driver == "zfs" and config.storage.zfs_base == zfs_base
    names = zfs("list", "-H", "-o", "name", "-r", zfs_base).stdout.split()
    assert {f"{zfs_base}/shared", f"{zfs_base}/releases", f"{zfs_base}/instances"} <= set(names)
    again = zfs_fleet.cli("storage", "init", "--zfs", zfs_base, "--json").json()
    assert again["driver"] == "zfs" and again["pool"]["health"] == "ONLINE"
    assert zfs("list", "-H", "-o", "name", "-r", zfs_base).stdout.split() == names
    moved = zfs_fleet.cli("storage", "init", "--zfs", "no-such-pool/x", check=False)
    assert moved.code == 7 and "no-such-pool" in moved.err
    assert load_config(zfs_fleet.config).storage.zfs_base == zfs_base  # unchanged by the failure


def test_a_running_instance_on_zfs_is_backed_up_browsed_and_restored(
    zfs_fleet: FleetHarness, zfs_base: str, release_zips: dict[str, Path]
) -> None:
    zfs_fleet.cli("release", "add", str(release_zips["node"]))
    zfs_fleet.up()
    inst = zfs_fleet.cli("instance", "create", "alice", "--release", "13.345", "--json").json()["instance"]
    data = Path(inst["data_dir"])
    assert zfs("get", "-H", "-o", "value", "origin", f"{zfs_base}/instances/alice/install").stdout.strip() \
        == f"{zfs_base}/releases/13.345@pristine"
    # The limit is a quota, which counts the data's snapshots (a refquota would not).
    assert zfs("get", "-H", "-p", "-o", "value", "quota", f"{zfs_base}/instances/alice/data").stdout.strip() \
        == str(64 * 1024 * 1024)
    status = zfs_fleet.cli("storage", "status", "--json").json()
    assert status["instances"]["alice"]["limit"] == 64 * 1024 * 1024

    world = data / "Data" / "worlds" / "w" / "world.db"
    world.parent.mkdir(parents=True)
    world.write_text("session 1")
    (data / "Data" / "map.webp").write_bytes(os.urandom(200_000))
    os.chown(world, inst["uid"], inst["uid"]) if inst.get("uid") else None
    before = file_digests(data)
    snap = zfs_fleet.cli("backup", "now", "alice", "--label", "before", "--json").json()["name"]
    assert f"{zfs_base}/instances/alice/data@{snap}" in zfs("list", "-H", "-t", "snapshot", "-o", "name").stdout
    world.write_text("session 2 went badly")
    (data / "Data" / "map.webp").unlink()

    sock = zfs_fleet.root / "run" / "backups.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://alice.localhost",
                      timeout=30) as door:
        listing = door.get("/backups/", headers={**OWNER, "Accept": "application/json"}).json()
        assert snap in [s["name"] for s in listing]
        got = door.get(f"/backups/{snap}/Data/worlds/w/world.db", headers=OWNER)
        assert got.status_code == 200 and got.text == "session 1", got.text
        assert door.get(f"/backups/{snap}/../../../etc/passwd", headers=OWNER).status_code in (400, 404)
    # The page is served from a read-only view, which the fleet keeps under a root-only folder.
    views = zfs_fleet.root / "views"
    assert views.stat().st_mode & 0o777 == 0o700

    out = zfs_fleet.cli("backup", "restore", "alice", snap, "--yes").out
    assert "kept as snapshot safety-" in out
    assert file_digests(data) == before
    after = zfs_fleet.instance("alice")
    assert after["state"] == "running"
    names = [s["name"] for s in zfs_fleet.cli("backup", "list", "alice", "--json").json()]
    safety = next(n for n in names if n.startswith("safety-"))
    assert snap in names  # restoring never destroys a snapshot, older or newer
    fleet = open_services(load_config(zfs_fleet.config))
    with_bad_session = fleet.storage.snapshots.path("alice", safety) / "Data" / "worlds" / "w" / "world.db"
    assert with_bad_session.read_text() == "session 2 went badly"


def test_a_restore_killed_half_way_is_redone_at_the_next_start(
    zfs_fleet: FleetHarness, zfs_base: str, release_zips: dict[str, Path]
) -> None:
    zfs_fleet.cli("release", "add", str(release_zips["node"]))
    daemon = zfs_fleet.up()
    inst = zfs_fleet.cli("instance", "create", "carol", "--release", "13.345", "--no-start", "--json").json()["instance"]
    data = Path(inst["data_dir"])
    for i in range(40):  # enough that the copy back takes a while
        (data / "Data" / f"scene{i}.webp").write_bytes(os.urandom(1024 * 1024))
    snap = zfs_fleet.cli("backup", "now", "carol", "--json").json()["name"]
    want = file_digests(data)
    (data / "Data" / "scene0.webp").write_bytes(b"changed after the snapshot")
    changed = file_digests(data)

    restore = subprocess.Popen([str(BIN), "--config", str(zfs_fleet.config), "backup", "restore", "carol", snap,
                                "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The restore in progress is recorded on the dataset, out of the tenant's reach, not in its data.
    def restoring() -> bool:
        return zfs("get", "-H", "-o", "value", RESTORING, f"{zfs_base}/instances/carol/data").stdout.strip() == snap

    wait_until(lambda: restoring() or restore.poll() is not None, 60, "the restore to begin")
    daemon.kill()  # the daemon restores: it dies half way
    daemon.wait()
    restore.wait()
    assert restoring(), "the restore finished before it could be interrupted: make the data bigger"
    assert not any(n.startswith(".fleet-restore") for n in os.listdir(data))
    assert file_digests(data) != want  # half way: neither the old data nor the snapshot's

    zfs_fleet.up()
    zfs_fleet.cli("instance", "start", "carol")
    zfs_fleet.wait_state("carol", "running")
    assert file_digests(data) == want and not restoring()
    safety = [s["name"] for s in zfs_fleet.cli("backup", "list", "carol", "--json").json()
              if s["name"].startswith("safety-")]
    assert len(safety) == 1
    fleet = open_services(load_config(zfs_fleet.config))
    assert file_digests(fleet.storage.snapshots.path("carol", safety[0])) == changed  # nothing was lost


def _fleet_with_destination(h: FleetHarness, dest: str, source_plan: str, dest_plan: str,
                            extra: str = "") -> Backups:
    text = h.config.read_text().replace('plan = "7d=>1h,30d=>1d,1y=>1w"', f'plan = "{source_plan}"')
    text += f'\n[[backups.destinations]]\nname = "usb"\ntarget = "{dest}"\nplan = "{dest_plan}"\n{extra}'
    h.config.write_text(text)
    return make_backups(open_services(load_config(h.config), actor="test"))


def test_replication_is_full_then_incremental_and_catches_up_after_being_offline(
    zfs_fleet: FleetHarness, second_pool: FilePool, release_zips: dict[str, Path]
) -> None:
    zfs_fleet.cli("release", "add", str(release_zips["node"]))
    inst = create_offline(zfs_fleet, "dana")["instance"]
    data = Path(inst["data_dir"])
    # Here: two hours of hourly snapshots. There: a day of them.
    backups = _fleet_with_destination(zfs_fleet, f"{second_pool.name}/fleet", "2h=>1h", "1d=>1h")
    dest = f"{second_pool.name}/fleet/dana"
    t0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR

    (data / "Data" / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    first = backups.run_schedule(now=t0)
    assert first.failed == [] and len(first.taken) == 1
    full = backups.replication.status(["dana"])[0]
    assert full["last_snapshot"] == first.taken[0].snapshot and full["snapshots_behind"] == 0

    (data / "Data" / "small.bin").write_bytes(os.urandom(256 * 1024))
    second = backups.run_schedule(now=t0 + HOUR)
    assert second.failed == []
    from sqlalchemy import select

    from foundry_fleet.store.models import ReplicationRow

    with backups.records.sessions() as s:
        sent = s.scalars(select(ReplicationRow)).one().bytes_sent
    assert 256 * 1024 <= sent <= 1.2 * 256 * 1024 + 64 * 1024, sent  # the change, not the 4 MiB again

    zpool("export", second_pool.name)  # the USB disk is unplugged for four hours
    for hour in range(2, 6):
        (data / "Data" / f"hour{hour}.txt").write_text(str(hour))
        offline = backups.run_schedule(now=t0 + hour * HOUR)
        assert offline.failed == [] and len(offline.taken) == 1  # offline is not a failure of the round
    local = backups.snapshots.names("dana")
    # The plan here keeps two hours; everything the destination still wants stayed.
    wanted = [backups.fmt.name(t0 + h * HOUR) for h in range(1, 6)]
    assert set(wanted) <= set(local), local
    behind = backups.replication.status(["dana"])[0]
    assert behind["snapshots_behind"] == 4 and "not available" in behind["last_error"]
    shown = zfs_fleet.cli("backup", "status", "dana", "--json").json()
    assert shown["destinations"] == [behind | {"seconds_behind": shown["destinations"][0]["seconds_behind"]}]
    table = zfs_fleet.cli("backup", "status").out
    assert "usb" in table and "4 snapshot(s)" in table

    zpool("import", "-d", str(second_pool.file.parent), second_pool.name)
    back = backups.run_schedule(now=t0 + 6 * HOUR)
    assert back.failed == []
    there = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", dest).stdout.split()
    assert {f"{dest}@{n}" for n in wanted} <= set(there), there
    caught_up = backups.replication.status(["dana"])[0]
    assert caught_up["snapshots_behind"] == 0 and caught_up["last_error"] == ""
    # Caught up, the plan here applies again: only two hours' worth (and the newest) remain.
    assert len(backups.snapshots.names("dana")) <= 3
    assert zfs("get", "-H", "-o", "value", "mounted", dest).stdout.strip() == "no"


def test_a_failed_upgrade_on_zfs_swaps_the_install_back_and_restores_the_data(
    zfs_fleet: FleetHarness, zfs_base: str, release_zips: dict[str, Path], tmp_path: Path
) -> None:
    inst = upgrade_then_roll_back(zfs_fleet, release_zips, tmp_path)
    origin = zfs("get", "-H", "-o", "value", "origin", f"{zfs_base}/instances/alice/install").stdout.strip()
    assert origin == f"{zfs_base}/releases/13.347@pristine"
    names = [s["name"] for s in zfs_fleet.cli("backup", "list", "alice", "--json").json()]
    assert sum(n.startswith("pre-upgrade-") for n in names) == 2 and any(n.startswith("safety-") for n in names)
    assert Path(inst["data_dir"], "Data", "world.db").read_text() == "campaign state"


def test_delete_takes_a_final_snapshot_kept_with_the_archive_and_purge_reaches_the_destination(
    zfs_fleet: FleetHarness, zfs_base: str, second_pool: FilePool, release_zips: dict[str, Path]
) -> None:
    zfs_fleet.cli("release", "add", str(release_zips["node"]))
    for name in ("erin", "finn"):
        inst = create_offline(zfs_fleet, name)
        Path(inst["instance"]["data_dir"], "Data", "world.db").write_text(f"{name}'s last session")
    _fleet_with_destination(zfs_fleet, f"{second_pool.name}/fleet", "1d=>1h", "1d=>1h")
    zfs_fleet.up()  # deleting goes through the daemon, which reads the destination at its start

    kept = zfs_fleet.cli("instance", "delete", "erin", "--yes").out
    assert "data kept at" in kept
    archived = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", f"{zfs_base}/archive").stdout
    assert "/data@final-" in archived

    zfs_fleet.cli("instance", "delete", "finn", "--purge", "--yes")
    assert zfs("list", f"{zfs_base}/instances/finn", check=False).returncode != 0
    there = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", f"{second_pool.name}/fleet/finn").stdout
    assert "@final-" in there, "the purged instance's last state lives on at the destination"

    zfs_fleet.cli("instance", "create", "gwen", "--release", "13.345", "--no-start")
    zpool("export", second_pool.name)
    refused = zfs_fleet.cli("instance", "delete", "gwen", "--purge", "--yes", check=False)
    assert refused.code == 7 and "could not reach backup destination usb" in refused.err
    assert zfs("list", f"{zfs_base}/instances/gwen/data").returncode == 0  # nothing was lost


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with running_sshd(tmp_path / "sshd") as server:
        yield server


def test_replication_over_ssh_and_a_host_that_stops_answering(
    zfs_fleet: FleetHarness, second_pool: FilePool, sshd: Sshd, release_zips: dict[str, Path]
) -> None:
    zfs_fleet.cli("release", "add", str(release_zips["node"]))
    inst = create_offline(zfs_fleet, "hana")["instance"]
    data = Path(inst["data_dir"])
    ssh_command = json.dumps(["ssh", *sshd.options()])
    backups = _fleet_with_destination(zfs_fleet, f"root@127.0.0.1:{second_pool.name}/remote", "1d=>1h", "1d=>1h",
                                      extra=f"ssh_command = {ssh_command}\n")
    t0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR
    dest = f"{second_pool.name}/remote/hana"

    (data / "Data" / "world.db").write_text("hour 0")
    assert backups.run_schedule(now=t0).failed == []
    assert zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", dest).stdout.count("@") == 1

    sshd.stop()  # the backup host goes away
    (data / "Data" / "world.db").write_text("hour 1")
    away = backups.run_schedule(now=t0 + HOUR)
    assert away.failed == []
    row = backups.replication.status(["hana"])[0]
    assert row["snapshots_behind"] == 1 and "does not answer" in row["last_error"]

    sshd.start()
    assert backups.run_schedule(now=t0 + 2 * HOUR).failed == []
    assert zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", dest).stdout.count("@") == 3
    assert backups.replication.status(["hana"])[0]["snapshots_behind"] == 0


def test_a_quota_filling_up_becomes_a_status_update(zfs_fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    from foundry_fleet.services.status_updates import LogNotifier

    zfs_fleet.cli("release", "add", str(release_zips["node"]))
    inst = create_offline(zfs_fleet, "ivy")["instance"]
    updates = make_status_updates(open_services(load_config(zfs_fleet.config)), LogNotifier())
    assert updates.quota_updates() == []
    Path(inst["data_dir"], "Data", "big.bin").write_bytes(os.urandom(60 * 1024 * 1024))  # of 64 MiB
    wait_until(lambda: [u.instance for u in updates.quota_updates()] == ["ivy"], 60, "ZFS to count the bytes")
    assert "of its storage quota" in updates.quota_updates()[0].text
