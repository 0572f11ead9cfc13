"""The storage port. The directory driver is the embedded default; ZFS implements the same verbs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from foundry_fleet.storage.snapshots import DirectorySnapshots


@dataclass(frozen=True)
class InstancePaths:
    root: Path  # instances/<id>
    data: Path  # instances/<id>/data  (Foundry's --dataPath)
    install: Path  # instances/<id>/install (the release, read-only to the instance)


class Storage(Protocol):
    name: str
    snapshots: DirectorySnapshots  # the driver's snapshots of instance data (ZFS brings its own)

    def ensure_layout(self) -> None:
        """Create `shared/` and `instances/` if missing (idempotent)."""

    def shared_dir(self) -> Path: ...

    def paths(self, instance: str) -> InstancePaths: ...

    def create_instance(self, instance: str) -> InstancePaths:
        """Lay out data/ and install/ for an instance (idempotent: adopts what exists)."""

    def install_release(self, instance: str, release_dir: Path) -> Path:
        """Make `install/` the given unpacked release without copying its bytes."""

    def archive_instance(self, instance: str, stamp: str) -> Path:
        """Move the instance's data aside (kept, name freed); returns where it went."""

    def destroy_instance(self, instance: str) -> None:
        """Remove the instance's data and install for good."""

    def usage_bytes(self, instance: str) -> int: ...
