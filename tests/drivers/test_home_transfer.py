"""Copying an instance's data to another storage home, and throwing the copy away: directory homes on
two file systems (the second a tmpfs mount), ZFS homes on two real zfs-fuse pools."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput, NotFound, Unsupported
from foundry_fleet.storage.directory import DirectoryStorage
from foundry_fleet.storage.home_transfer import Copied, copy_instance_data, discard_copy
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_destination import ZfsDestination

pytest.register_assert_rewrite("tests.support.zfs")

from tests.support.zfs import zfs  # noqa: E402 (after the rewrite registration)

# The second home's fixtures, for the tests here.

UID = 41234  # the instance's user: no such account is needed to own files
MIB = 1 << 20
QUOTA = 48 * MIB


def tree_of(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under `root` by relative path: files by content, links by target, folders; never
    following a link (a link to a folder stays a link). The snapshots' metadata file is left out."""
    found: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if rel in (".snapshot.json", ".zfs"):
                continue
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", "")
            else:
                found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def owners(root: Path) -> set[int]:
    """The owners of everything under `root` but the shared assets' mount point (root's)."""
    found = {root.lstat().st_uid}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            if path.relative_to(root) != Path("Data/shared"):
                found.add(path.lstat().st_uid)
    return found


def fill(data: Path, big_bytes: int = 4 * MIB) -> None:
    """A tenant's data: a world database, nested folders, a link to a folder outside, a link to a file."""
    world = data / "Data" / "worlds" / "w1"
    world.mkdir(parents=True)
    (world / "data.db").write_bytes(os.urandom(big_bytes))
    (world / "world.json").write_text('{"title": "One"}')
    deep = data / "Data" / "modules" / "m" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "x.js").write_text("export {}")
    (data / "Data" / "escape").symlink_to("/etc")
    (data / "Data" / "passwd").symlink_to("/etc/passwd")
    subprocess.run(["chown", "-R", "-h", f"{UID}:{UID}", str(data)], check=True)


# directory homes ---------------------------------------------------------------------------------


@pytest.fixture
def directory_homes(tmp_path: Path, other_file_system: Path) -> tuple[DirectoryStorage, DirectoryStorage]:
    source, target = DirectoryStorage(tmp_path / "fleet"), DirectoryStorage(other_file_system / "fleet-b")
    source.ensure_layout()
    target.ensure_layout()
    assert os.stat(source.root).st_dev != os.stat(target.root).st_dev
    return source, target


def test_directory_copy_brings_every_snapshot_then_only_the_new_ones(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage]) -> None:
    source, target = directory_homes
    data = source.create_instance("alice").data
    fill(data)
    source.snapshots.take("alice", data, "s1")
    (data / "Data" / "worlds" / "w1" / "world.json").write_text('{"title": "Two"}')
    source.snapshots.take("alice", data, "s2")

    first = copy_instance_data("alice", source, target, UID)

    assert first.snapshots == ("s1", "s2")
    assert first.bytes >= 4 * MIB
    assert target.snapshots.names("alice") == ["s1", "s2"]
    assert [s.created_at for s in target.snapshots.list("alice")] == [s.created_at for s in source.snapshots.list("alice")]
    for name in ("s1", "s2"):
        assert tree_of(target.snapshots.path("alice", name)) == tree_of(source.snapshots.path("alice", name))
    moved = target.paths("alice").data
    assert tree_of(moved) == tree_of(source.snapshots.path("alice", "s2")) | {"Data/shared": ("dir", "")}
    assert (moved / "Data" / "escape").is_symlink() and os.readlink(moved / "Data" / "escape") == "/etc"
    assert owners(moved) == {UID}
    # The unchanged database is one file in the target's two snapshots, as snapshots taken there would be.
    db = "Data/worlds/w1/data.db"
    assert (target.snapshots.path("alice", "s1") / db).stat().st_ino == (target.snapshots.path("alice", "s2") / db).stat().st_ino
    assert (moved / db).stat().st_ino != (target.snapshots.path("alice", "s2") / db).stat().st_ino  # live: a copy

    (data / "Data" / "worlds" / "w1" / "notes.txt").write_text("after the first copy")
    source.snapshots.take("alice", data, "s3")
    (moved / "Data" / "stray.txt").write_text("written at the target before the move committed")

    second = copy_instance_data("alice", source, target, UID)

    assert second.snapshots == ("s3",)
    assert target.snapshots.names("alice") == ["s1", "s2", "s3"]
    assert (moved / "Data" / "worlds" / "w1" / "notes.txt").read_text() == "after the first copy"
    assert not (moved / "Data" / "stray.txt").exists()  # the data is exactly the newest snapshot
    assert (target.snapshots.path("alice", "s2") / db).stat().st_ino == (target.snapshots.path("alice", "s3") / db).stat().st_ino

    again = copy_instance_data("alice", source, target, UID)
    assert again.snapshots == ()
    assert tree_of(moved) == tree_of(source.snapshots.path("alice", "s3")) | {"Data/shared": ("dir", "")}
    assert source.snapshots.names("alice") == ["s1", "s2", "s3"]


