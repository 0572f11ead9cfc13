"""Space and health of where the fleet writes: the file systems of its root and release cache, and with ZFS
storage each pool holding its datasets (the fleet's own, and every home's).

Limits: under 5 % or 2 GiB free fails (a tenant's next upload or snapshot may not fit), under 10 % or
10 GiB warns. A ZFS pool slows down as it fills, so its capacity counts as well: from 80 % allocated it
warns, from 90 % it fails. A DEGRADED pool still serves, with its redundancy lost: a warning.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry_fleet.domain.units import human_bytes
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.services.doctor.report import Check, failed, passed, skipped, warned

GIB = 1024 ** 3


@dataclass(frozen=True)
class SpaceLimits:
    fail_bytes: int = 2 * GIB
    fail_percent: float = 5.0
    warn_bytes: int = 10 * GIB
    warn_percent: float = 10.0
    warn_capacity: int = 80  # percent of a ZFS pool allocated
    fail_capacity: int = 90

    def judge(self, free: int, percent_free: float) -> str:
        """The verdict on `free` bytes, `percent_free` of the whole: "fail", "warn" or "pass"."""
        if free < self.fail_bytes or percent_free < self.fail_percent:
            return "fail"
        if free < self.warn_bytes or percent_free < self.warn_percent:
            return "warn"
        return "pass"


def disk_checks(paths: Iterable[tuple[str, Path]], limits: SpaceLimits = SpaceLimits(),
                usage: Callable[[Path], Any] = shutil.disk_usage) -> list[Check]:
    """Free space of each (what, path)'s file system, once per file system (a release cache on the root's
    own is not checked twice). A path not made yet (the release cache before the first release) is judged
    by the file system it will be made on."""
    checks, seen = [], set()
    for what, wanted in paths:
        name = f"disk space of {what}"
        path = next((p for p in (wanted, *wanted.parents) if p.exists()), wanted)
        try:
            device = os.stat(path).st_dev
            if device in seen:
                continue
            seen.add(device)
            used = usage(path)
        except OSError as e:
            checks.append(failed(name, f"{path}: {e.strerror}", "create it (`foundry-fleet init`), or fix the path "
                                                                  "in fleet.toml"))
            continue
        percent = 100.0 * used.free / used.total if used.total else 0.0
        detail = f"{path}: {human_bytes(used.free)} free of {human_bytes(used.total)} ({percent:.0f} %)"
        verdict = limits.judge(used.free, percent)
        fix = f"make room on that file system (old snapshots: `foundry-fleet backup status`; `du -xsh {path}/*`)"
        if verdict == "fail":
            checks.append(failed(name, detail, fix))
        elif verdict == "warn":
            checks.append(warned(name, f"{detail}: running low", fix))
        else:
            checks.append(passed(name, detail))
    return checks


def zfs_check(home: str | None, space: dict[str, Any] | FleetError, limits: SpaceLimits = SpaceLimits()) -> Check:
    """One pool of the fleet's storage from `ZfsStorage.pool_space` (or why it could not be read). `home`:
    the [[nomad.homes]] it holds, None for the fleet's own."""
    of = f" (home {home})" if home else ""
    if isinstance(space, FleetError):
        return failed(f"zfs pool{of}", space.message, space.hint or "see `zpool status`")
    pool, health = space["name"], space["health"]
    name = f"zfs pool {pool}{of}"
    if health not in ("ONLINE", "DEGRADED"):
        return failed(name, f"{pool} is {health}: the fleet's datasets cannot be used",
                      f"see `zpool status -x {pool}` (bring back or replace the failed device, then `zpool clear "
                      f"{pool}`)")
    capacity, available = space.get("capacity"), space.get("available")
    where = space.get("dataset") or pool
    detail = f"{pool} {health}, {capacity if capacity is not None else '?'} % allocated, " \
             f"{human_bytes(available) if available is not None else '?'} available to {where}"
    fix = f"make room (old snapshots: `foundry-fleet backup status`), or grow the pool (`zpool add {pool} ...`)"
    if capacity is not None and capacity >= limits.fail_capacity:
        return failed(name, f"{detail}: nearly full", fix)
    if available is not None and available < limits.fail_bytes:
        return failed(name, f"{detail}: nearly full", fix)
    if health == "DEGRADED":
        return warned(name, f"{detail}: it serves, but has lost redundancy (one more failure loses data)",
                      f"see `zpool status -x {pool}` and replace the failed device")
    if (capacity is not None and capacity >= limits.warn_capacity) or \
            (available is not None and available < limits.warn_bytes):
        return warned(name, f"{detail}: running low", fix)
    return passed(name, detail)


def no_zfs(driver: str) -> Check:
    return skipped("zfs pool", f"the fleet's storage is {driver} ([storage] driver), not ZFS")

