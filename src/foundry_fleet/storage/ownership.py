"""Who owns an instance's data: its own uid, everything but the shared assets' mount point (root's).

A tenant's code may run while its tree is handed over, and may swap any folder for a link to
/etc between two system calls; so ownership is changed only through descriptors opened without
following links (see tenant_tree), and a link is chowned as a link, never through.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from foundry_fleet.domain import instance_layout
from foundry_fleet.storage.tenant_tree import DIR_FLAGS, Kind, Parts, open_root, walk

_SHARED = instance_layout.SHARED_MOUNT.parts


def _is_shared_mount(parts: Parts) -> bool:
    return parts == _SHARED


def chown_tree(path: Path, uid: int, gid: int) -> int:
    """Give the instance data directory `path` and all it holds to `uid`:`gid`, leaving `Data/shared`
    as it is (root's). Links are chowned themselves, never followed. Returns the entries changed."""
    root = open_root(path)
    try:
        return chown_tree_at(root, uid, gid)
    finally:
        os.close(root)


def chown_tree_at(root_fd: int, uid: int, gid: int) -> int:
    """`chown_tree` of the directory open as `root_fd`."""
    changed = 0
    for entry in walk(root_fd, skip=_is_shared_mount):
        if entry.kind is Kind.DIR:
            os.fchown(entry.fd, uid, gid)
        elif entry.kind in (Kind.FILE, Kind.LINK, Kind.OTHER):
            try:
                os.chown(entry.name, uid, gid, dir_fd=entry.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile
        else:
            continue
        changed += 1
    return changed


def ensure_shared_mount_point(data_fd: int, uid: int | None) -> None:
    """Make `Data` (the tenant's, when `uid` is given) and `Data/shared` (root's) in the data directory
    open as `data_fd`, where missing. A `Data` that is a link or a file is left so: nothing is made
    through it (the instance will not start until it is a folder)."""
    data, shared = instance_layout.DATA.name, instance_layout.SHARED_MOUNT.name
    try:
        os.mkdir(data, 0o755, dir_fd=data_fd)
        if uid is not None:
            os.chown(data, uid, uid, dir_fd=data_fd, follow_symlinks=False)
    except FileExistsError:
        pass
    try:
        folder = os.open(data, DIR_FLAGS, dir_fd=data_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return
        raise
    try:
        try:
            os.mkdir(shared, 0o755, dir_fd=folder)
        except FileExistsError:
            return
        if uid is not None:  # a fleet running as root: the tenant must not own its mount point
            os.chown(shared, 0, 0, dir_fd=folder, follow_symlinks=False)
    finally:
        os.close(folder)


def hand_over(path: Path, uid: int) -> int:
    """`chown_tree` that changes only the entries not already `uid`:`uid`'s (a copy of data that is mostly
    the instance's already: every chown would cost a write). Returns the entries changed."""
    root = open_root(path)
    try:
        changed = 0
        for entry in walk(root, skip=_is_shared_mount):
            if entry.kind not in (Kind.DIR, Kind.FILE, Kind.LINK, Kind.OTHER):
                continue
            assert entry.st is not None
            if entry.st.st_uid == uid and entry.st.st_gid == uid:
                continue
            if entry.kind is Kind.DIR:
                os.fchown(entry.fd, uid, uid)
            else:
                try:
                    os.chown(entry.name, uid, uid, dir_fd=entry.dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone meanwhile
            changed += 1
        return changed
    finally:
        os.close(root)