def test_directory_copy_interrupted_by_a_full_disk_keeps_nothing_half_made_and_goes_on_later(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage], other_file_system: Path) -> None:
    source, target = directory_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=2 * MIB)
    source.snapshots.take("alice", data, "s1")
    (data / "Data" / "worlds" / "w1" / "data.db").write_bytes(os.urandom(62 * MIB))
    source.snapshots.take("alice", data, "s2")

    with pytest.raises(ExternalFailure, match="copying snapshot s2 of alice failed: No space left on device"):
        copy_instance_data("alice", source, target, UID)

    assert target.snapshots.names("alice") == ["s1"]  # s1 came whole; of s2 nothing is left
    assert not [p for p in (target.root / "snapshots" / "alice").iterdir() if p.name.endswith(".partial")]

    subprocess.run(["mount", "-o", "remount,size=200m", str(other_file_system)], check=True)
    resumed = copy_instance_data("alice", source, target, UID)

    assert resumed.snapshots == ("s2",)
    assert tree_of(target.paths("alice").data) == tree_of(source.snapshots.path("alice", "s2")) | {
        "Data/shared": ("dir", "")}


def inodes(root: Path) -> dict[str, int]:
    """The inode of every regular file under `root`, by relative path (links and folders left out)."""
    return {str(Path(d, f).relative_to(root)): Path(d, f).lstat().st_ino
            for d, _, files in os.walk(root) for f in files if not Path(d, f).is_symlink()}


def modes(root: Path) -> dict[str, int]:
    """The permission bits of every entry under `root` but links, by relative path."""
    return {str(Path(d, n).relative_to(root)): Path(d, n).lstat().st_mode & 0o7777
            for d, dirs, files in os.walk(root) for n in [*dirs, *files]
            if not Path(d, n).is_symlink() and Path(d, n) != root / ".snapshot.json"}


