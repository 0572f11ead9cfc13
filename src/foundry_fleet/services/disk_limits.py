"""The per-instance disk limit (`[limits] disk_mb`): what counts, who enforces it, and what is shown.

What counts is everything the fleet keeps for an instance: its live data and its snapshots (each block,
or each file, once), since a tenant that rewrites its files between snapshots grows its backups, not its
data. ZFS enforces that itself: the limit is a `quota` on the instance's data dataset, which counts the
dataset's snapshots (storage/zfs_quota), so the tenant's writes fail at the limit. Plain directories
cannot stop a tenant's write, so on them the fleet stops what it adds itself: a new snapshot is refused
while the instance is at or over its limit (`check_room`), and the owner and ops are told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict
from foundry_fleet.storage.base import Storage

MIB = 1024 * 1024


class OverDiskLimit(Conflict):
    """The instance is at or over its disk limit, so no new snapshot was taken."""


@dataclass(frozen=True)
class DiskUse:
    instance: str
    used: int  # live data and snapshots
    limit: int | None  # None: no limit

    @property
    def fraction(self) -> float | None:
        return None if not self.limit else self.used / self.limit

    @property
    def over(self) -> bool:
        return self.limit is not None and self.used >= self.limit

    def describe(self) -> str:
        limit = f"its {mib(self.limit)} disk limit" if self.limit else "no disk limit"
        return f"{self.instance} uses {mib(self.used)} (data and snapshots) of {limit}"


def limit_bytes(config: FleetConfig) -> int | None:
    """The configured per-instance limit in bytes (None: no limit)."""
    return config.limits.disk_mb * MIB or None


class DiskLimits:
    """The per-instance disk limit, held against what the storage keeps for each instance."""

    def __init__(self, storage: Storage, limit: int | None) -> None:
        self.storage = storage
        self.limit = limit  # bytes per instance; None: no limit

    def use_of(self, name: str) -> DiskUse:
        """How much the instance keeps against its limit (on directories: a walk of its data and snapshots)."""
        return DiskUse(name, self.storage.usage_bytes(name), self.limit)

    def check_room(self, name: str) -> None:
        """Raise OverDiskLimit when a new snapshot must be refused (directory storage, at or over the limit)."""
        if self.storage.enforces_limits or self.limit is None:
            return
        use = self.use_of(name)
        if use.over:
            raise OverDiskLimit(
                f"{use.describe()}, so no new snapshot was taken",
                "delete files in the instance (or restore a smaller snapshot), or raise [limits] disk_mb in fleet.toml",
            )

    def tighten(self, names: list[str]) -> list[str]:
        """Where the storage holds limits itself (ZFS), lower the instances' quotas held above them once
        their usage allows (after thinning)."""
        return self.storage.tighten_quotas(names) if names else []

    def report(self) -> dict[str, Any]:
        """What `storage status` shows: the driver's status, with per instance `used` (data and snapshots),
        `limit` and `percent` of it, on every driver."""
        status: dict[str, Any] = dict(self.storage.status())
        rows: dict[str, dict[str, Any]] = {}
        for name, found in dict(status.get("instances") or {}).items():
            row = dict(found)
            if not self.storage.enforces_limits:
                row["limit"] = self.limit
            use = DiskUse(name, row.get("used") or 0, row.get("limit"))
            row["percent"] = None if use.fraction is None else round(100 * use.fraction, 1)
            row["over_limit"] = use.over
            rows[name] = row
        status["instances"] = rows
        return status

    def uses(self) -> list[DiskUse]:
        """Every instance's use against its limit, from `report`."""
        return [DiskUse(name, row.get("used") or 0, row.get("limit")) for name, row in self.report()["instances"].items()]


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"
