"""Snapshots of an instance's data as plain directory trees, for hosts without ZFS.

Each snapshot is a full, read-only tree. A file whose content is the same as in the previous
snapshot is a hard link to that snapshot's copy, so it costs no space: same size and modification
time (to the nanosecond) is taken as the same, and a file of the same size whose time differs is
compared byte for byte (a touched file is not copied again); a changed or new file is copied. A
snapshot never links to a live file: Foundry appends to its databases in place, and a link would let
the live file rewrite the snapshot.

The tenant's instance may be running, and hostile, while its data is copied: the copy walks from
directory descriptors and never follows a link (see `tenant_tree`). The snapshot's metadata file is
the fleet's, so a tenant's file of that name at the top of its data is left out.

A snapshot is built as `<name>.partial` and renamed when complete, so a crash leaves no half
snapshot that looks whole; leftovers are swept the next time.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.storage.ownership import ensure_shared_mount_point
from foundry_fleet.storage.tenant_tree import (
    DIR_FLAGS,
    FILE_FLAGS,
    NEW_FILE_FLAGS,
    CopyStats,
    Parts,
    Reuse,
    copy_tree,
    open_root,
    reported_as,
)
from foundry_fleet.storage.trees import remove_tree

PARTIAL = ".partial"
META = ".snapshot.json"
SHARED_MOUNT = instance_layout.SHARED_MOUNT.parts  # the shared assets' mount point, not the tenant's data
# Markers an older fleet wrote into a ZFS instance's data while restoring: never data, never restored.
LEGACY_MARKERS = (".fleet-restore", ".fleet-restore.new")


def not_snapshotted(parts: Parts) -> bool:
    """What a snapshot leaves out of the data: the shared assets' mount point, and the metadata's name."""
    return parts == SHARED_MOUNT or parts == (META,)


def not_restored(parts: Parts) -> bool:
    """What a restore leaves out of a snapshot: the above, ZFS's control folder, and the markers older
    fleets wrote (a ZFS snapshot holds whatever the data held)."""
    return not_snapshotted(parts) or (len(parts) == 1 and parts[0] in (".zfs", *LEGACY_MARKERS))


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    created_at: float
    bytes_new: int  # bytes this snapshot added on disk (copied files)
    files: int
    bytes_total: int = 0  # size of all its files: what a download of it weighs

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "created_at": self.created_at, "bytes_new": self.bytes_new, "files": self.files,
                "bytes_total": self.bytes_total}


def _valid_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or name.endswith(PARTIAL) or len(name) > 200:
        raise InvalidInput(f"{name!r} is not a snapshot name", "use letters, digits, dashes and dots")
    return name


class DirectorySnapshots:
    """Snapshots of `instances/<id>/data` under `snapshots/<id>/<name>`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, instance: str) -> Path:
        return self.root / "snapshots" / instance

    def path(self, instance: str, name: str) -> Path:
        p = self._dir(instance) / _valid_name(name)
        if not p.is_dir():
            raise NotFound(f"instance {instance} has no snapshot {name!r}", f"see `foundry-fleet backup list {instance}`")
        return p

    def names(self, instance: str) -> list[str]:
        """Just the names (what the scheduler needs, without reading each snapshot's details)."""
        d = self._dir(instance)
        if not d.is_dir():
            return []
        return sorted(e.name for e in os.scandir(d)
                      if not e.name.endswith(PARTIAL) and not e.name.startswith(".") and e.is_dir(follow_symlinks=False))

    def list(self, instance: str) -> list[SnapshotInfo]:
        d = self._dir(instance)
        if not d.is_dir():
            return []
        out = []
        for entry in os.scandir(d):
            if entry.name.endswith(PARTIAL) or entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            meta = _read_meta(Path(entry.path))
            out.append(SnapshotInfo(entry.name, meta.get("created_at", entry.stat().st_mtime),
                                    int(meta.get("bytes_new", 0)), int(meta.get("files", 0)),
                                    int(meta.get("bytes_total", 0))))
        return sorted(out, key=lambda s: (s.created_at, s.name))

    def take(self, instance: str, data: Path, name: str) -> SnapshotInfo:
        d, final = self._new(instance, name, "choose another label")
        self._sweep(d)
        previous = self.list(instance)
        prev_dir = d / previous[-1].name if previous else None
        staging = d / (name + PARTIAL)
        os.mkdir(staging, 0o700)
        try:
            with reported_as(f"the snapshot of {instance} failed", "nothing was kept of it; the data is untouched"):
                stats, created = _fill(data, staging, prev_dir)
        except BaseException:
            remove_tree(staging)  # a tenant's tree that cannot be copied fails its snapshot, and leaves nothing
            raise
        os.rename(staging, final)
        return SnapshotInfo(name, created, stats.bytes_new, stats.files, stats.bytes_total)

    def _new(self, instance: str, name: str, hint: str) -> tuple[Path, Path]:
        """The instance's snapshot directory (made private) and where snapshot `name` goes, not there yet."""
        _valid_name(name)
        d = self._dir(instance)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        final = d / name
        if final.exists():
            raise Conflict(f"instance {instance} already has a snapshot named {name!r}", hint)
        return d, final

    def receive(self, instance: str, name: str, tree: Path, previous: str | None) -> CopyStats:
        """Make `tree` (the same instance's snapshot in another home) this home's snapshot `name`, its
        metadata kept: a file unchanged since this home's snapshot `previous` is a hard link to it, as a
        snapshot taken here would be. Built as `<name>.partial` too, so an interruption leaves nothing."""
        d, final = self._new(instance, name, "discard it first")
        staging = d / (name + PARTIAL)
        remove_tree(staging)
        os.mkdir(staging, 0o700)
        try:
            with reported_as(f"copying snapshot {name} of {instance} failed", "nothing was kept of that copy"):
                stats = _copy_sealed(tree, staging, self.path(instance, previous) if previous else None)
        except BaseException:
            remove_tree(staging)
            raise
        os.rename(staging, final)
        return stats

    def take_many(self, targets: list[tuple[str, Path]], name: str) -> list[SnapshotInfo]:
        """One snapshot per (instance, data): separate trees, so one after the other, not atomic."""
        return [self.take(instance, data, name) for instance, data in targets]

    def destroy(self, instance: str, name: str) -> None:
        remove_tree(self.path(instance, name))

    def restore(self, instance: str, name: str, data: Path, uid: int | None) -> None:
        source = self.path(instance, name)
        with reported_as(f"restoring {name} into {instance} failed", "its data was not replaced; the copy was dropped"):
            restore_into(source, data, uid)

    def finish_restore(self, instance: str, data: Path) -> str | None:
        del instance
        return finish_restore(data)

    def restoring(self, instance: str) -> str | None:
        """Never: a directory restore is a copy beside the data and two renames, and a failed copy leaves
        the data as it was (a crash between the renames is put right by `finish_restore`)."""
        del instance
        return None

    def sweep_views(self, idle_seconds: float = 0.0) -> int:
        """Snapshots are directories already: there are no views to clean up."""
        del idle_seconds
        return 0

    def destroy_all(self, instance: str) -> None:
        remove_tree(self._dir(instance))

    def _sweep(self, d: Path) -> None:
        for entry in os.scandir(d):
            if entry.name.endswith(PARTIAL):
                remove_tree(Path(entry.path))


