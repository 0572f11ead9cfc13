"""Plain directories: the embedded default, for hosts without ZFS.

An install is a tree of hard links into the release cache, so it costs no copy of the release bytes.
That is safe because the cache tree is read-only and instances see their install read-only.

Hard links cannot cross file systems, and a home of a Nomad node's own (see storage/homes.py) is usually
another one (its disk, or an NFS mount of it): there the release is copied once into the home's
`releases-copy/<version>/`, and its installs link into that copy, so each home pays a release's bytes
once, whatever number of instances it holds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from filelock import FileLock

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.errors import Conflict, ExternalFailure
from foundry_fleet.storage import tenant_tree
from foundry_fleet.storage.base import InstancePaths
from foundry_fleet.storage.release_version import release_version_of
from foundry_fleet.storage.snapshots import DirectorySnapshots
from foundry_fleet.storage.tenant_tree import TreeError, make_dirs, open_root
from foundry_fleet.storage.trees import remove_tree


RELEASE_COPIES = "releases-copy"


class DirectoryStorage:
    name = "directory"
    enforces_limits = False  # a plain directory cannot stop a write: the fleet refuses snapshots instead

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = DirectorySnapshots(root)

    # layout -------------------------------------------------------------------------------

    def ensure_layout(self) -> None:
        self.shared_dir().mkdir(parents=True, exist_ok=True)
        (self.root / "instances").mkdir(parents=True, exist_ok=True)
        # Instances run as their own users: they may read shared assets, never write them.
        self.shared_dir().chmod(0o755)

    def shared_dir(self) -> Path:
        return self.root / "shared"

    def paths(self, instance: str) -> InstancePaths:
        base = self.root / "instances" / instance
        return InstancePaths(root=base, data=base / "data", install=base / "install")

    def create_instance(self, instance: str, quota_bytes: int | None = None) -> InstancePaths:
        del quota_bytes  # plain directories cannot enforce a quota (ZFS storage does)
        p = self.paths(instance)
        p.root.mkdir(parents=True, exist_ok=True)
        p.root.chmod(0o711)
        p.data.mkdir(exist_ok=True)
        make_dirs(p.data, *instance_layout.FOLDERS)
        p.data.chmod(0o700)
        return p

    # installs -----------------------------------------------------------------------------

    def install_release(self, instance: str, release_dir: Path) -> Path:
        """Point `install/` at a release: a fresh tree of hard links, swapped in atomically."""
        p = self.paths(instance)
        p.root.mkdir(parents=True, exist_ok=True)
        source = self._release_on_this_file_system(Path(release_dir))
        staging = p.root / ".install.new"
        remove_tree(staging)
        try:
            link_tree(source, staging)
        except OSError as e:
            remove_tree(staging)
            raise ExternalFailure(f"could not install release into {p.install}: {e}") from e
        old = p.root / ".install.old"
        remove_tree(old)
        if p.install.exists():
            p.install.rename(old)
        staging.rename(p.install)
        remove_tree(old)
        return p.install

    def linked_release(self, release_dir: Path) -> Path:
        """The tree an install of `release_dir` links to here: the release itself where this home shares
        its file system, else this home's copy of it (which may not be made yet)."""
        release_dir = Path(release_dir)
        if _same_file_system(release_dir, self.root):
            return release_dir
        return self.root / RELEASE_COPIES / release_version_of(release_dir)

    def _release_on_this_file_system(self, release_dir: Path) -> Path:
        """`release_dir` when this home shares its file system; else this home's copy of it, made once
        (built as `<version>.partial` and renamed, so an interrupted copy is never used)."""
        copy = self.linked_release(release_dir)
        if copy == release_dir:
            return release_dir
        version, copies = copy.name, copy.parent
        copies.mkdir(parents=True, exist_ok=True)
        copies.chmod(0o755)  # instances read their install through these links
        # Two instances of this home installing the same new release at once must not both copy it.
        with FileLock(str(copies / f".{version}.lock"), timeout=3600):
            if copy.is_dir():
                return copy
            staging = copies / f"{version}.partial"
            remove_tree(staging)
            try:
                shutil.copytree(release_dir, staging, symlinks=True)
                for dirpath, _dirs, _files in os.walk(staging, topdown=False):
                    os.chmod(dirpath, 0o555)  # as read-only as the cache it was copied from
            except (OSError, shutil.Error) as e:
                remove_tree(staging)
                raise ExternalFailure(f"could not copy release {version} from {release_dir} into {copies}: {e}",
                                      f"check the free space of {self.root} (df), then install again") from e
            staging.rename(copy)
        return copy

    # removal ------------------------------------------------------------------------------

    def archive_instance(self, instance: str, stamp: str) -> Path:
        p = self.paths(instance)
        target = self.root / "archive" / f"{instance}-{stamp}"
        if target.exists():
            raise Conflict(f"archive {target} already exists", "retry in a second")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o700)
        if p.data.exists():
            target.mkdir()
            p.data.rename(target / "data")
        snaps = self.root / "snapshots" / instance
        if snaps.exists():
            target.mkdir(exist_ok=True)
            snaps.rename(target / "snapshots")  # backups are data too: kept with it
        remove_tree(p.root)
        return target

    def destroy_instance(self, instance: str) -> None:
        self.snapshots.destroy_all(instance)
        remove_tree(self.paths(instance).root)

    def status(self) -> dict[str, object]:
        usage = shutil.disk_usage(self.root)
        instances_dir = self.root / "instances"
        names = sorted(e.name for e in os.scandir(instances_dir) if e.is_dir()) if instances_dir.is_dir() else []
        return {
            "driver": self.name,
            "root": str(self.root),
            "used": usage.used,
            "available": usage.free,
            "instances": {n: self._instance_status(n) for n in names},
        }

    def _instance_status(self, instance: str) -> dict[str, object]:
        try:
            return {"used": self.usage_bytes(instance)}
        except (OSError, TreeError) as e:  # one tenant's tree that cannot be measured: shown as such
            return {"used": None, "error": getattr(e, "message", None) or str(e)}

    def tighten_quotas(self, instances: list[str]) -> list[str]:
        del instances  # no quotas to hold
        return []

    def usage_bytes(self, instance: str) -> int:
        """Bytes on disk of the instance's data and of its snapshots, each file once (what a file shares
        with a snapshot, or snapshots with each other, counts once): what its disk use costs the host."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for tree in (self.paths(instance).data, self.root / "snapshots" / instance):
            try:
                fd = open_root(tree)
            except TreeError:
                if not os.path.lexists(tree):
                    continue
                raise
            try:
                total += tenant_tree.usage(fd, seen)
            finally:
                os.close(fd)
        return total


def _same_file_system(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def link_tree(src: Path, dst: Path) -> int:
    """Recreate `src` at `dst` with hard links for files (symlinks copied as links); returns files linked."""
    count = 0
    dst.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst if rel == "." else dst / rel
        for d in dirnames:
            s = os.path.join(dirpath, d)
            if os.path.islink(s):
                os.symlink(os.readlink(s), target_dir / d)
            else:
                (target_dir / d).mkdir()
        for f in filenames:
            s = os.path.join(dirpath, f)
            if os.path.islink(s):
                os.symlink(os.readlink(s), target_dir / f)
            else:
                os.link(s, target_dir / f)
                count += 1
    # Directories mirror the cache's read-only modes once filled.
    for dirpath, _dirs, _files in os.walk(dst, topdown=False):
        os.chmod(dirpath, 0o555)
    return count