def test_directory_copy_after_the_first_writes_only_what_changed_into_the_targets_data(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage]) -> None:
    """The last copy of a move runs while the instance is down: the target's data, made from the previous
    snapshot, keeps every file the newest one did not change (the same inodes, nothing written) and gets
    the rest, and ends exactly the newest snapshot: deletions, a file become a folder or a link, a folder
    become a file, a file made executable."""
    source, target = directory_homes
    data = source.create_instance("alice").data
    fill(data)
    w1 = data / "Data" / "worlds" / "w1"
    for i in range(20):
        (w1 / f"scene-{i}.json").write_bytes(os.urandom(64 * 1024))
    (data / "Data" / "to-folder").write_text("a file first")
    (data / "Data" / "to-link").write_text("a file first")
    (data / "Data" / "gone.txt").write_text("deleted before the final copy")
    (data / "Data" / "folder-to-file").mkdir()
    (data / "Data" / "folder-to-file" / "inside.txt").write_text("in a folder first")
    (data / "Data" / "tool.sh").write_text("echo hi\n")
    subprocess.run(["chown", "-R", "-h", f"{UID}:{UID}", str(data)], check=True)
    source.snapshots.take("alice", data, "s1")
    copy_instance_data("alice", source, target, UID)
    moved = target.paths("alice").data
    before = inodes(moved)

    (w1 / "world.json").write_text('{"title": "Two"}')  # changed, same folder as the unchanged database
    (w1 / "scene-3.json").write_bytes(os.urandom(64 * 1024))  # same size, new content
    (data / "Data" / "gone.txt").unlink()
    (data / "Data" / "to-folder").unlink()
    (data / "Data" / "to-folder").mkdir()
    (data / "Data" / "to-folder" / "now.txt").write_text("a folder now")
    (data / "Data" / "to-link").unlink()
    (data / "Data" / "to-link").symlink_to("/etc/hostname")
    for p in (data / "Data" / "folder-to-file").iterdir():
        p.unlink()
    (data / "Data" / "folder-to-file").rmdir()
    (data / "Data" / "folder-to-file").write_text("a file now")
    (data / "Data" / "tool.sh").chmod(0o755)
    (data / "Data" / "new.txt").write_text("new at the end")
    subprocess.run(["chown", "-R", "-h", f"{UID}:{UID}", str(data)], check=True)
    source.snapshots.take("alice", data, "s2")

    final = copy_instance_data("alice", source, target, UID)

    newest = target.snapshots.path("alice", "s2")
    assert final.snapshots == ("s2",)
    assert tree_of(moved) == tree_of(newest) | {"Data/shared": ("dir", "")} == \
        tree_of(source.snapshots.path("alice", "s2")) | {"Data/shared": ("dir", "")}
    assert owners(moved) == {UID}
    assert {k: v for k, v in modes(moved).items() if k != "Data/shared"} == {  # as a restore makes them
        k: 0o755 if (newest / k).is_dir() or v & 0o111 else 0o644 for k, v in modes(newest).items()}
    after = inodes(moved)
    changed = {"Data/worlds/w1/world.json", "Data/worlds/w1/scene-3.json", "Data/to-folder/now.txt",
               "Data/folder-to-file", "Data/tool.sh", "Data/new.txt"}
    kept = {path for path in after if path not in changed}
    assert kept == set(before) - changed - {"Data/gone.txt", "Data/to-folder", "Data/to-link",
                                             "Data/folder-to-file/inside.txt"}
    assert {path: after[path] for path in kept} == {path: before[path] for path in kept}  # not written again
    assert all(after[path] != before.get(path) for path in changed)
    # The bytes written: the new snapshot's changed files, then the same again into the data; not the
    # 4 MiB database nor the 1.2 MiB of unchanged scenes.
    assert 2 * 64 * 1024 <= final.bytes < 200 * 1024
    assert (moved / "Data" / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(moved / "Data" / "to-link") == "/etc/hostname"
    for path in after:  # the data's files are its own, never the snapshots' (a live write would change them)
        assert (moved / path).stat().st_ino != (newest / path).stat().st_ino
        assert (moved / path).stat().st_nlink == 1


def test_directory_copy_into_target_data_that_is_not_what_the_previous_copy_left_writes_it_all_again(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage]) -> None:
    """A target whose data is not what the last copy made of the previous snapshot (files rewritten there,
    another instance's leftover of the same name, a file linked elsewhere): whatever does not match as a
    restore leaves it is copied afresh, and the data ends exactly the snapshot."""
    source, target = directory_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=MIB)
    w1 = data / "Data" / "worlds" / "w1"
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (w1 / name).write_text(f"{name} as the tenant wrote it")
    subprocess.run(["chown", "-R", "-h", f"{UID}:{UID}", str(data)], check=True)
    source.snapshots.take("alice", data, "s1")
    copy_instance_data("alice", source, target, UID)
    moved = target.paths("alice").data
    t1 = moved / "Data" / "worlds" / "w1"
    # What the target's data holds now is no longer what the copy left:
    (t1 / "a.txt").write_text("a.txt rewritten there!!")  # same size, another time
    stamp = (t1 / "b.txt").stat()
    (t1 / "b.txt").chmod(0o600)  # same size and time, another mode
    os.chown(t1 / "c.txt", 0, 0)  # another owner
    os.link(t1 / "d.txt", moved / "d-elsewhere.txt")  # linked elsewhere: writing one would change the other
    (t1 / "leftover.bin").write_bytes(b"another instance's")
    (t1 / "data.db").unlink()
    (t1 / "data.db").mkdir()  # a folder where the snapshot has a file
    os.utime(t1 / "b.txt", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    before = inodes(moved)
    (data / "Data" / "more.txt").write_text("so that there is a second snapshot")
    source.snapshots.take("alice", data, "s2")

    copy_instance_data("alice", source, target, UID)

    assert tree_of(moved) == tree_of(source.snapshots.path("alice", "s2")) | {"Data/shared": ("dir", "")}
    assert owners(moved) == {UID}
    after = inodes(moved)
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        assert after[f"Data/worlds/w1/{name}"] != before[f"Data/worlds/w1/{name}"], name
        assert (t1 / name).stat().st_mode & 0o777 == 0o644 and (t1 / name).stat().st_nlink == 1
    assert (t1 / "data.db").is_file() and not (t1 / "leftover.bin").exists() and not (moved / "d-elsewhere.txt").exists()
    assert after["Data/worlds/w1/world.json"] == before["Data/worlds/w1/world.json"]  # still as restored: kept


def test_directory_final_copy_interrupted_between_its_renames_is_finished_by_the_next(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage]) -> None:
    """The data swapped in by renames: a crash between them (the data moved aside, the new one beside it,
    sharing its unchanged files) is put right, and the copy run again ends exactly the snapshot."""
    from foundry_fleet.storage.snapshots import RESTORE_NEW, RESTORE_OLD

    source, target = directory_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=MIB)
    source.snapshots.take("alice", data, "s1")
    copy_instance_data("alice", source, target, UID)
    (data / "Data" / "worlds" / "w1" / "world.json").write_text('{"title": "Two"}')
    source.snapshots.take("alice", data, "s2")
    copy_instance_data("alice", source, target, UID)
    moved = target.paths("alice").data
    # Rewind to the crash point: the s1 data aside, the s2 data not yet renamed into place.
    os.rename(moved, moved.parent / RESTORE_NEW)
    os.mkdir(moved.parent / RESTORE_OLD)
    (moved.parent / RESTORE_OLD / "stale.txt").write_text("the data the copy replaced")

    again = copy_instance_data("alice", source, target, UID)

    assert again.snapshots == ()
    assert tree_of(moved) == tree_of(source.snapshots.path("alice", "s2")) | {"Data/shared": ("dir", "")}
    assert not (moved.parent / RESTORE_NEW).exists() and not (moved.parent / RESTORE_OLD).exists()


