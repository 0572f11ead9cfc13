"""An instance's disk limit on ZFS: a `quota` on its data dataset, which counts the dataset's snapshots.

`refquota` counts only the live data, so a tenant rewriting its files between snapshots could keep far
more than its limit on the pool (every snapshot holds the blocks it saw). `quota` counts snapshots too,
so ZFS refuses the tenant's writes (EDQUOT) once its data and snapshots together reach the limit; other
tenants' datasets are not touched. Snapshots themselves can still be taken at the limit (they start at
0 bytes), so scheduled backups go on.

ZFS refuses to set a quota below what a dataset already uses. Where that is the case (a fleet laid out
with `refquota` whose snapshots already exceed the limit, or a restore that needed room, see
`retry_with_room`) the quota is held at the usage, rounded up to a MiB: the tenant cannot write more,
and `tighten` brings the quota down to the limit as thinning frees space.
"""

from __future__ import annotations

import errno

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from foundry_fleet.storage.zfs_cmd import Prop, ZfsCommandFailed, ZfsRunner

log = logging.getLogger(__name__)

MIB = 1024 * 1024
LIMIT_PROPERTY = "foundry-fleet:limit"  # user property: the limit the quota is held to, in bytes
PROPS = ("quota", "refquota", "used", LIMIT_PROPERTY)
_BELOW_USED = "less than current used"
_ATTEMPTS = 5

T = TypeVar("T")


def quota_for(limit: int, used: int, current: int = 0) -> int:
    """The quota that holds a dataset to `limit`: the limit itself, or, when it already uses more (ZFS
    refuses a quota below the usage), its usage rounded up to a MiB, never above a quota that already
    holds it there (`current`; 0: none): a held tenant cannot write its way to a higher one."""
    if used <= limit:
        return limit
    held = -(-used // MIB) * MIB
    return min(held, current) if current > limit else held


def limit_of(found: dict[str, Prop]) -> int | None:
    prop = found.get(LIMIT_PROPERTY)
    value = prop.as_int() if prop is not None else None
    return value if value else None


def correct(runner: ZfsRunner, dataset: str, found: dict[str, Prop], limit: int | None) -> bool:
    """Bring one data dataset to `limit` (None: no limit): quota, no refquota, the limit recorded.
    `found` has PROPS as read; True if anything was changed."""
    changed = False
    if (found["refquota"].as_int() or 0) != 0:
        log.info("%s: refquota -> none (its quota, which counts snapshots, is the limit)", dataset)
        runner.zfs("set", "refquota=none", dataset)
        changed = True
    if limit is None:
        if limit_of(found) is not None or (found["quota"].as_int() or 0) != 0:
            runner.zfs("set", "quota=none", dataset)
            runner.zfs("inherit", LIMIT_PROPERTY, dataset)
            changed = True
        return changed
    if limit_of(found) != limit:
        runner.zfs("set", f"{LIMIT_PROPERTY}={limit}", dataset)
        changed = True
    current = found["quota"].as_int() or 0
    if current != quota_for(limit, found["used"].as_int() or 0, current):
        set_quota(runner, dataset, limit, current)
        changed = True
    return changed


def set_quota(runner: ZfsRunner, dataset: str, limit: int, current: int = 0) -> int:
    """Set the quota that holds `dataset` to `limit` (see quota_for); returns the quota set."""
    for attempt in range(_ATTEMPTS):
        used = _get(runner, dataset, "used") or 0
        # ZFS also counts writes not yet synced (a restore's copy, a tenant writing): each retry waits for
        # them a little and leaves a MiB more.
        quota = quota_for(limit, used + attempt * MIB, current)
        if quota == current:
            return quota
        try:
            runner.zfs("set", f"quota={quota}", dataset)
        except ZfsCommandFailed as e:
            if _BELOW_USED not in e.stderr:
                raise
            time.sleep(0.5 * (attempt + 1))
            continue
        if quota > limit:
            log.warning("%s uses %d bytes (snapshots included), more than its limit of %d: its quota is held "
                        "at its usage until thinning frees space", dataset, used, limit)
        return quota
    raise ZfsCommandFailed(["zfs", "set", "quota", dataset], 1, f"the usage of {dataset} kept growing past "
                           "every quota tried")


def tighten(runner: ZfsRunner, datasets: list[str]) -> list[str]:
    """Lower the quotas of `datasets` held above their limit, as far as their usage now allows (after
    thinning freed space); returns the datasets changed. One `zfs get` when nothing needs it."""
    if not datasets:
        return []
    try:
        found = runner.get(PROPS, *datasets)
    except ZfsCommandFailed as e:
        if not e.missing:
            raise
        if len(datasets) == 1:
            return []
        # One of them is gone (an instance deleted meanwhile): each of the others on its own.
        return [d for dataset in datasets for d in tighten(runner, [dataset])]
    changed = []
    for dataset, props in found.items():
        limit = limit_of(props)
        if limit is None:
            continue
        quota = props["quota"].as_int() or 0
        if quota != quota_for(limit, props["used"].as_int() or 0, quota):
            set_quota(runner, dataset, limit, quota)
            changed.append(dataset)
    return changed


def retry_with_room(runner: ZfsRunner, dataset: str, attempt: Callable[[], T]) -> T:
    """Run `attempt` (a restore, which may be redone from the start); if it fails while `dataset` has a
    quota, run it once more with the quota lifted, then hold the dataset to its limit again.

    A restore writes the snapshot's files as new blocks while the safety snapshot keeps the old ones, so
    near the limit it needs more room than the quota leaves (zfs-fuse even refuses deletes at the quota).
    An owner restoring their data must not be stopped by their backups: the restore gets the room, and
    the quota then holds the instance at what it uses until thinning frees space (see `tighten`)."""
    try:
        return attempt()
    except Exception as e:
        if not _out_of_room(e):
            raise  # a tenant's bad tree, a missing snapshot: more room would not help
        found = runner.get(PROPS, dataset).get(dataset, {})
        quota = found["quota"].as_int() or 0 if found else 0
        if not quota:
            raise
        log.warning("%s: the restore failed within the quota (%d bytes); trying again with the quota lifted",
                    dataset, quota)
    runner.zfs("set", "quota=none", dataset)
    try:
        return attempt()
    finally:
        set_quota(runner, dataset, limit_of(found) or quota)


def _out_of_room(error: BaseException | None) -> bool:
    """Did `error`, or what caused it, come from a full quota or disk?"""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.EDQUOT, errno.ENOSPC):
            return True
        error = error.__cause__ or error.__context__
    return False


def _get(runner: ZfsRunner, dataset: str, prop: str) -> int | None:
    return runner.get((prop,), dataset)[dataset][prop].as_int()
