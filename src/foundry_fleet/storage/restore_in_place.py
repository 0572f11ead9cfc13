"""Restoring a snapshot into the data directory itself, for data that is a mount point (a ZFS dataset),
which cannot be swapped for a sibling directory by rename.

The caller has already taken a safety snapshot of the current data, so the steps are:
1. write `.fleet-restore` (the snapshot's name) into the data: from here on a restore is in progress;
2. delete everything else in the data;
3. copy the snapshot's files in, as fresh writable files owned by the instance's user;
4. remove `.fleet-restore`: done.
A crash anywhere after 1 leaves the marker, and `finish_restore_in_place` simply does 2 to 4 again:
the source snapshot is unchanged, so redoing them gives the same result. Nothing is lost meanwhile:
what was there is in the safety snapshot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from foundry_fleet.storage.snapshots import META, SKIP, own_restored_tree
from foundry_fleet.storage.trees import remove_tree

MARKER = ".fleet-restore"


def restore_in_place(snapshot: Path, data: Path, name: str, uid: int | None) -> None:
    tmp = data / (MARKER + ".new")
    tmp.write_text(name + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, data / MARKER)
    _replace_contents(snapshot, data, uid)
    (data / MARKER).unlink()


def finish_restore_in_place(data: Path, snapshot_path: Callable[[str], Path]) -> str | None:
    """Redo a restore a crash interrupted (None: there was none)."""
    marker = data / MARKER
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    st = os.stat(data)
    _replace_contents(snapshot_path(name), data, st.st_uid if st.st_uid != 0 else None)
    marker.unlink()
    return f"finished an interrupted restore of {name}"


def _replace_contents(snapshot: Path, data: Path, uid: int | None) -> None:
    for entry in os.scandir(data):
        if entry.name != MARKER:
            remove_tree(Path(entry.path))
    for entry in os.scandir(snapshot):
        if entry.name in (META, MARKER, ".zfs"):
            continue
        src, dst = Path(entry.path), data / entry.name
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(src, dst, symlinks=True, ignore=_skip_shared(snapshot))
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
    own_restored_tree(data, uid, leave=frozenset({MARKER}))


def _skip_shared(snapshot: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(directory, snapshot)
        return {n for n in names if os.path.normpath(os.path.join(rel, n)) in SKIP or n == META}

    return ignore