def test_directory_discard_removes_data_install_and_snapshots(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage]) -> None:
    source, target = directory_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=MIB)
    source.snapshots.take("alice", data, "s1")
    copy_instance_data("alice", source, target, UID)

    assert discard_copy("alice", target) is True

    assert not target.paths("alice").root.exists()
    assert not (target.root / "snapshots" / "alice").exists()
    assert target.snapshots.names("alice") == []
    assert discard_copy("alice", target) is False
    assert source.snapshots.names("alice") == ["s1"] and (data / "Data" / "worlds" / "w1" / "data.db").is_file()


def test_a_copy_needs_a_snapshot_and_homes_of_one_driver(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage], tmp_path: Path) -> None:
    source, target = directory_homes
    with pytest.raises(NotFound, match="alice has no data under"):
        copy_instance_data("alice", source, target, UID)
    source.create_instance("alice")

    with pytest.raises(InvalidInput, match="alice has no snapshot") as e:
        copy_instance_data("alice", source, target, UID)
    assert "backup now" in (e.value.hint or "")
    assert not target.paths("alice").root.exists()

    zfs_home = ZfsStorage(tmp_path / "never-used", "nopool/fleet")  # nothing is asked of it
    with pytest.raises(Unsupported, match="from directory storage to zfs storage"):
        copy_instance_data("alice", source, zfs_home, UID)
    with pytest.raises(InvalidInput, match="not an instance name"):
        copy_instance_data("../alice", source, target, UID)


