"""HomedStorage: the Storage of a fleet whose instances live in several homes, each verb on the home that
holds the instance. Directory homes on two file systems (the second a tmpfs mount), ZFS homes on two
real zfs-fuse pools, releases from a real release cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput, NotFound
from foundry_fleet.domain.release import ReleaseInfo, ReleaseLayout
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import MIB, DownloadPolicy
from foundry_fleet.storage.directory import RELEASE_COPIES, DirectoryStorage
from foundry_fleet.storage.home_transfer import copy_instance_data
from foundry_fleet.storage.homes import MAIN_HOME, HomedStorage
from foundry_fleet.storage.zfs import ZfsStorage
from tests.support.foundry_standin import build_release_zip
from tests.support.releases import small_limits

# The second home's fixtures, for the tests here.

QUOTA = 32 * MIB


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> ReleaseInfo:
    """A release in a real release cache (on the fleet host's file system)."""
    d = tmp_path_factory.mktemp("homes-releases")
    cache = ReleaseCache(d / "cache", DownloadPolicy(allowed_hosts=("foundryvtt.com",), max_download_bytes=10 * MIB),
                         small_limits())
    zip_path = build_release_zip(d / "zips", ReleaseLayout.NODE, 13, 345, filler_files=2, filler_bytes=MIB)
    return cache.add(str(zip_path))


class Homes:
    """Where each instance lives: what the store answers (`home_of`), changed by a move's commit."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}

    def __call__(self, instance: str) -> str:
        return self.of.get(instance, MAIN_HOME)


@pytest.fixture
def directory_homes(tmp_path: Path, other_file_system: Path) -> tuple[HomedStorage, Homes]:
    homes = Homes()
    storage = HomedStorage({MAIN_HOME: DirectoryStorage(tmp_path / "fleet"),
                            "disk-b": DirectoryStorage(other_file_system / "fleet-b")}, homes)
    storage.ensure_layout()
    return storage, homes


def test_each_instance_is_laid_out_and_snapshotted_in_its_own_home(
        directory_homes: tuple[HomedStorage, Homes], tmp_path: Path, other_file_system: Path) -> None:
    storage, homes = directory_homes
    homes.of["bob"] = "disk-b"
    assert storage.home_names == (MAIN_HOME, "disk-b")
    assert (other_file_system / "fleet-b" / "instances").is_dir()  # ensure_layout: every home's

    alice, bob = storage.create_instance("alice"), storage.create_instance("bob")

    assert alice.data == tmp_path / "fleet" / "instances" / "alice" / "data"
    assert bob.data == other_file_system / "fleet-b" / "instances" / "bob" / "data"
    assert storage.paths("bob") == bob and storage.home_for("bob") is storage.home("disk-b")
    assert storage.shared_dir() == tmp_path / "fleet" / "shared"
    (alice.data / "Data" / "a.txt").write_text("alice's")
    (bob.data / "Data" / "b.txt").write_text("bob's")

    taken = storage.snapshots.take_many([("bob", bob.data), ("alice", alice.data)], "both")

    assert [t.name for t in taken] == ["both", "both"] and taken[0].files == 1 and taken[1].files == 1
    assert (other_file_system / "fleet-b" / "snapshots" / "bob" / "both" / "Data" / "b.txt").read_text() == "bob's"
    assert (tmp_path / "fleet" / "snapshots" / "alice" / "both" / "Data" / "a.txt").read_text() == "alice's"
    assert storage.snapshots.names("bob") == ["both"]
    assert storage.snapshots.path("bob", "both").is_relative_to(other_file_system)
    assert storage.usage_bytes("bob") > 0

    (bob.data / "Data" / "b.txt").write_text("changed")
    storage.snapshots.restore("bob", "both", bob.data, None)
    assert (bob.data / "Data" / "b.txt").read_text() == "bob's"

    storage.destroy_instance("bob")
    assert not (other_file_system / "fleet-b" / "instances" / "bob").exists()
    assert storage.snapshots.names("bob") == []
    assert storage.snapshots.names("alice") == ["both"]


def test_after_a_move_commits_every_verb_works_on_the_new_home(
        directory_homes: tuple[HomedStorage, Homes], other_file_system: Path) -> None:
    storage, homes = directory_homes
    data = storage.create_instance("alice").data
    (data / "Data" / "world.txt").write_text("v1")
    storage.snapshots.take("alice", data, "before-move")

    copied = copy_instance_data("alice", storage.home(MAIN_HOME), storage.home("disk-b"), None)
    homes.of["alice"] = "disk-b"  # the commit point: the store now says where it lives

    assert copied.snapshots == ("before-move",)
    moved = storage.paths("alice").data
    assert moved.is_relative_to(other_file_system) and (moved / "Data" / "world.txt").read_text() == "v1"
    (moved / "Data" / "world.txt").write_text("v2")
    storage.snapshots.take("alice", moved, "after-move")
    assert storage.snapshots.names("alice") == ["after-move", "before-move"]
    archived = storage.home(MAIN_HOME).archive_instance("alice", "moved")  # the source copy, kept aside
    assert (archived / "data" / "Data" / "world.txt").read_text() == "v1"
    assert storage.snapshots.names("alice") == ["after-move", "before-move"]  # the new home's, untouched
    storage.snapshots.restore("alice", "before-move", moved, None)
    assert (moved / "Data" / "world.txt").read_text() == "v1"


def test_an_unknown_home_is_named_with_the_homes_there_are(directory_homes: tuple[HomedStorage, Homes]) -> None:
    storage, homes = directory_homes
    with pytest.raises(NotFound, match="no storage home named 'pool-z'") as e:
        storage.home("pool-z")
    assert "fleet, disk-b" in (e.value.hint or "") or "disk-b, fleet" in (e.value.hint or "")
    homes.of["carol"] = "gone"
    with pytest.raises(NotFound, match="where instance carol is recorded to live"):
        storage.paths("carol")
    with pytest.raises(InvalidInput, match="do not include the fleet's own"):
        HomedStorage({"disk-b": storage.home("disk-b")}, homes)


def test_status_is_the_main_homes_with_every_home_and_a_home_that_cannot_be_read(
        tmp_path: Path, other_file_system: Path) -> None:
    homes = Homes()
    storage = HomedStorage({MAIN_HOME: DirectoryStorage(tmp_path / "fleet"),
                            "disk-b": DirectoryStorage(other_file_system / "fleet-b"),
                            "gone": DirectoryStorage(tmp_path / "not-mounted")}, homes)
    for name in (MAIN_HOME, "disk-b"):
        storage.home(name).ensure_layout()
    homes.of["bob"] = "disk-b"
    storage.create_instance("alice")
    storage.create_instance("bob")

    status = storage.status()

    assert status["driver"] == "directory" and status["root"] == str(tmp_path / "fleet")
    assert list(status["instances"]) == ["alice"]  # type: ignore[call-overload]
    homes_status = status["homes"]
    assert isinstance(homes_status, dict)
    assert list(homes_status[MAIN_HOME]["instances"]) == ["alice"]
    assert list(homes_status["disk-b"]["instances"]) == ["bob"]
    assert homes_status["disk-b"]["root"] == str(other_file_system / "fleet-b")
    assert "No such file or directory" in homes_status["gone"]["error"]


def test_a_release_is_copied_once_into_a_home_on_another_file_system(
        directory_homes: tuple[HomedStorage, Homes], release: ReleaseInfo, other_file_system: Path) -> None:
    storage, homes = directory_homes
    homes.of.update(bob="disk-b", carol="disk-b")
    interrupted = other_file_system / "fleet-b" / RELEASE_COPIES / f"{release.version}.partial"
    interrupted.mkdir(parents=True)
    (interrupted / "main.js").write_text("half a copy")  # what a copy cut short leaves: never used
    for name in ("alice", "bob", "carol"):
        storage.create_instance(name)
        storage.install_release(name, Path(release.path))

    cached = Path(release.path) / "main.js"
    home_copy = other_file_system / "fleet-b" / RELEASE_COPIES / release.version
    installed = {name: storage.paths(name).install / "main.js" for name in ("alice", "bob", "carol")}
    assert installed["alice"].stat().st_ino == cached.stat().st_ino  # same file system: links into the cache
    assert installed["bob"].read_bytes() == cached.read_bytes()
    # One copy of the release in the other home, that both its instances link to.
    assert installed["bob"].stat().st_ino == installed["carol"].stat().st_ino == (home_copy / "main.js").stat().st_ino
    assert installed["bob"].stat().st_dev == os.stat(other_file_system).st_dev
    assert storage.home("disk-b").linked_release(Path(release.path)) == home_copy  # type: ignore[attr-defined]
    assert [p.name for p in home_copy.parent.iterdir() if not p.name.startswith(".")] == [release.version]
    assert (home_copy.stat().st_mode & 0o777) == 0o555


# ZFS homes ---------------------------------------------------------------------------------------


@pytest.fixture
def zfs_homes(tmp_path: Path, zfs_base: str, second_zfs_base: str) -> tuple[HomedStorage, Homes]:
    homes = Homes()
    storage = HomedStorage({MAIN_HOME: ZfsStorage(tmp_path / "fleet", zfs_base, quota_bytes=QUOTA),
                            "pool-b": ZfsStorage(tmp_path / "fleet-b", second_zfs_base, quota_bytes=QUOTA)}, homes)
    storage.ensure_layout()
    return storage, homes


def test_zfs_homes_hold_their_instances_datasets_releases_and_snapshots(
        zfs_homes: tuple[HomedStorage, Homes], release: ReleaseInfo, zfs_base: str, second_zfs_base: str) -> None:
    storage, homes = zfs_homes
    homes.of["bob"] = "pool-b"
    assert storage.name == "zfs" and storage.enforces_limits
    alice, bob = storage.create_instance("alice", QUOTA), storage.create_instance("bob", QUOTA)
    storage.install_release("bob", Path(release.path))
    (alice.data / "Data" / "a.txt").write_text("alice's")
    (bob.data / "Data" / "b.txt").write_text("bob's")

    taken = storage.snapshots.take_many([("alice", alice.data), ("bob", bob.data)], "nightly")

    assert len(taken) == 2
    b = storage.home("pool-b")
    assert isinstance(b, ZfsStorage)
    assert b.zfs.exists(f"{second_zfs_base}/instances/bob/data@nightly")
    assert b.zfs.exists(f"{second_zfs_base}/releases/{release.version}@pristine")  # its own pool's release
    assert (bob.install / "main.js").read_bytes() == (Path(release.path) / "main.js").read_bytes()
    assert storage.home(MAIN_HOME).zfs.exists(f"{zfs_base}/instances/alice/data@nightly")  # type: ignore[attr-defined]
    assert not storage.home(MAIN_HOME).zfs.exists(f"{zfs_base}/instances/bob")  # type: ignore[attr-defined]
    assert (storage.snapshots.path("bob", "nightly") / "Data" / "b.txt").read_text() == "bob's"
    assert storage.tighten_quotas(["alice", "bob"]) == []

    status = storage.status()
    assert status["base"] == zfs_base and list(status["instances"]) == ["alice"]  # type: ignore[call-overload]
    pool_b = status["homes"]["pool-b"]  # type: ignore[index]
    assert pool_b["base"] == second_zfs_base and pool_b["instances"]["bob"]["release"] == release.version
    assert pool_b["instances"]["bob"]["quota"] == QUOTA
    assert storage.snapshots.sweep_views(0) >= 1  # the view of bob's snapshot, in its home's pool


def test_a_home_that_cannot_be_laid_out_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    storage = HomedStorage({MAIN_HOME: DirectoryStorage(tmp_path / "fleet"),
                            "disk-b": DirectoryStorage(tmp_path / "a-file" / "fleet-b")}, Homes())
    with pytest.raises(ExternalFailure, match="storage home 'disk-b' cannot be laid out: .*Not a directory") as e:
        storage.ensure_layout()
    assert "mounted here" in (e.value.hint or "")
    assert (tmp_path / "fleet" / "instances").is_dir()  # the fleet's own home was laid out first
