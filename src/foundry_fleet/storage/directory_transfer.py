"""An instance's snapshot trees copied from one directory home to another (another file system, so
nothing can be linked across): each snapshot the target lacks is copied as the directory snapshots are
taken, a file unchanged since the target's previous snapshot hard-linked to it, so the target's
snapshots cost what the source's do; then the target's data is restored from the newest one, keeping
the files it already holds as restored from the one before (only what changed is written).

The trees are the tenant's files: copied through directory descriptors, never following a link (see
tenant_tree). A snapshot is present at the target only once complete (built as `.partial`), and the data
is swapped in by the restore's renames, so an interrupted copy is simply run again.

A snapshot of the same name whose metadata says another creation time is not this line's (a previous
copy of another instance of that name): it is replaced.
"""

from __future__ import annotations

import logging

from foundry_fleet.domain.errors import InvalidInput, NotFound
from foundry_fleet.storage.directory import DirectoryStorage
from foundry_fleet.storage.snapshots import finish_restore, restore_into
from foundry_fleet.storage.tenant_tree import reported_as

log = logging.getLogger(__name__)


def copy_trees(instance: str, source: DirectoryStorage, target: DirectoryStorage,
               uid: int | None) -> tuple[list[str], int]:
    """Bring the target's copy of the instance's data to the source's newest snapshot; returns the snapshot
    names newly at the target (oldest first) and the bytes written there."""
    wanted = source.snapshots.list(instance)
    if not wanted and not source.paths(instance).data.is_dir():
        raise NotFound(f"instance {instance} has no data under {source.root}, so there is nothing to copy",
                       "check which home holds it (instance show); nothing was copied")
    if not wanted:
        raise InvalidInput(f"instance {instance} has no snapshot under {source.root}, so there is nothing to copy",
                           "take a snapshot of it (foundry-fleet backup now) and move it again")
    held = {s.name: s.created_at for s in target.snapshots.list(instance)}
    new: list[str] = []
    copied = 0
    previous: str | None = None
    for snapshot in wanted:
        if held.get(snapshot.name) == snapshot.created_at:
            previous = snapshot.name
            continue
        if snapshot.name in held:
            log.warning("%s: snapshot %s under %s is not the source's: copying it again", instance, snapshot.name,
                        target.root)
            target.snapshots.destroy(instance, snapshot.name)
        stats = target.snapshots.receive(instance, snapshot.name, source.snapshots.path(instance, snapshot.name),
                                         previous)
        copied += stats.bytes_new
        new.append(snapshot.name)
        previous = snapshot.name
    paths = target.create_instance(instance)
    finish_restore(paths.data)  # a swap an interruption left half done (the copy is redone below)
    latest = wanted[-1].name
    # The data was made from the snapshot before (the previous copy; nothing runs here before the
    # commit): only what differs from it is written, which keeps the last copy, the one inside the
    # move's downtime, as small as the change. Data that is not what that copy left is copied afresh.
    before = target.snapshots.path(instance, wanted[-2].name) if len(wanted) > 1 else None
    with reported_as(f"making the data of {instance} under {target.root} its snapshot {latest} failed",
                     "the target's data was left as it was; move the instance again"):
        copied += restore_into(target.snapshots.path(instance, latest), paths.data, uid, before).bytes_new
    return new, copied


def discard_trees(instance: str, target: DirectoryStorage) -> bool:
    """Remove the target's copy of the instance (data, install, snapshots); False when there was none."""
    present = any(p.exists() or p.is_symlink() for p in (target.paths(instance).root,
                                                        target.root / "snapshots" / instance))
    if present:
        target.destroy_instance(instance)
    return present