# ZFS homes ---------------------------------------------------------------------------------------


@pytest.fixture
def zfs_homes(tmp_path: Path, zfs_base: str, second_zfs_base: str) -> tuple[ZfsStorage, ZfsStorage]:
    source = ZfsStorage(tmp_path / "fleet", zfs_base, quota_bytes=QUOTA)
    target = ZfsStorage(tmp_path / "fleet-b", second_zfs_base, quota_bytes=QUOTA)
    source.ensure_layout()
    target.ensure_layout()
    return source, target


def zfs_snapshots(dataset: str) -> list[str]:
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-r", dataset).stdout
    return [line.split("@", 1)[1] for line in out.splitlines() if line.startswith(dataset + "@")]


def test_zfs_copy_sends_in_full_then_the_difference(zfs_homes: tuple[ZfsStorage, ZfsStorage]) -> None:
    source, target = zfs_homes
    data = source.create_instance("alice").data
    fill(data)
    source.snapshots.take("alice", data, "s1")
    (data / "Data" / "worlds" / "w1" / "world.json").write_text('{"title": "Two"}')
    source.snapshots.take("alice", data, "s2")
    source.snapshots.take("alice", data, "s3")

    first = copy_instance_data("alice", source, target, UID)

    assert first == Copied(("s1", "s2", "s3"), first.bytes)
    assert first.bytes >= 4 * MIB  # the stream carried the database
    copy = target.layout.data("alice")
    assert zfs_snapshots(copy) == ["s1", "s2", "s3"]
    moved = target.paths("alice").data
    assert os.path.ismount(moved)
    assert tree_of(moved) == tree_of(data)
    assert owners(moved) == {UID}
    assert zfs("get", "-H", "-p", "-o", "value", "quota", copy).stdout.strip() == str(QUOTA)
    assert zfs("get", "-H", "-o", "value", "mountpoint", copy).stdout.strip() == str(moved)
    assert target.snapshots.names("alice") == ["s1", "s2", "s3"]
    assert tree_of(target.snapshots.path("alice", "s1")) == tree_of(source.snapshots.path("alice", "s1"))

    (data / "Data" / "worlds" / "w1" / "notes.txt").write_text("after the first copy")
    source.snapshots.take("alice", data, "s4")
    (moved / "Data" / "stray.txt").write_text("written at the target before the move committed")

    second = copy_instance_data("alice", source, target, UID)

    assert second.snapshots == ("s4",)
    assert 0 < second.bytes < MIB  # only the difference: not the database again
    assert zfs_snapshots(copy) == ["s1", "s2", "s3", "s4"]
    assert (moved / "Data" / "worlds" / "w1" / "notes.txt").read_text() == "after the first copy"
    assert not (moved / "Data" / "stray.txt").exists()
    assert tree_of(moved) == tree_of(data)

    (moved / "Data" / "stray.txt").write_text("again")
    again = copy_instance_data("alice", source, target, UID)
    assert again == Copied((), 0)
    assert not (moved / "Data" / "stray.txt").exists()  # the data is exactly the newest snapshot
    assert zfs_snapshots(source.layout.data("alice")) == ["s1", "s2", "s3", "s4"]  # the source was only read


