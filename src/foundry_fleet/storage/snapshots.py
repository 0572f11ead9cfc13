"""Snapshots of an instance's data as plain directory trees, for hosts without ZFS.

Each snapshot is a full, read-only tree. A file unchanged since the previous snapshot (same size
and modification time, to the nanosecond) is a hard link to that snapshot's copy, so it costs no
space; a changed or new file is copied. A snapshot never links to a live file: Foundry appends to
its databases in place, and a link would let the live file rewrite the snapshot.

A snapshot is built as `<name>.partial` and renamed when complete, so a crash leaves no half
snapshot that looks whole; leftovers are swept the next time.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.storage.trees import remove_tree

PARTIAL = ".partial"
# Never part of a snapshot: the mount point of the fleet's shared assets (not the tenant's data).
SKIP = {os.path.join("Data", "shared")}


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
        _valid_name(name)
        d = self._dir(instance)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        final = d / name
        if final.exists():
            raise Conflict(f"instance {instance} already has a snapshot named {name!r}", "choose another label")
        self._sweep(d)
        previous = self.list(instance)
        prev_dir = d / previous[-1].name if previous else None
        staging = d / (name + PARTIAL)
        files, bytes_new, bytes_total = _copy_tree(data, staging, prev_dir)
        created = time.time()
        _write_meta(staging, {"created_at": created, "bytes_new": bytes_new, "files": files, "bytes_total": bytes_total})
        _seal(staging)
        os.rename(staging, final)
        return SnapshotInfo(name, created, bytes_new, files, bytes_total)

    def take_many(self, targets: list[tuple[str, Path]], name: str) -> list[SnapshotInfo]:
        """One snapshot per (instance, data): separate trees, so one after the other, not atomic."""
        return [self.take(instance, data, name) for instance, data in targets]

    def destroy(self, instance: str, name: str) -> None:
        remove_tree(self.path(instance, name))

    def restore(self, instance: str, name: str, data: Path, uid: int | None) -> None:
        restore_into(self.path(instance, name), data, uid)

    def finish_restore(self, instance: str, data: Path) -> str | None:
        del instance
        return finish_restore(data)

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


META = ".snapshot.json"


def _read_meta(path: Path) -> dict:
    import json

    try:
        return json.loads((path / META).read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    import json

    (path / META).write_text(json.dumps(meta))


def _copy_tree(src: Path, dst: Path, previous: Path | None) -> tuple[int, int, int]:
    """Copy `src` to `dst`, hard-linking files unchanged since `previous`;
    returns (files, bytes copied, bytes of all files)."""
    files = copied = total = 0
    dst.mkdir()
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        target_dir = dst if rel_dir == "." else dst / rel_dir
        for d in list(dirnames):
            rel = os.path.normpath(os.path.join(rel_dir, d))
            full = os.path.join(dirpath, d)
            if rel in SKIP or os.path.islink(full):
                dirnames.remove(d)  # never follow a link out of the data, never into shared assets
                if os.path.islink(full) and rel not in SKIP:
                    os.symlink(os.readlink(full), target_dir / d)
                continue
            (target_dir / d).mkdir()
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(full), target_dir / f)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # sockets, fifos: not data
            files += 1
            total += st.st_size
            if previous is not None:
                old = previous / rel
                try:
                    ost = os.lstat(old)
                except FileNotFoundError:
                    ost = None
                if ost is not None and stat.S_ISREG(ost.st_mode) and ost.st_size == st.st_size \
                        and ost.st_mtime_ns == st.st_mtime_ns:
                    os.link(old, target_dir / f)
                    continue
            shutil.copy2(full, target_dir / f, follow_symlinks=False)
            copied += st.st_blocks * 512
    return files, copied, total


def _seal(path: Path) -> None:
    """Snapshots are read-only: files 0444 (0555 if executable), directories 0555."""
    for dirpath, _dirnames, filenames in os.walk(path, topdown=False):
        for f in filenames:
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:  # linked ones are sealed already
                os.chmod(full, 0o555 if st.st_mode & 0o111 else 0o444)
        os.chmod(dirpath, 0o555)


RESTORE_NEW = "data.restore-new"
RESTORE_OLD = "data.restore-old"


def restore_into(snapshot: Path, data: Path, uid: int | None) -> None:
    """Make `data` exactly the snapshot's content, as fresh writable files (never links into it).

    Steps, each safe to crash in (see `finish_restore`): copy the snapshot beside the live data,
    move the live data aside, move the copy into place, delete what was moved aside.
    """
    new, old = data.parent / RESTORE_NEW, data.parent / RESTORE_OLD
    remove_tree(new)
    shutil.copytree(snapshot, new, symlinks=True, ignore=shutil.ignore_patterns(META))
    own_restored_tree(new, uid)
    remove_tree(old)
    os.rename(data, old)
    os.rename(new, data)
    remove_tree(old)


def own_restored_tree(root: Path, uid: int | None, leave: frozenset[str] = frozenset()) -> None:
    """Make a restored copy the instance's own data: directories 0755 (`root` itself 0700), files 0644 or
    0755, everything owned by `uid`, except `Data/shared`, the shared assets' mount point, which is
    root's. `leave` names files at the top that are not the instance's (left as they are)."""
    shared = root / "Data" / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(root):
        at_top = dirpath == str(root)
        os.chmod(dirpath, 0o700 if at_top else 0o755)
        for f in filenames:
            if at_top and f in leave:
                continue
            full = os.path.join(dirpath, f)
            if not os.path.islink(full):
                os.chmod(full, 0o755 if os.stat(full).st_mode & 0o111 else 0o644)
            if uid is not None:
                os.lchown(full, uid, uid)
        if uid is not None:
            os.lchown(dirpath, uid, uid)
            for d in dirnames:  # links to directories are listed here but never walked into
                if os.path.islink(os.path.join(dirpath, d)):
                    os.lchown(os.path.join(dirpath, d), uid, uid)
    if uid is not None:
        os.lchown(shared, 0, 0)


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
