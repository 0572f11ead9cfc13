"""A tenant's snapshots as the backups pages read them: the list, a folder, a file, a whole snapshot as
one zip made as it is streamed.

Paths never leave the snapshot: every name is opened from its folder's descriptor, links are neither
followed nor served, and FIFOs (a ZFS snapshot holds whatever the tenant made) never block. The
snapshot's own metadata and ZFS's `.zfs` are not part of what a tenant sees. The zip walks the tree
without recursion, so no depth breaks it.
"""

from __future__ import annotations

import io
import os
import stat
import time
import zipfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.storage.base import Snapshots
from foundry_fleet.storage.snapshots import META, SnapshotInfo
from foundry_fleet.storage.tenant_tree import DIR_FLAGS, FILE_FLAGS, Kind, walk

CHUNK = 256 * 1024
_HIDDEN = (META, ".zfs")  # at a snapshot's top: the fleet's metadata, and ZFS's snapshot directory
# An export is what another host needs to run the game: the tenant's data and Foundry's options, without
# the licence (bound to the tenant, not the data), the admin password's hash, or the shared assets.
_EXPORTED = (instance_layout.DATA.parts, instance_layout.CONFIG.parts)
_NOT_EXPORTED = (instance_layout.SHARED_MOUNT.parts, instance_layout.LICENSE.parts,
                 instance_layout.ADMIN_PASSWORD.parts)


@dataclass(frozen=True)
class FolderEntry:
    name: str  # as stored (may hold bytes that are not UTF-8: see `shown_name`)
    is_dir: bool


@dataclass(frozen=True)
class SnapshotFolder:
    entries: list[FolderEntry]  # sorted by name; links left out


@dataclass(frozen=True)
class SnapshotFile:
    file: io.FileIO  # open for reading: whoever takes it closes it
    size: int


def shown_name(name: str) -> str:
    """A name as text a page or a zip can hold (bytes that are not UTF-8 shown as U+FFFD)."""
    return os.fsencode(name).decode("utf-8", "replace")


class SnapshotFiles:
    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots

    def list(self, instance: str) -> list[SnapshotInfo]:
        return self.snapshots.list(instance)

    def exists(self, instance: str, snapshot: str) -> bool:
        try:
            os.close(os.open(self.snapshots.path(instance, snapshot), DIR_FLAGS))
        except (FleetError, OSError):
            return False
        return True

    def open(self, instance: str, snapshot: str, parts: list[str]) -> SnapshotFolder | SnapshotFile | None:
        """The folder or regular file at `parts` inside the snapshot, or None when there is none (or
        it is a link, a FIFO, a device, or hidden). NotFound for a snapshot the instance does not have."""
        root = self.snapshots.path(instance, snapshot)
        if parts[:1] in ([name] for name in _HIDDEN):
            return None
        fd = _open(root, parts)
        if fd is None:
            return None
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return SnapshotFile(os.fdopen(fd, "rb", buffering=0), st.st_size)  # type: ignore[arg-type]
        try:
            if not stat.S_ISDIR(st.st_mode):
                return None
            with os.scandir(fd) as it:
                entries = sorted(((e.name, e.is_dir(follow_symlinks=False)) for e in it
                                  if not e.is_symlink() and not (not parts and e.name in _HIDDEN)))
        finally:
            os.close(fd)
        return SnapshotFolder([FolderEntry(name, is_dir) for name, is_dir in entries])

    def zip_stream(self, instance: str, snapshot: str) -> Iterator[bytes]:
        """A zip of every regular file of the snapshot (links skipped, never followed), piece by piece."""
        return zip_stream(self.snapshots.path(instance, snapshot))

    def export_stream(self, instance: str, snapshot: str) -> Generator[bytes, None, None]:
        """The zip an instance is exported as (see `_EXPORTED`), from one of its snapshots."""
        return zip_stream(self.snapshots.path(instance, snapshot), skip=not_exported)


def not_exported(parts: tuple[str, ...]) -> bool:
    return parts[:1] not in _EXPORTED or parts in _NOT_EXPORTED


def _open(root: Path, parts: list[str]) -> int | None:
    """The entry under `root`, opened step by step from directory descriptors, refusing every symbolic
    link on the way and at the end (nothing is followed), and never blocking on a FIFO."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        return None
    for i, part in enumerate(parts):
        try:
            child = os.open(part, DIR_FLAGS if i < len(parts) - 1 else FILE_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


class _Sink:
    """A write-only stream for zipfile that hands out what was written so far (no seeking: zipfile
    then writes data descriptors, which is what makes streaming possible)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.chunks, self.size = b"".join(self.chunks), [], 0
        return out


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.localtime(min(max(mtime, 315532800 + 86400), 4102444800))  # what a zip can say: 1980 to 2099
    return t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec


def zip_stream(root: Path, skip: Callable[[tuple[str, ...]], bool] | None = None) -> Generator[bytes, None, None]:
    """A zip of every regular file under `root` (links skipped, never followed), produced piece by piece;
    `skip` leaves more out than the snapshot's metadata."""
    sink = _Sink()
    fd = os.open(root, DIR_FLAGS)
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:  # type: ignore[arg-type]
            for entry in walk(fd, skip=lambda parts: parts in ((META,), (".zfs",)) or (skip is not None and skip(parts)),
                              open_files=True):
                if entry.kind is not Kind.FILE or entry.st is None:
                    continue
                info = zipfile.ZipInfo("/".join(shown_name(p) for p in entry.parts), _zip_time(entry.st.st_mtime))
                info.external_attr = (stat.S_IMODE(entry.st.st_mode) | stat.S_IFREG) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = entry.st.st_size
                with zf.open(info, "w", force_zip64=entry.st.st_size > 1 << 30) as dst:
                    while block := os.read(entry.fd, CHUNK):
                        dst.write(block)
                        if sink.size >= CHUNK:
                            yield sink.take()
                if sink.size:
                    yield sink.take()
        yield sink.take()
    finally:
        os.close(fd)