def test_zfs_copy_drops_what_the_target_has_beyond_the_common_snapshot(
        zfs_homes: tuple[ZfsStorage, ZfsStorage]) -> None:
    source, target = zfs_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=MIB)
    source.snapshots.take("alice", data, "s1")
    copy_instance_data("alice", source, target, UID)
    zfs("snapshot", f"{target.layout.data('alice')}@only-here")  # a leftover: not in the source's line
    (data / "Data" / "late.txt").write_text("late")
    source.snapshots.take("alice", data, "s2")

    copied = copy_instance_data("alice", source, target, UID)

    assert copied.snapshots == ("s2",)
    assert zfs_snapshots(target.layout.data("alice")) == ["s1", "s2"]
    assert (target.paths("alice").data / "Data" / "late.txt").read_text() == "late"


def test_zfs_copy_with_nothing_in_common_is_made_again_in_full(zfs_homes: tuple[ZfsStorage, ZfsStorage]) -> None:
    source, target = zfs_homes
    target.create_instance("alice")  # an earlier, unrelated copy: no snapshot shared with the source
    (target.paths("alice").data / "old.txt").write_text("old")
    zfs("snapshot", f"{target.layout.data('alice')}@old")
    data = source.create_instance("alice").data
    fill(data, big_bytes=MIB)
    source.snapshots.take("alice", data, "s1")

    copied = copy_instance_data("alice", source, target, UID)

    assert copied.snapshots == ("s1",)
    assert zfs_snapshots(target.layout.data("alice")) == ["s1"]
    assert tree_of(target.paths("alice").data) == tree_of(data)


def test_zfs_discard_destroys_the_copy(zfs_homes: tuple[ZfsStorage, ZfsStorage]) -> None:
    source, target = zfs_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=MIB)
    source.snapshots.take("alice", data, "s1")
    copy_instance_data("alice", source, target, UID)

    assert discard_copy("alice", target) is True

    assert not target.zfs.exists(target.layout.instance("alice"))
    assert not target.paths("alice").root.exists()
    assert discard_copy("alice", target) is False
    assert zfs_snapshots(source.layout.data("alice")) == ["s1"] and os.path.ismount(data)


def test_zfs_copy_without_a_snapshot_is_refused(zfs_homes: tuple[ZfsStorage, ZfsStorage]) -> None:
    source, target = zfs_homes
    with pytest.raises(NotFound, match="alice has no data in"):
        copy_instance_data("alice", source, target, UID)
    source.create_instance("alice")
    with pytest.raises(InvalidInput, match="alice has no snapshot"):
        copy_instance_data("alice", source, target, UID)
    assert not target.zfs.exists(target.layout.instance("alice"))


def test_zfs_copy_goes_on_after_a_stream_broken_half_way(zfs_homes: tuple[ZfsStorage, ZfsStorage]) -> None:
    source, target = zfs_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=MIB)
    source.snapshots.take("alice", data, "s1")
    copy_instance_data("alice", source, target, UID)
    (data / "Data" / "worlds" / "w1" / "data.db").write_bytes(os.urandom(6 * MIB))
    source.snapshots.take("alice", data, "s2")
    src, dst = source.layout.data("alice"), target.layout.data("alice")
    # What a copy killed half way leaves: a receive that got only part of its stream.
    broken = subprocess.run(f"zfs send -I {src}@s1 {src}@s2 | head -c 1000000 | zfs recv -u -F {dst}", shell=True,
                            capture_output=True, text=True)
    assert broken.returncode != 0 and "invalid backup stream" in broken.stderr

    copied = copy_instance_data("alice", source, target, UID)

    assert copied.snapshots == ("s2",) and copied.bytes >= 6 * MIB
    assert tree_of(target.paths("alice").data) == tree_of(data)