def _fill(data: Path, staging: Path, previous: Path | None) -> tuple[CopyStats, float]:
    """Copy the live data into `staging`, sealed, linking what `previous` already holds; then the metadata."""
    src = open_root(data)
    dst = open_root(staging)
    prev = open_root(previous) if previous is not None else None
    try:
        stats = copy_tree(src, dst, skip=not_snapshotted, seal=True, previous_fd=prev)
        created = time.time()
        meta = {"created_at": created, "bytes_new": stats.bytes_new, "files": stats.files,
                "bytes_total": stats.bytes_total, "skipped": stats.skipped, "skipped_examples": stats.examples}
        fd = os.open(META, NEW_FILE_FLAGS, 0o444, dir_fd=dst)
        try:
            os.write(fd, json.dumps(meta).encode())
        finally:
            os.close(fd)
        os.fchmod(dst, 0o555)
        return stats, created
    finally:
        for fd in (src, dst, prev):
            if fd is not None:
                os.close(fd)


def _copy_sealed(tree: Path, staging: Path, previous: Path | None) -> CopyStats:
    """Copy a snapshot tree into `staging`, sealed, linking what `previous` already holds; its metadata as is."""
    src = open_root(tree)
    dst = open_root(staging)
    prev = open_root(previous) if previous is not None else None
    try:
        stats = copy_tree(src, dst, skip=not_snapshotted, seal=True, previous_fd=prev)
        fd = os.open(META, NEW_FILE_FLAGS, 0o444, dir_fd=dst)
        try:
            os.write(fd, json.dumps(_read_meta(tree)).encode())
        finally:
            os.close(fd)
        os.fchmod(dst, 0o555)
        return stats
    finally:
        for fd in (src, dst, prev):
            if fd is not None:
                os.close(fd)


