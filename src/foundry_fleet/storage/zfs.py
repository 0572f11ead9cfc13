"""ZFS datasets: the storage driver for hosts with a pool, laid out as disko would (see zfs_layout).

What ZFS gives over plain directories:
- an install is a clone of the release's `@pristine` snapshot: created in milliseconds, 0 bytes, and
  read-only at the file system level (writes fail with EROFS, even for root);
- a tenant's limit is a `quota` on its data dataset, which counts its snapshots, enforced by ZFS
  (EDQUOT; see zfs_quota), so one tenant filling its quota leaves every other tenant's space alone;
- each instance's data is one dataset, which is what snapshots and replication work on.

Everything is idempotent and adopts what exists: `ensure_layout` and `create_instance` compare what is
there with what the layout requires and change only what differs.

Crash safety of an install swap: the new clone is made as `install.new` (unmounted), the old install is
unmounted and renamed `install.old`, then `install.new` is renamed to `install` (the commit), mounted,
and `install.old` destroyed. Whatever a crash leaves, the next call for the instance (or
`ensure_layout`) repairs it: an `install` present is kept (leftovers go); with no `install`, an
`install.old` is renamed back (the swap never committed).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.errors import Conflict, ExternalFailure, InvalidInput
from foundry_fleet.domain.release import parse_version
from foundry_fleet.storage.base import InstancePaths
from foundry_fleet.storage.release_version import release_version_of
from foundry_fleet.storage.zfs_cmd import Prop, ZfsCommandFailed, ZfsHostUnreachable, ZfsRunner
from foundry_fleet.storage import zfs_quota
from foundry_fleet.storage.tenant_tree import make_dirs
from foundry_fleet.storage.zfs_snapshots import ZfsSnapshots
from foundry_fleet.storage.zfs_layout import (
    INSTALL_NEW,
    INSTALL_OLD,
    PRISTINE,
    RELEASE_MOUNT_DIR,
    ZfsLayout,
    check_component,
    check_instance,
    parse_base,
)

log = logging.getLogger(__name__)

_PROPS = ("mountpoint", "mounted", "readonly", "canmount", "origin", *zfs_quota.PROPS)
_SOURCE_PROPERTY = "foundry-fleet:source"  # user property: the tree a release dataset was filled from
_USABLE_HEALTH = ("ONLINE", "DEGRADED")

Props = dict[str, dict[str, Prop]]


class ZfsStorage:
    name = "zfs"
    enforces_limits = True  # a quota on each instance's data, snapshots counted

    def __init__(self, root: Path, base: str, runner: ZfsRunner | None = None, quota_bytes: int | None = None) -> None:
        """`quota_bytes`: the limit every instance's data and snapshots are held to (`[limits] disk_mb`),
        which `ensure_layout` corrects; None leaves instances' quotas as they are."""
        _check_quota(quota_bytes)
        self.quota_bytes = quota_bytes
        self.root = Path(root)
        self.pool, self.base = parse_base(base)
        self.layout = ZfsLayout(self.root, self.base)
        self.zfs = runner or ZfsRunner()
        self.snapshots = ZfsSnapshots(self.zfs, self.layout)

    # layout -------------------------------------------------------------------------------

    def ensure_layout(self) -> None:
        """Create what is missing, repair interrupted install swaps, and correct properties that differ."""
        self._check_pool()
        if self.base != self.pool and not self.zfs.exists(self.base):
            self.zfs.zfs("create", "-p", "-o", "mountpoint=none", self.base)
        props = self._props(self.base, recursive=True)
        for container in (self.layout.releases, self.layout.instances):
            self._ensure_dataset(container, props)
        self._ensure_dataset(self.layout.shared, props)
        instances = [i for i in (self.layout.instance_of(name) for name in props) if i is not None]
        if any(self._repair_install(i, props) for i in instances):
            props = self._props(self.base, recursive=True)
        for dataset, found in props.items():
            self._correct(dataset, found)
        if self.quota_bytes is not None:
            for instance in instances:
                data = self.layout.data(instance)
                if data in props:
                    zfs_quota.correct(self.zfs, data, props[data], self.quota_bytes)
        _ensure_mode(self.shared_dir(), 0o755)
        for instance in instances:
            _ensure_mode(self.layout.instance_path(instance), 0o711, create=True)

    def shared_dir(self) -> Path:
        return self.layout.shared_path()

    def paths(self, instance: str) -> InstancePaths:
        base = self.layout.instance_path(instance)
        return InstancePaths(root=base, data=base / "data", install=base / "install")

    def create_instance(self, instance: str, quota_bytes: int | None = None) -> InstancePaths:
        """Lay out the instance's datasets (adopting what exists); `quota_bytes` limits its data and
        snapshots together (a `quota` on the data dataset, see zfs_quota).

        `quota_bytes=None` leaves any quota already set alone (use `set_quota` to remove one).
        """
        check_instance(instance)
        _check_quota(quota_bytes)
        props = self._ensure_instance_container(instance)
        if self._repair_install(instance, props):
            props = self._props(self.layout.instance(instance), recursive=True)
        data = self.layout.data(instance)
        extra = [] if quota_bytes is None else ["-o", f"quota={quota_bytes}",
                                                "-o", f"{zfs_quota.LIMIT_PROPERTY}={quota_bytes}"]
        if self._ensure_dataset(data, props, *extra):
            props = self._props(self.layout.instance(instance), recursive=True)
        elif quota_bytes is not None:
            zfs_quota.correct(self.zfs, data, props[data], quota_bytes)
        for dataset, found in props.items():
            self._correct(dataset, found)
        p = self.paths(instance)
        _ensure_mode(p.root, 0o711, create=True)
        p.data.mkdir(parents=True, exist_ok=True)
        make_dirs(p.data, *instance_layout.FOLDERS)  # adopting a tenant's data: never through a link it made
        _ensure_mode(p.data, 0o700)
        return p

    def set_quota(self, instance: str, quota_bytes: int | None) -> None:
        """Set (or with None, remove) the limit on the instance's data and snapshots."""
        check_instance(instance)
        _check_quota(quota_bytes)
        data = self.layout.data(instance)
        found = self.zfs.get(zfs_quota.PROPS, data)[data]
        zfs_quota.correct(self.zfs, data, found, quota_bytes)

    def tighten_quotas(self, instances: list[str]) -> list[str]:
        """Bring the instances' quotas held above their limit (after a restore needed room) down as far as
        their usage allows; the backup round calls this for the instances it thinned. Returns those changed."""
        changed = zfs_quota.tighten(self.zfs, [self.layout.data(check_instance(i)) for i in instances])
        return [d.split("/")[-2] for d in changed]

    # releases -----------------------------------------------------------------------------

    def ensure_release(self, version: str, unpacked_tree: Path) -> str:
        """The dataset holding release `version`, filled once from `unpacked_tree` and snapshotted @pristine.

        Idempotent: a release that has its @pristine snapshot is used as it is. A release dataset without
        one is what a crash during filling leaves (nothing can be cloned from it): it is made again.
        """
        parse_version(version)  # raises InvalidInput for anything that is not generation.build
        check_component(version, "release version")
        tree = Path(unpacked_tree)
        if not tree.is_dir():
            raise InvalidInput(f"release tree {tree} is not a directory", "add the release to the cache again")
        dataset, snapshot = self.layout.release(version), self.layout.pristine(version)
        lock_dir = self.root / RELEASE_MOUNT_DIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        # Two instances installing the same new release at once must not both fill its dataset.
        with FileLock(str(lock_dir / f".{version}.lock"), timeout=3600):
            if self.zfs.exists(snapshot):
                return dataset
            if not self.zfs.exists(self.layout.releases):
                self.ensure_layout()
            if self.zfs.exists(dataset):
                log.warning("release dataset %s has no @%s snapshot (interrupted): making it again", dataset, PRISTINE)
                self.zfs.zfs("destroy", "-r", dataset)
            mountpoint = self.layout.release_path(version)
            self.zfs.zfs("create", "-o", f"mountpoint={mountpoint}", "-o", "canmount=noauto",
                         "-o", f"{_SOURCE_PROPERTY}={tree}", dataset)
            self._ensure_mounted(dataset, read_only=False)  # for filling, once
            try:
                shutil.copytree(tree, mountpoint, symlinks=True, dirs_exist_ok=True)
            except (OSError, shutil.Error) as e:
                raise ExternalFailure(
                    f"could not copy release {version} from {tree} into {dataset}: {e}",
                    "check the pool's free space (zfs list) and the release cache, then retry",
                ) from e
            self.zfs.zfs("set", "readonly=on", dataset)
            self.zfs.zfs("snapshot", snapshot)  # the commit point: only now can installs clone it
            self._ensure_mounted(dataset, read_only=True)
        log.info("release %s is in %s", version, snapshot)
        return dataset

    def installed_release(self, instance: str) -> str | None:
        """The version the instance's install is a clone of, or None without an install."""
        check_instance(instance)
        props = self._props(self.layout.install(instance))
        found = props.get(self.layout.install(instance))
        return None if found is None else self.layout.version_of_origin(found["origin"].value)

    def install_release(self, instance: str, release_dir: Path) -> Path:
        """Make `install/` a clone of the release in `release_dir` (see `release_version_of`)."""
        check_instance(instance)
        version = release_version_of(Path(release_dir))
        self.ensure_release(version, Path(release_dir))
        return self.install_version(instance, version)

    def install_version(self, instance: str, version: str) -> Path:
        """Swap the instance's install for a clone of `<base>/releases/<version>@pristine` (zero copy)."""
        check_instance(instance)
        check_component(version, "release version")
        snapshot = self.layout.pristine(version)
        install = self.layout.install(instance)
        new, old = self.layout.install(instance, INSTALL_NEW), self.layout.install(instance, INSTALL_OLD)
        props = self._ensure_instance_container(instance)
        if self._repair_install(instance, props):
            props = self._props(self.layout.instance(instance), recursive=True)
        current = props.get(install)
        if current is not None and current["origin"].value == snapshot:
            self._correct(install, current)  # already this release: just make sure it is in place
            return self.paths(instance).install
        self.zfs.zfs("clone", "-o", "readonly=on", "-o", "canmount=noauto", "-o", "mountpoint=none", snapshot, new)
        if current is not None:
            try:
                if current["mounted"].value == "yes":
                    self.zfs.zfs("unmount", install)
            except ZfsHostUnreachable:  # the host is down: not what the message below would say
                raise
            except ZfsCommandFailed as e:
                self._destroy_quietly(new)
                raise ExternalFailure(
                    f"the install of {instance} is in use, so it was left as it is: {e.message}",
                    "stop the instance, then install the release again",
                ) from e
            try:
                self.zfs.zfs("set", "mountpoint=none", install)
                self.zfs.zfs("rename", install, old)
                self.zfs.zfs("rename", new, install)  # the commit point
            except ExternalFailure:
                self._put_back_quietly(instance)
                raise
        else:
            self.zfs.zfs("rename", new, install)  # the commit point
        path = self.paths(instance).install
        self.zfs.zfs("set", f"mountpoint={path}", install)
        self._ensure_mounted(install, read_only=True)
        if current is not None:
            self._destroy_quietly(old)
        return path

    # removal ------------------------------------------------------------------------------

    def archive_instance(self, instance: str, stamp: str) -> Path:
        """Move the instance's data dataset to `<base>/archive/<id>-<stamp>/data` (mounted under
        `<root>/archive/`); destroy the rest of the instance. Returns the archive's folder."""
        check_instance(instance)
        name = check_component(f"{instance}-{stamp}", "archive stamp")
        target, target_path = self.layout.archived(name), self.layout.archived_path(name)
        if target_path.exists() or self.zfs.exists(target):
            raise Conflict(f"archive {target} already exists", "retry in a second")
        data = self.layout.data(instance)
        props = self._props(data)
        if data in props:
            if props[data]["mounted"].value == "yes":
                self._unmount_for(instance, data)  # first: an instance still running stops everything here
            _ensure_mode(target_path.parent, 0o700, create=True)  # archives are the operator's, not tenants'
            self._ensure_dataset(self.layout.archive, self._props(self.layout.archive))
            self.zfs.zfs("create", "-o", "mountpoint=none", target)
            self.zfs.zfs("rename", data, f"{target}/data")
            self.zfs.zfs("set", f"mountpoint={target_path / 'data'}", f"{target}/data")
            self._ensure_mounted(f"{target}/data", read_only=False)
        self.destroy_instance(instance)
        return target_path

    def destroy_instance(self, instance: str) -> None:
        """Destroy the instance's datasets (data, install and their snapshots) and its folder."""
        check_instance(instance)
        container = self.layout.instance(instance)
        if self.zfs.exists(container):
            self.zfs.zfs("destroy", "-r", container)
        _remove_folder(self.layout.instance_path(instance), self.zfs)

    # reporting ----------------------------------------------------------------------------

    def usage_bytes(self, instance: str) -> int:
        """Bytes the instance's data uses (`used`, snapshots included); 0 when it has none.

        zfs-fuse shows space freed by deleting files about 30 s later.
        """
        check_instance(instance)
        found = self._props(self.layout.data(instance), properties=("used",))
        if not found:
            return 0
        return next(iter(found.values()))["used"].as_int() or 0

    def status(self) -> dict[str, object]:
        """Pool health and space, and per instance: `used` (its data and snapshots), `data` and `snapshots`
        (the two parts), `limit` (what the instance is held to; None: no limit), `quota` (what ZFS enforces:
        the limit, or the usage while that is above it), `available`, `release`."""
        pool = self._check_pool()
        props = self._props(self.base, recursive=True, properties=(
            "used", "usedbydataset", "usedbysnapshots", "available", "quota", zfs_quota.LIMIT_PROPERTY, "origin"))
        instances: dict[str, dict[str, object]] = {}
        releases: dict[str, dict[str, object]] = {}
        for dataset, found in props.items():
            instance = self.layout.instance_of(dataset)
            if instance is not None:
                data = props.get(f"{dataset}/data", {})
                install = props.get(f"{dataset}/install", {})
                quota = _int(data.get("quota")) or None
                instances[instance] = {
                    "used": _int(data.get("used")),
                    "data": _int(data.get("usedbydataset")),
                    "snapshots": _int(data.get("usedbysnapshots")),
                    "limit": zfs_quota.limit_of(data) or quota,
                    "quota": quota,
                    "available": _int(data.get("available")),
                    "release": self.layout.version_of_origin(install["origin"].value) if install else None,
                }
            elif dataset.startswith(self.layout.releases + "/") and "@" not in dataset:
                releases[dataset[len(self.layout.releases) + 1 :]] = {"used": _int(found.get("used"))}
        base = props.get(self.base, {})
        return {
            "driver": self.name,
            "base": self.base,
            "pool": pool,
            "used": _int(base.get("used")),
            "available": _int(base.get("available")),
            "instances": instances,
            "releases": releases,
        }

    def pool_status(self) -> dict[str, str]:
        """The pool's name, health, size, alloc and free (ExternalFailure when it is unusable)."""
        return self._check_pool()

    def pool_space(self) -> dict[str, object]:
        """The pool's health as `zpool` says it (not judged here), how full it is (`capacity`, percent of
        its size allocated) and the bytes the fleet's datasets may still write (`available` of the base,
        or of the pool while the base is not made yet: quotas above it count). ExternalFailure when the
        pool is not there (ZfsHostUnreachable when its host does not answer)."""
        try:
            line = self.zfs.zpool("list", "-H", "-o", "name,health,cap", self.pool)
        except ZfsHostUnreachable:
            raise
        except ZfsCommandFailed as e:
            raise ExternalFailure(f"ZFS pool {self.pool!r} is not available: {e.message}",
                                  f"import it (`zpool import {self.pool}`), or set [storage] zfs_base") from e
        name, health, cap = (line.strip().split("\t") + [""] * 3)[:3]
        capacity = int(cap.rstrip("%")) if cap.rstrip("%").isdigit() else None
        if health not in _USABLE_HEALTH:  # its datasets cannot be asked about
            return {"name": name, "health": health, "capacity": capacity, "dataset": None, "available": None}
        dataset = self.base if self.zfs.exists(self.base) else self.pool
        available = self.zfs.get(("available",), dataset).get(dataset, {}).get("available")
        return {"name": name, "health": health, "capacity": capacity, "dataset": dataset,
                "available": available.as_int() if available else None}

    # internals ----------------------------------------------------------------------------

    def _check_pool(self) -> dict[str, str]:
        try:
            line = self.zfs.zpool("list", "-H", "-o", "name,health,size,alloc,free", self.pool)
        except ZfsHostUnreachable:  # the host is down: not what the message below would say
            raise
        except ZfsCommandFailed as e:
            raise ExternalFailure(f"ZFS pool {self.pool!r} is not available: {e.message}", e.hint) from e
        name, health, size, alloc, free = (line.strip().split("\t") + [""] * 5)[:5]
        if health not in _USABLE_HEALTH:
            raise ExternalFailure(
                f"ZFS pool {self.pool!r} is {health}, so the fleet's storage cannot be used",
                f"see `zpool status {self.pool}`",
            )
        return {"name": name, "health": health, "size": size, "alloc": alloc, "free": free}

    def _props(self, dataset: str, recursive: bool = False, properties: tuple[str, ...] = _PROPS) -> Props:
        """Properties of `dataset` (and below, without snapshots); {} when it does not exist."""
        try:
            found = self.zfs.get(properties, dataset, recursive=recursive)
        except ZfsCommandFailed as e:
            if e.missing:
                return {}
            raise
        return {name: values for name, values in found.items() if "@" not in name}

    def _ensure_dataset(self, dataset: str, props: Props, *options: str) -> bool:
        """Create `dataset` with the layout's mountpoint when missing; True if it was created."""
        if dataset in props:
            return False
        expected = self.layout.expected(dataset)
        mountpoint = expected.mountpoint if expected is not None else "none"
        self.zfs.zfs("create", "-o", f"mountpoint={mountpoint}", *options, dataset)
        if expected is not None and expected.mounted:
            self._ensure_mounted(dataset, read_only=bool(expected.readonly))
        return True

    def ensure_instance_container(self, instance: str) -> None:
        """The instance's container dataset (`<base>/instances/<id>`, not mounted), for a copy of its data
        to be received into; the layout around it is made when missing."""
        self._ensure_instance_container(check_instance(instance))

    def has_instance(self, instance: str) -> bool:
        """Whether anything of the instance is here: its datasets, or its folder."""
        check_instance(instance)
        return self.zfs.exists(self.layout.instance(instance)) or os.path.lexists(self.layout.instance_path(instance))

    def _ensure_instance_container(self, instance: str) -> Props:
        container = self.layout.instance(instance)
        props = self._props(container, recursive=True)
        if container not in props:
            if not self.zfs.exists(self.layout.instances):
                self.ensure_layout()
            self._ensure_dataset(container, props)
            props = self._props(container, recursive=True)
        return props

    def _correct(self, dataset: str, found: dict[str, Prop]) -> None:
        """Bring one dataset's mountpoint, canmount, readonly and mount to what the layout says."""
        expected = self.layout.expected(dataset)
        if expected is None:
            return
        if expected.canmount is not None and found["canmount"].value != expected.canmount:
            log.info("%s: canmount -> %s", dataset, expected.canmount)
            self.zfs.zfs("set", f"canmount={expected.canmount}", dataset)
        if found["mountpoint"].value != expected.mountpoint:
            log.info("%s: mountpoint %s -> %s", dataset, found["mountpoint"].value, expected.mountpoint)
            self.zfs.zfs("set", f"mountpoint={expected.mountpoint}", dataset)
        readonly = found["readonly"]
        # A mounted dataset shows its mount's value as "temporary", which hides the property itself; the
        # mount check below covers that case (a read-only mount is what protects the files).
        if expected.readonly is not None and readonly.source != "temporary":
            if (readonly.value == "on") != expected.readonly:
                log.info("%s: readonly -> %s", dataset, expected.readonly)
                self.zfs.zfs("set", f"readonly={'on' if expected.readonly else 'off'}", dataset)
        if expected.mounted:
            self._ensure_mounted(dataset, read_only=bool(expected.readonly))

    def _ensure_mounted(self, dataset: str, read_only: bool) -> None:
        """Mount `dataset` if it is not; a read-only one must be mounted read-only (remounted if not)."""
        mount = self.zfs.zfs_mounts().get(dataset)  # on the pool's host
        if mount is not None and read_only and not mount.read_only:
            log.info("%s: mounted read-write: remounting read-only", dataset)
            self.zfs.zfs("unmount", dataset)
            mount = None
        if mount is None:
            self.zfs.zfs("mount", *(["-o", "ro"] if read_only else []), dataset)

    def _unmount_for(self, instance: str, dataset: str) -> None:
        try:
            self.zfs.zfs("unmount", dataset)
        except ZfsHostUnreachable:  # the host is down: not what the message below would say
            raise
        except ZfsCommandFailed as e:
            raise ExternalFailure(
                f"{dataset} is in use, so nothing was changed: {e.message}", f"stop the instance {instance} and retry"
            ) from e

    def _repair_install(self, instance: str, props: Props) -> bool:
        """Finish or undo an install swap a crash interrupted; True if anything changed."""
        install = self.layout.install(instance)
        new, old = self.layout.install(instance, INSTALL_NEW), self.layout.install(instance, INSTALL_OLD)
        if new not in props and old not in props:
            return False
        if install not in props and old in props:
            log.warning("%s: install swap was interrupted before it committed: keeping the old install", instance)
            self.zfs.zfs("rename", old, install)
            del props[old]
        elif install not in props:
            log.warning("%s: first install was interrupted after its clone was made: using it", instance)
            self.zfs.zfs("rename", new, install)
            del props[new]
        for leftover in (new, old):
            if leftover in props:
                self.zfs.zfs("destroy", "-r", leftover)  # -r: backups snapshot installs along with data
        return True

    def _put_back_quietly(self, instance: str) -> None:
        """After a swap failed half way: repair and remount what is there, reporting only to the log."""
        try:
            props = self._props(self.layout.instance(instance), recursive=True)
            if self._repair_install(instance, props):
                props = self._props(self.layout.instance(instance), recursive=True)
            install = self.layout.install(instance)
            if install in props:
                self._correct(install, props[install])
        except ExternalFailure as e:
            log.warning("%s: install left for the next repair: %s", instance, e.message)

    def _destroy_quietly(self, dataset: str) -> None:
        """Destroy a leftover whose removal is not part of the caller's outcome (repair sweeps it later)."""
        try:
            self.zfs.zfs("destroy", "-r", dataset)  # -r: backups snapshot installs along with data
        except ExternalFailure as e:
            log.warning("could not destroy %s (removed on the next repair): %s", dataset, e.message)


def _check_quota(quota_bytes: int | None) -> None:
    if quota_bytes is None:
        return
    if isinstance(quota_bytes, bool) or not isinstance(quota_bytes, int) or quota_bytes <= 0:
        raise InvalidInput(f"quota {quota_bytes!r} is not a positive number of bytes", "give the quota in bytes")


def _int(prop: Prop | None) -> int | None:
    return None if prop is None else prop.as_int()


def _ensure_mode(path: Path, mode: int, create: bool = False) -> None:
    if create:
        path.mkdir(parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o7777) != mode:
        path.chmod(mode)


def _remove_folder(path: Path, runner: ZfsRunner) -> None:
    """Remove the instance's folder once nothing is mounted in it on the pool's host (only empty
    mountpoints remain)."""
    if not os.path.lexists(path):
        return
    deadline = time.monotonic() + 5.0
    while mounted := runner.mounts_under(path):
        if time.monotonic() > deadline:
            raise ExternalFailure(
                f"{path} still has mounts ({', '.join(mounted)}), so it was not removed",
                "unmount them (zfs unmount / umount) and delete the instance again",
            )
        time.sleep(0.1)
    shutil.rmtree(path)