def test_replication_goes_on_from_the_new_home_with_what_it_already_sent(
        zfs_homes: tuple[ZfsStorage, ZfsStorage], zfs_base: str) -> None:
    source, target = zfs_homes
    data = source.create_instance("alice").data
    fill(data, big_bytes=2 * MIB)
    source.snapshots.take("alice", data, "s1")
    home = {"alice": source}  # what the fleet reads an instance's home from
    offsite = ZfsDestination(f"{zfs_base}/offsite", lambda instance: home[instance].layout.data(instance))
    assert offsite.send("alice", ["s1"], None, "s1") >= 2 * MIB

    copy_instance_data("alice", source, target, UID)
    home["alice"] = target  # the move commits
    moved = target.paths("alice").data
    (moved / "Data" / "after.txt").write_text("written on the new home")
    target.snapshots.take("alice", moved, "s2")

    sent = offsite.send("alice", ["s1", "s2"], "s1", "s2")  # incremental: the copy kept the snapshots' identity

    assert sent < MIB
    assert offsite.snapshots("alice") == ["s1", "s2"]


def test_zfs_copy_of_data_above_the_target_homes_limit_is_received_and_held_at_its_usage(
        tmp_path: Path, zfs_base: str, second_zfs_base: str) -> None:
    source = ZfsStorage(tmp_path / "fleet", zfs_base, quota_bytes=QUOTA)
    target = ZfsStorage(tmp_path / "fleet-b", second_zfs_base, quota_bytes=4 * MIB)  # a smaller limit there
    source.ensure_layout()
    target.ensure_layout()
    data = source.create_instance("alice", QUOTA).data
    fill(data, big_bytes=6 * MIB)
    source.snapshots.take("alice", data, "s1")
    (data / "Data" / "more.bin").write_bytes(os.urandom(MIB))
    source.snapshots.take("alice", data, "s2")

    first = copy_instance_data("alice", source, target, UID)
    assert first.snapshots == ("s1", "s2")

    copy = target.layout.data("alice")
    quota = int(zfs("get", "-H", "-p", "-o", "value", "quota", copy).stdout)
    used = int(zfs("get", "-H", "-p", "-o", "value", "used", copy).stdout)
    assert quota >= used > 4 * MIB  # held at its usage: the tenant cannot write more
    assert zfs("get", "-H", "-p", "-o", "value", "foundry-fleet:limit", copy).stdout.strip() == str(4 * MIB)
    (data / "Data" / "more.bin").write_bytes(os.urandom(2 * MIB))
    source.snapshots.take("alice", data, "s3")
    assert copy_instance_data("alice", source, target, UID).snapshots == ("s3",)  # the quota is lifted meanwhile
    assert tree_of(target.paths("alice").data) == tree_of(data)


def test_directory_copy_never_links_through_a_link_the_tenant_swapped_for_a_folder(
        directory_homes: tuple[DirectoryStorage, DirectoryStorage], other_file_system: Path) -> None:
    """A folder that was a link to somewhere else in the previous snapshot: the target's previous tree is
    never entered through it, so a file there of the same size and time is not taken for the tenant's
    (it is on the target's file system: a link to it would work, and must not be made)."""
    source, target = directory_homes
    outside = other_file_system / "outside"
    outside.mkdir()
    (outside / "f").write_text("host secret")
    data = source.create_instance("alice").data
    (data / "Data" / "x").symlink_to(outside)
    source.snapshots.take("alice", data, "s1")
    (data / "Data" / "x").unlink()
    (data / "Data" / "x").mkdir()
    (data / "Data" / "x" / "f").write_text("tenant data")  # same size as the host's file
    times = os.stat(outside / "f")
    os.utime(data / "Data" / "x" / "f", ns=(times.st_atime_ns, times.st_mtime_ns))  # and the same time
    source.snapshots.take("alice", data, "s2")

    copy_instance_data("alice", source, target, UID)

    s1, s2 = target.snapshots.path("alice", "s1"), target.snapshots.path("alice", "s2")
    assert os.readlink(s1 / "Data" / "x") == str(outside)
    assert (s2 / "Data" / "x" / "f").read_text() == "tenant data"
    assert (s2 / "Data" / "x" / "f").stat().st_ino != (outside / "f").stat().st_ino
    assert (target.paths("alice").data / "Data" / "x" / "f").read_text() == "tenant data"
    assert (outside / "f").read_text() == "host secret"
