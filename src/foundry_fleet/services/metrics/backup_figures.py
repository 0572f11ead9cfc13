"""Where each instance's snapshots stand, and how far each backup destination lags behind, for /metrics.

Listing an instance's snapshots is a `zfs` command on ZFS, done for every instance and again per
destination, while snapshots change only at the backup schedule's rounds (every 30 s at most) or by
hand: one reading serves every scrape for `keep_for` seconds, however often scrapers ask.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

KEEP_FOR = 30.0  # the backup schedule's round


class Snapshot(Protocol):
    @property
    def created_at(self) -> float: ...


class SnapshotLists(Protocol):
    def list(self, instance: str) -> Sequence[Snapshot]:
        """The instance's snapshots, oldest first."""


class ReplicationStatus(Protocol):
    def status(self, instances: list[str], now: float | None = None) -> list[dict[str, object]]: ...


@dataclass(frozen=True)
class ReplicaFigures:
    instance: str
    destination: str
    seconds_behind: float | None  # None: nothing to be behind on (no snapshot yet)
    snapshots_behind: int
    failing: bool  # its last round with this destination failed


@dataclass(frozen=True)
class BackupFigures:
    newest_at: dict[str, float]  # epoch seconds of each instance's newest snapshot; none yet: left out
    snapshots: dict[str, int]
    replicas: list[ReplicaFigures]


class BackupFigureReads:
    def __init__(self, snapshots: SnapshotLists, replication: ReplicationStatus | None, keep_for: float = KEEP_FOR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`replication` None: the fleet has no backup destinations."""
        self.snapshots = snapshots
        self.replication = replication
        self.keep_for = keep_for
        self.clock = clock
        self._lock = threading.Lock()  # two scrapes at once list once
        self._kept: tuple[tuple[str, ...], float, BackupFigures] | None = None

    def read(self, instances: Sequence[str]) -> BackupFigures:
        names = tuple(instances)
        with self._lock:
            if self._kept is not None:
                kept_names, at, figures = self._kept
                # A new or deleted instance is shown at once rather than after the reading expires.
                if kept_names == names and self.clock() - at < self.keep_for:
                    return figures
            figures = self._read(names)
            self._kept = (names, self.clock(), figures)
            return figures

    def forget(self) -> None:
        """Drop the reading kept: a snapshot was taken or removed, and the next read lists again."""
        with self._lock:
            self._kept = None

    def _read(self, names: tuple[str, ...]) -> BackupFigures:
        newest_at: dict[str, float] = {}
        counts: dict[str, int] = {}
        for name in names:
            try:
                snaps = self.snapshots.list(name)
            except Exception as e:  # noqa: BLE001 - one instance's storage trouble must not hide the others
                log.warning("metrics: could not list the snapshots of %s: %s", name, e)
                continue
            counts[name] = len(snaps)
            if snaps:
                newest_at[name] = snaps[-1].created_at
        replicas = []
        if self.replication is not None and names:
            for row in self.replication.status(list(names)):
                replicas.append(ReplicaFigures(
                    instance=str(row["instance"]), destination=str(row["destination"]),
                    seconds_behind=_number(row.get("seconds_behind")),
                    snapshots_behind=int(_number(row.get("snapshots_behind")) or 0),
                    failing=bool(row.get("last_error"))))
        return BackupFigures(newest_at, counts, replicas)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
