"""Restoring a snapshot into the data directory itself, for data that is a mount point (a ZFS dataset),
which cannot be swapped for a sibling directory by rename.

The caller has already taken a safety snapshot of the current data, and records that a restore is in
progress *outside* the data (a ZFS user property on the dataset: the tenant can neither forge it nor
point it anywhere), so the steps here are:
1. delete everything in the data;
2. copy the snapshot's files in, as fresh writable files owned by the instance's user.
A crash anywhere leaves the record, and the restore is simply done again at the next start: the source
snapshot is unchanged, so redoing it gives the same result. Nothing is lost meanwhile: what was there is
in the safety snapshot.

Both steps run as root in a tree the tenant wrote, so they go through directory descriptors and never
follow a link (see `tenant_tree`). Older fleets wrote the record as a file, `.fleet-restore`, inside the
data; `take_legacy_marker` reads such a file only when it is the fleet's own and removes any entry of
those names without following it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from foundry_fleet.storage.snapshots import LEGACY_MARKERS, copy_restored
from foundry_fleet.storage.tenant_tree import FILE_FLAGS, open_root, remove_contents


def replace_contents(snapshot: Path, data: Path, uid: int | None) -> None:
    """Make the data directory (a mount point) exactly the snapshot's content, owned by `uid`."""
    src, dst = open_root(snapshot), open_root(data)
    try:
        remove_contents(dst, keep=lambda parts: parts == (".zfs",))
        copy_restored(src, dst, uid)
    finally:
        os.close(src)
        os.close(dst)


def data_owner(data: Path) -> int | None:
    """The instance's user, as its data directory says (None: root's, a fleet not run as root)."""
    fd = open_root(data)
    try:
        uid = os.fstat(fd).st_uid
    finally:
        os.close(fd)
    return uid if uid != 0 else None


def take_legacy_marker(data: Path) -> str | None:
    """The snapshot name an older fleet's interrupted restore left in `.fleet-restore`, if that file is
    genuinely the fleet's (a regular file of this process's user with one link, in a tree owned by
    someone else); every entry of the legacy names that is not a folder is removed, never followed."""
    fd = open_root(data)
    try:
        tree_owner = os.fstat(fd).st_uid
        found = None
        for name in LEGACY_MARKERS:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue  # a tenant's own folder of that name: its data, left alone
            if name == LEGACY_MARKERS[0] and stat.S_ISREG(st.st_mode):
                found = _read_marker(fd, name, tree_owner)
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
        return found
    finally:
        os.close(fd)


def _read_marker(dir_fd: int, name: str, tree_owner: int) -> str | None:
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
            return None
        raise
    try:
        st = os.fstat(fd)
        ours = st.st_uid == os.geteuid() and st.st_uid != tree_owner
        if not (stat.S_ISREG(st.st_mode) and ours and st.st_nlink == 1 and st.st_size <= 256):
            return None
        return os.read(fd, 256).decode("utf-8", "replace").strip() or None
    finally:
        os.close(fd)