def _read_meta(path: Path) -> dict:
    try:
        fd = os.open(path / META, FILE_FLAGS)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        return json.loads(os.read(fd, 1 << 16))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


RESTORE_NEW = "data.restore-new"
RESTORE_OLD = "data.restore-old"


def restore_into(snapshot: Path, data: Path, uid: int | None, restored_from: Path | None = None) -> CopyStats:
    """Make `data` exactly the snapshot's content, as fresh writable files (never links into it).

    Steps, each safe to crash in (see `finish_restore`): copy the snapshot beside the live data,
    move the live data aside, move the copy into place, delete what was moved aside.

    `restored_from`: the snapshot (of the same line, older) `data` was last made from, when nothing has
    run on it since (a move's target between its copies). The copy then takes over, as hard links, the
    files the data still holds exactly as restored and that the two snapshots share (see tenant_tree's
    `Reuse`): only what changed is written, and the data moved aside loses only the names; whatever
    does not match (a file changed, gone, of another kind, or data that is not what that restore left)
    is copied from the snapshot as without it, so the result is the snapshot either way.
    """
    new, old = data.parent / RESTORE_NEW, data.parent / RESTORE_OLD
    remove_tree(new)
    os.mkdir(new, 0o700)
    src, dst = open_root(snapshot), open_root(new)
    reuse = _reusable(data, restored_from)
    try:
        stats = copy_restored(src, dst, uid, reuse)
    except BaseException:
        remove_tree(new)  # the live data was not touched yet
        raise
    finally:
        for fd in (src, dst, *((reuse.data_fd, reuse.restored_from_fd) if reuse is not None else ())):
            os.close(fd)
    remove_tree(old)
    os.rename(data, old)
    os.rename(new, data)
    remove_tree(old)
    return stats


def _reusable(data: Path, restored_from: Path | None) -> Reuse | None:
    """Both trees opened for `Reuse`; None when there is nothing to take over (no data, no snapshot)."""
    if restored_from is None:
        return None
    try:
        data_fd = os.open(data, DIR_FLAGS)
    except OSError:
        return None  # no data yet (or not a folder): everything is copied
    try:
        return Reuse(data_fd, open_root(restored_from))
    except BaseException:
        os.close(data_fd)
        raise


def copy_restored(snapshot_fd: int, data_fd: int, uid: int | None, reuse: Reuse | None = None) -> CopyStats:
    """Copy a snapshot into an empty data directory as the instance's own data: directories 0755 (the top
    0700), files 0644 or 0755, everything owned by `uid`, except `Data/shared`, the shared assets' mount
    point, which is root's. Nothing is followed: a `Data` that the snapshot holds as a link stays a link
    (the instance will not start until it is a folder), and no mount point is made through it."""
    stats = copy_tree(snapshot_fd, data_fd, skip=not_restored, owner=uid, reuse=reuse)
    os.fchmod(data_fd, 0o700)
    if uid is not None:
        os.fchown(data_fd, uid, uid)
    ensure_shared_mount_point(data_fd, uid)
    return stats


def finish_restore(data: Path) -> str | None:
    """Put right a restore that was interrupted; says what was done (None: nothing to do)."""
    new, old = data.parent / RESTORE_NEW, data.parent / RESTORE_OLD
    if not data.exists() and new.exists():
        os.rename(new, data)  # the copy was complete (it is renamed only after), the swap was not
        remove_tree(old)
        return "completed an interrupted restore"
    if not data.exists() and old.exists():
        os.rename(old, data)
        return "put the data back after an interrupted restore"
    done = None
    if new.exists():
        remove_tree(new)  # a copy interrupted before the swap: the live data was never touched
        done = "dropped a half-made restore copy"
    if old.exists():
        remove_tree(old)
        done = "removed the data a finished restore replaced"
    return done
