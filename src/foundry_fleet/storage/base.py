"""The storage port. The directory driver is the embedded default; ZFS implements the same verbs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from foundry_fleet.domain.errors import ExternalFailure

if TYPE_CHECKING:
    from foundry_fleet.storage.snapshots import SnapshotInfo


class DestinationOffline(ExternalFailure):
    """A backup destination cannot be reached this round; its snapshots are kept for it on the source."""


@dataclass(frozen=True)
class InstancePaths:
    root: Path  # instances/<id>
    data: Path  # instances/<id>/data  (Foundry's --dataPath)
    install: Path  # instances/<id>/install (the release, read-only to the instance)


class Snapshots(Protocol):
    """Snapshots of instances' data: directory trees, or ZFS snapshots."""

    def names(self, instance: str) -> list[str]: ...

    def list(self, instance: str) -> list[SnapshotInfo]: ...

    def path(self, instance: str, name: str) -> Path:
        """A read-only directory holding the snapshot's files (NotFound when there is no such snapshot)."""

    def take(self, instance: str, data: Path, name: str) -> SnapshotInfo: ...

    def take_many(self, targets: list[tuple[str, Path]], name: str) -> list[SnapshotInfo]:
        """The same snapshot of several instances' data, atomically where the driver can."""

    def destroy(self, instance: str, name: str) -> None: ...

    def destroy_all(self, instance: str) -> None: ...

    def restore(self, instance: str, name: str, data: Path, uid: int | None) -> None:
        """Make `data` (not in use) exactly the snapshot's content, owned by `uid`."""

    def finish_restore(self, instance: str, data: Path) -> str | None:
        """Put right a restore a crash interrupted; says what was done (None: nothing to do)."""

    def restoring(self, instance: str) -> str | None:
        """The snapshot a restore left half done in the instance's data (None: the data is whole).

        A restore that fails either leaves the data as it was, or leaves it half replaced and says so
        here; then the instance must not start until the data is whole again."""

    def sweep_views(self, idle_seconds: float = ...) -> int:
        """Clean up read-only views of snapshots nobody used for `idle_seconds`."""


class Storage(Protocol):
    name: str
    snapshots: Snapshots
    # True when the storage itself stops an instance at its disk limit (a ZFS quota); else the fleet
    # holds the limit by refusing new snapshots.
    enforces_limits: bool

    def ensure_layout(self) -> None:
        """Create `shared/` and `instances/` if missing (idempotent)."""

    def shared_dir(self) -> Path: ...

    def paths(self, instance: str) -> InstancePaths: ...

    def create_instance(self, instance: str, quota_bytes: int | None = None) -> InstancePaths:
        """Lay out data/ and install/ for an instance (idempotent: adopts what exists); `quota_bytes`
        caps its data where the driver can enforce it."""

    def install_release(self, instance: str, release_dir: Path) -> Path:
        """Make `install/` the given unpacked release without copying its bytes."""

    def archive_instance(self, instance: str, stamp: str) -> Path:
        """Move the instance's data aside (kept, name freed); returns where it went."""

    def destroy_instance(self, instance: str) -> None:
        """Remove the instance's data and install for good."""

    def usage_bytes(self, instance: str) -> int: ...

    def tighten_quotas(self, instances: list[str]) -> list[str]:
        """Lower limits held above their configured value (after a restore needed room) as far as usage
        allows; returns the instances changed."""

    def status(self) -> dict[str, object]:
        """What `storage status` shows: the driver, space, and per instance what it uses."""
