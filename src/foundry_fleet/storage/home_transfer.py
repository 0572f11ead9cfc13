"""Moving an instance's data between storage homes: the copy a move makes (and makes again, for the
difference, once the instance is stopped), and the copy a rolled-back move throws away.

Both homes use the same driver: ZFS homes send the data dataset's snapshots (zfs_transfer), directory
homes copy the snapshot trees (directory_transfer). The source is only read, so until a move commits the
instance can go on running where it is, and a failure anywhere leaves it whole there.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry_fleet.domain.errors import Unsupported
from foundry_fleet.storage.base import Storage
from foundry_fleet.storage.directory import DirectoryStorage
from foundry_fleet.storage.zfs_layout import check_instance


@dataclass(frozen=True)
class Copied:
    snapshots: tuple[str, ...]  # snapshot names newly present at the target, oldest first
    bytes: int  # bytes sent/copied (ZFS: the stream's size)


def copy_instance_data(instance: str, source: Storage, target: Storage, uid: int | None) -> Copied:
    """Bring the target's copy of the instance's data to the source's newest snapshot: every source snapshot
    the target lacks (ZFS send full/-I from the newest common one; directories: trees copied with unchanged
    files hard-linked to the target's previous tree), then the target's data/ made exactly that newest
    snapshot, owned by uid. Creates the target's instance layout (data/ + install/ container, its quota)
    when missing. Reads the source only. Idempotent and resumable after an interruption. The source must
    hold >= 1 snapshot (InvalidInput if not). Both must be the same driver (Unsupported otherwise).
    ExternalFailure with the command's own message."""
    check_instance(instance)  # it names folders and datasets in both homes
    if isinstance(source, DirectoryStorage) and isinstance(target, DirectoryStorage):
        from foundry_fleet.storage.directory_transfer import copy_trees

        names, sent = copy_trees(instance, source, target, uid)
        return Copied(tuple(names), sent)
    from foundry_fleet.storage.zfs import ZfsStorage

    if isinstance(source, ZfsStorage) and isinstance(target, ZfsStorage):
        from foundry_fleet.storage.zfs_transfer import copy_dataset

        names, sent = copy_dataset(instance, source, target, uid)
        return Copied(tuple(names), sent)
    raise _mismatch(source, target)


def discard_copy(instance: str, target: Storage) -> bool:
    """Remove the target's copy of the instance (data, install, snapshots): a move rolled back. False when
    absent."""
    check_instance(instance)
    if isinstance(target, DirectoryStorage):
        from foundry_fleet.storage.directory_transfer import discard_trees

        return discard_trees(instance, target)
    from foundry_fleet.storage.zfs import ZfsStorage

    if isinstance(target, ZfsStorage):
        from foundry_fleet.storage.zfs_transfer import discard_dataset

        return discard_dataset(instance, target)
    raise Unsupported(f"storage {getattr(target, 'name', type(target).__name__)!r} cannot hold a moved instance",
                      "homes use the directory or the zfs driver")


def _mismatch(source: Storage, target: Storage) -> Unsupported:
    def named(s: Storage) -> str:
        return getattr(s, "name", type(s).__name__)

    return Unsupported(
        f"instance data cannot be moved from {named(source)} storage to {named(target)} storage",
        "every home uses the fleet's [storage] driver; nothing was copied",
    )
