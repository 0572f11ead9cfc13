"""Snapshots of an instance's data dataset (`<base>/instances/<id>/data@<name>`), with the same verbs as
the directory snapshots, so the backup service, the scheduler and the tenants' backup pages work alike.

Reading a snapshot's files: where the host shows `.zfs/snapshot/<name>` in the data's mountpoint that is
used; where it does not (zfs-fuse), a *view* is made: a clone of the snapshot, read-only, mounted
read-only under `<root>/views/` (0700, root's). Views are throw-away: unused ones are destroyed by
`sweep_views` (the daemon's backup round), all of them at start, and before their snapshot is destroyed.

Restoring keeps the dataset's single line of snapshots (see `restore_in_place`): `zfs rollback -r` would
destroy every newer snapshot, the safety snapshot among them, and a clone swap would fork the line that
replication's `send -I` follows. A restore in progress is recorded in the user property
`org.foundry-fleet:restore` of the data dataset (the snapshot's name), never in a file inside the data.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.storage.restore_in_place import data_owner, replace_contents, take_legacy_marker
from foundry_fleet.storage.snapshots import SnapshotInfo
from foundry_fleet.storage.tenant_tree import reported_as
from foundry_fleet.storage.zfs_cmd import ZfsCommandFailed, ZfsRunner
from foundry_fleet.storage.zfs_layout import ZfsLayout, check_component, check_instance
from foundry_fleet.storage.zfs_quota import retry_with_room

log = logging.getLogger(__name__)

VIEW_IDLE_SECONDS = 600.0
RESTORING = "org.foundry-fleet:restore"  # user property of a data dataset: the snapshot being restored into it
# Inode numbers OpenZFS gives its `.zfs` and `.zfs/snapshot` control directories; a folder a tenant makes
# under that name has ordinary ones, and is never taken for the real thing.
_DOTZFS_INODES = ((".zfs", 0xFFFFFFFFFFFF), ("snapshot", 0xFFFFFFFFFFFD))
_SNAP_PROPS = ("creation", "used", "referenced", "createtxg")


def check_snapshot_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidInput(f"{name!r} is not a snapshot name", "use letters, digits, dashes and dots")
    return check_component(name, "snapshot name")


class ZfsSnapshots:
    def __init__(self, runner: ZfsRunner, layout: ZfsLayout) -> None:
        self.zfs = runner
        self.layout = layout
        self._views_used: dict[str, float] = {}  # view dataset -> when it was last handed out
        self._lock = threading.Lock()

    # reading ------------------------------------------------------------------------------

    def names(self, instance: str) -> list[str]:
        return [s.name for s in self.list(instance)]

    def list(self, instance: str) -> list[SnapshotInfo]:
        data = self.layout.data(check_instance(instance))
        try:
            found = self.zfs.get(_SNAP_PROPS, data, recursive=True)
        except ZfsCommandFailed as e:
            if e.missing:
                return []
            raise
        out = []
        for full, props in found.items():
            dataset, _, name = full.partition("@")
            if dataset != data or not name:
                continue
            info = SnapshotInfo(name, float(props["creation"].as_int() or 0), props["used"].as_int() or 0,
                                0, props["referenced"].as_int() or 0)
            out.append((props["createtxg"].as_int() or 0, info))
        # The transaction group orders snapshots as they were taken: `creation` has whole seconds only, so
        # two snapshots of one second (a scheduled one and a move's final one) would come out by name.
        return [info for _txg, info in sorted(out, key=lambda t: (t[0], t[1].created_at, t[1].name))]

    def path(self, instance: str, name: str) -> Path:
        """A read-only directory with the snapshot's files (a view is made when the host has no .zfs)."""
        check_instance(instance)
        check_snapshot_name(name)
        snapshot = f"{self.layout.data(instance)}@{name}"
        if not self.zfs.exists(snapshot):
            raise NotFound(f"instance {instance} has no snapshot {name!r}", f"see `foundry-fleet backup list {instance}`")
        data = self.layout.instance_path(instance) / "data"
        if _has_snapshot_dir(data):
            return data / ".zfs" / "snapshot" / name
        return self._view(instance, name, snapshot)

    # changing -----------------------------------------------------------------------------

    def take(self, instance: str, data: Path, name: str) -> SnapshotInfo:
        return self.take_many([(instance, data)], name)[0]

    def take_many(self, targets: list[tuple[str, Path]], name: str) -> list[SnapshotInfo]:
        """The snapshot of several instances at once, each atomic (`zfs snapshot -r` of the instance's
        dataset: data and install together). When the set is every instance, it is one recursive snapshot
        of them all: atomic across the fleet (zfs-fuse takes no list of snapshots in one command)."""
        check_snapshot_name(name)
        instances = [check_instance(instance) for instance, _data in targets]  # the dataset is the data
        if not instances:
            return []
        try:
            if len(instances) > 1 and set(instances) == set(self._all_instances()):
                self.zfs.zfs("snapshot", "-r", f"{self.layout.instances}@{name}")
                self.zfs.zfs("destroy", f"{self.layout.instances}@{name}")  # the container holds no data
            else:
                for instance in instances:
                    self.zfs.zfs("snapshot", "-r", f"{self.layout.instance(instance)}@{name}")
        except ZfsCommandFailed as e:
            if "dataset already exists" in e.stderr:
                raise Conflict(f"a snapshot named {name!r} already exists", "choose another label") from e
            raise
        # One `zfs get` names exactly the new snapshots: reading each instance's list would grow with its history.
        found = self.zfs.get(_SNAP_PROPS, *(f"{self.layout.data(i)}@{name}" for i in instances))
        infos = []
        for instance in instances:
            props = found.get(f"{self.layout.data(instance)}@{name}")
            infos.append(SnapshotInfo(name, float(props["creation"].as_int() or 0), props["used"].as_int() or 0, 0,
                                      props["referenced"].as_int() or 0) if props else SnapshotInfo(name, time.time(), 0, 0))
        return infos

    def destroy(self, instance: str, name: str) -> None:
        check_instance(instance)
        check_snapshot_name(name)
        self._drop_view(self._view_dataset(instance, name))
        self.zfs.zfs("destroy", "-r", f"{self.layout.instance(instance)}@{name}")

    def _all_instances(self) -> list[str]:
        out = self.zfs.zfs("list", "-H", "-o", "name", "-t", "filesystem", "-r", self.layout.instances)
        return [i for i in (self.layout.instance_of(line.strip()) for line in out.splitlines()) if i]

    def destroy_all(self, instance: str) -> None:
        """Destroy every snapshot of the instance's data (the data itself stays)."""
        for name in self.names(instance):
            self.destroy(instance, name)

    def restore(self, instance: str, name: str, data: Path, uid: int | None) -> None:
        source = self.path(instance, name)
        dataset = self.layout.data(instance)
        self.zfs.zfs("set", f"{RESTORING}={name}", dataset)  # from here on, a restore is in progress
        with reported_as(f"restoring {name} into {instance} failed",
                         "the previous data is put back from the safety snapshot"):
            # Near its quota the copy back may not fit beside the safety snapshot: see retry_with_room.
            retry_with_room(self.zfs, dataset, lambda: replace_contents(source, data, uid))
        self.zfs.zfs("inherit", RESTORING, dataset)
        self._drop_view(self._view_dataset(instance, name))

    def restoring(self, instance: str) -> str | None:
        """The snapshot a restore into the instance's data was interrupted in (None: none was)."""
        dataset = self.layout.data(check_instance(instance))
        try:
            found = self.zfs.get((RESTORING,), dataset).get(dataset, {}).get(RESTORING)
        except ZfsCommandFailed as e:
            if e.missing:
                return None
            raise
        return found.value if found is not None and found.source == "local" else None

    def finish_restore(self, instance: str, data: Path) -> str | None:
        """Redo a restore a crash interrupted (None: there was none). Markers an older fleet left in the
        data are removed; one that is really the fleet's is honoured once."""
        name = self.restoring(instance)
        legacy = take_legacy_marker(data) if data.is_dir() else None
        name = name or legacy
        if name is None:
            return None
        dataset = self.layout.data(instance)
        try:
            check_snapshot_name(name)
        except InvalidInput:
            self.zfs.zfs("inherit", RESTORING, dataset)
            return "dropped an unusable record of an interrupted restore"
        self.zfs.zfs("set", f"{RESTORING}={name}", dataset)
        self.restore(instance, name, data, data_owner(data))
        return f"finished an interrupted restore of {name}"

    # views --------------------------------------------------------------------------------

    @property
    def views(self) -> str:
        return f"{self.layout.base}/views"

    def _view_dataset(self, instance: str, name: str) -> str:
        return f"{self.views}/{instance}:{name}"  # no instance name has a ':', so this never collides

    def _view_path(self, instance: str, name: str) -> Path:
        return self.layout.root / "views" / f"{instance}:{name}"

    def _view(self, instance: str, name: str, snapshot: str) -> Path:
        dataset, mountpoint = self._view_dataset(instance, name), self._view_path(instance, name)
        with self._lock:
            self._views_used[dataset] = time.monotonic()
            if os.path.ismount(mountpoint):
                return mountpoint
            views_dir = mountpoint.parent
            views_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(views_dir, 0o700)  # other tenants' backups: only root may look
            if not self.zfs.exists(self.views):
                self.zfs.zfs("create", "-o", "mountpoint=none", self.views)
            if not self.zfs.exists(dataset):
                self.zfs.zfs("clone", "-o", "readonly=on", "-o", "canmount=noauto",
                             "-o", f"mountpoint={mountpoint}", snapshot, dataset)
            # zfs-fuse mounts a new clone by itself, read-write (it does not enforce readonly=on for every
            # write): the view must be a read-only mount.
            mount = self.zfs.zfs_mounts().get(dataset)  # on the pool's host
            if mount is not None and not mount.read_only:
                self.zfs.zfs("unmount", dataset)
                mount = None
            if mount is None:
                self.zfs.zfs("mount", "-o", "ro", dataset)
        return mountpoint

    def sweep_views(self, idle_seconds: float = VIEW_IDLE_SECONDS) -> int:
        """Destroy views unused for `idle_seconds` (0: all, as at start); a busy one waits for the next
        sweep. Returns how many were destroyed."""
        try:
            found = self.zfs.get(("type",), self.views, recursive=True)
        except ZfsCommandFailed as e:
            if e.missing:
                return 0
            raise
        now, dropped = time.monotonic(), 0
        for dataset in found:
            if dataset == self.views or "@" in dataset:
                continue
            if idle_seconds and now - self._views_used.get(dataset, 0.0) < idle_seconds:
                continue
            if self._drop_view(dataset):
                dropped += 1
        return dropped

    def _drop_view(self, dataset: str) -> bool:
        with self._lock:
            try:
                self.zfs.zfs("destroy", dataset)
            except ZfsCommandFailed as e:
                if e.missing:
                    return False
                if e.busy:
                    log.info("backup view %s is in use; it goes at the next sweep", dataset)
                    return False
                raise
            self._views_used.pop(dataset, None)
        leaf = dataset.rsplit("/", 1)[-1]
        try:
            (self.layout.root / "views" / leaf).rmdir()
        except OSError:
            pass
        return True


def _has_snapshot_dir(data: Path) -> bool:
    """Whether the host shows the data's snapshots at `.zfs/snapshot` (OpenZFS; zfs-fuse does not)."""
    try:
        fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for name, inode in _DOTZFS_INODES:
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                return False
            os.close(fd)
            fd = child
            if os.fstat(fd).st_ino != inode:
                return False
        return True
    finally:
        os.close(fd)
