"""An instance's data dataset copied from one ZFS home to another with `zfs send | zfs recv`, as
replication sends it to a backup destination (see zfs_destination), here into the other home's layout.

The first copy is a full stream of the oldest snapshot, then `send -I <oldest> <latest>`, which carries
every snapshot in between; a later copy sends `-I` from the newest snapshot both sides have (the same
snapshot: compared by guid, not by name). The target is received unmounted, with its quota lifted
(received blocks count against it, and a source held above its limit would not fit), then laid out as
the target home's own: mounted where its layout says, its quota the home's limit, owned by the uid.

An interrupted copy leaves the target at the last snapshot it completely received (a receive is atomic),
so the next copy goes on from there. Anything the target holds that the source does not have in that line
(snapshots newer than the newest common one, writes since, or a dataset with no snapshot in common) is
a previous copy's leftover and is dropped: until a move commits, the source's data is the instance's.

Either home's pool may be on another host (a home driven over ssh): each side of the stream runs through
its own home's runner, so local->remote, remote->local and remote->remote are the same code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput, NotFound
from foundry_fleet.storage import zfs_quota
from foundry_fleet.storage.ownership import hand_over
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_cmd import ZfsCommandFailed, ZfsHostUnreachable, ZfsRunner
from foundry_fleet.storage.zfs_stream import send_receive
from foundry_fleet.storage.zfs_layout import check_instance

log = logging.getLogger(__name__)

_RETRY_HINT = "check both pools (zpool status); the move can be run again and goes on from the last snapshot received"


@dataclass(frozen=True)
class ZfsSnapshot:
    name: str
    guid: str


def copy_dataset(instance: str, source: ZfsStorage, target: ZfsStorage, uid: int | None) -> tuple[list[str], int]:
    """Bring the target's copy of the instance's data to the source's newest snapshot; returns the snapshot
    names newly at the target (oldest first) and the bytes the streams carried."""
    check_instance(instance)
    src, dst = source.layout.data(instance), target.layout.data(instance)
    wanted = snapshots_of(source.zfs, src)
    if not wanted and not source.zfs.exists(src):
        raise NotFound(f"instance {instance} has no data in {source.base}, so there is nothing to send",
                       "check which home holds it (instance show); nothing was copied")
    if not wanted:
        raise InvalidInput(f"instance {instance} has no snapshot in {source.base}, so there is nothing to send",
                           "take a snapshot of it (foundry-fleet backup now) and move it again")
    target.ensure_instance_container(instance)
    held = snapshots_of(target.zfs, dst)
    before = {s.name for s in held}
    limit = target.quota_bytes if target.quota_bytes is not None else _limit_of(source.zfs, src)
    source_guids = {s.guid for s in wanted}
    common = next((s for s in reversed(held) if s.guid in source_guids), None)
    exists = target.zfs.exists(dst)
    if exists:
        _unmount(target.zfs, dst, instance)
        target.zfs.zfs("set", "quota=none", dst)  # set again below, from the home's limit
    sent = 0
    if common is None:
        if exists:
            log.warning("%s: %s shares no snapshot with %s: dropping it for a full copy", instance, dst, src)
            target.zfs.zfs("destroy", "-r", dst)
        sent += send_receive(source.zfs, ["zfs", "send", f"{src}@{wanted[0].name}"],
                             target.zfs, ["zfs", "recv", "-u", dst], _RETRY_HINT)
        start = wanted[0]
    else:
        for stale in held[held.index(common) + 1:]:
            log.warning("%s: %s@%s is not in the source's line of snapshots: dropping it", instance, dst, stale.name)
            target.zfs.zfs("destroy", f"{dst}@{stale.name}")
        start = next(s for s in wanted if s.guid == common.guid)
    latest = wanted[-1]
    if start.guid != latest.guid:
        sent += send_receive(source.zfs, ["zfs", "send", "-I", f"{src}@{start.name}", f"{src}@{latest.name}"],
                             target.zfs, ["zfs", "recv", "-u", "-F", dst], _RETRY_HINT)
    elif common is not None:
        target.zfs.zfs("rollback", f"{dst}@{latest.name}")  # writes made since (a chown, folders) are dropped
    paths = target.create_instance(instance, limit)  # mounted where the layout says, its quota, its modes
    if uid is not None:
        hand_over(paths.data, uid)
    after = {s.name for s in snapshots_of(target.zfs, dst)}
    return [s.name for s in wanted if s.name in after and s.name not in before], sent


def discard_dataset(instance: str, target: ZfsStorage) -> bool:
    """Destroy the target's copy of the instance (datasets, snapshots, folder); False when there was none."""
    if not target.has_instance(instance):
        return False
    target.destroy_instance(instance)
    return True


def snapshots_of(runner: ZfsRunner, dataset: str) -> list[ZfsSnapshot]:
    """The dataset's snapshots, oldest first (by the transaction that made them); [] when it is missing."""
    try:
        found = runner.get(("createtxg", "guid"), dataset, recursive=True)
    except ZfsCommandFailed as e:
        if e.missing:
            return []
        raise
    ordered = []
    for full, props in found.items():
        name, at, snapshot = full.partition("@")
        if at and name == dataset:
            ordered.append((props["createtxg"].as_int() or 0, ZfsSnapshot(snapshot, props["guid"].value)))
    return [s for _txg, s in sorted(ordered, key=lambda pair: pair[0])]


def _limit_of(runner: ZfsRunner, dataset: str) -> int | None:
    return zfs_quota.limit_of(runner.get(zfs_quota.PROPS, dataset).get(dataset, {}))


def _unmount(runner: ZfsRunner, dataset: str, instance: str) -> None:
    """A copy is received unmounted: nothing may use it until the move commits."""
    if dataset not in runner.zfs_mounts():  # on the pool's host
        return
    try:
        runner.zfs("unmount", dataset)
    except ZfsHostUnreachable:  # the host is down: not what the message below would say
        raise
    except ZfsCommandFailed as e:
        raise ExternalFailure(f"the copy of {instance} at {dataset} is in use, so it was not updated: {e.message}",
                              "close what uses it (a shell in its folder) and move the instance again") from e
