"""Laying out one instance on the node Nomad runs it on: what the `fvtt-provision` job does there.

The job is a sysbatch job, so every eligible node runs each dispatch; only the node the payload names
acts, the others say so and stop. That node makes the instance's storage and install match the payload
with the fleet's own code, exactly as creating it does (services/provisioning.py `_lay_out`): its data
and install (through the storage driver), the release's tree in its install (replaced when it holds
another, as a release switch does), options.json when missing, its data owned by its uid, and for the
exec task driver the system user its task runs as. Everything is compared first and changed only where
it differs, so running it again changes nothing, not even a file's time.

The payload names the home ([[nomad.homes]]) that holds the instance's data, and the instance is laid
out in that home's storage; the release must already be in the node's release cache, and the
instance's secrets (license.json, admin.txt) are the fleet's to write at create (a move brings them
with the data); this command never writes or prints them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.foundry_options import build_options
from foundry_fleet.domain.release import ReleaseInfo
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.runtime.nomad.provision_payload import MAX_PAYLOAD_BYTES, ProvisionPayload
from foundry_fleet.services.exec_users import ensure_exec_user
from foundry_fleet.storage.base import InstancePaths, Storage
from foundry_fleet.storage.ownership import chown_tree
from foundry_fleet.storage.tenant_tree import Kind, open_root, walk

LOCK_SECONDS = 600.0  # a ZFS release dataset filled for the first time takes a while


@dataclass(frozen=True)
class ProvisionResult:
    """What one run did, for the job's log (its one line of output)."""

    instance: str
    node: str
    acted: bool  # False: the payload is for another node
    changes: tuple[str, ...] = ()

    def summary(self) -> str:
        if not self.acted:
            return f"not this node: {self.instance} is provisioned on node {self.node}"
        if not self.changes:
            return f"{self.instance}: unchanged"
        return f"{self.instance}: {'; '.join(self.changes)}"


def read_payload(path: Path) -> ProvisionPayload:
    """The payload Nomad wrote for the task (`${NOMAD_TASK_DIR}/payload.json`), checked."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PAYLOAD_BYTES + 1)
    except OSError as e:
        raise InvalidInput(f"cannot read the payload file {path}: {e.strerror}",
                           "pass the file Nomad wrote: --payload ${NOMAD_TASK_DIR}/payload.json") from None
    return ProvisionPayload.from_bytes(data)


def provision_on_node(config: FleetConfig, node_id: str, payload: ProvisionPayload, *, storage: Storage,
                      releases: ReleaseCache | None = None) -> ProvisionResult:
    """Make the payload's instance ready to run on this node (`node_id`), idempotently.

    `storage` is the storage driver of the payload's home on this node (wiring.drivers.make_home_storage:
    the fleet root's, or a [[nomad.homes]]'s root as its nodes see it); `releases` its release cache (by
    default the one fleet.toml names)."""
    if payload.node != node_id:
        return ProvisionResult(payload.instance, payload.node, acted=False)
    releases = releases or ReleaseCache.from_config(config)
    release = releases.get(payload.release)
    if release is None:
        raise NotFound(f"release {payload.release} is not in this node's release cache {releases.versions_dir}",
                       "add it on this node (`foundry-fleet release add ZIP_OR_URL`), then dispatch again")
    changes: list[str] = []
    if config.nomad.task_driver == "exec":
        made = ensure_exec_user(payload.uid)
        if made:
            changes.append(made)
    with _lock(config, payload.instance):
        changes += _lay_out(config, storage, payload, release)
    return ProvisionResult(payload.instance, payload.node, acted=True, changes=tuple(changes))


@contextmanager
def _lock(config: FleetConfig, instance: str) -> Iterator[None]:
    """Two dispatches for one instance on one node lay it out one after the other, never interleaved."""
    path = config.paths.run / "locks" / f"provision-{instance}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=LOCK_SECONDS)
    except Timeout:
        raise Conflict(f"another provisioning of {instance} has held {path} for {LOCK_SECONDS:.0f} s",
                       "wait for it to finish, then dispatch again") from None
    try:
        yield
    finally:
        lock.release()


def _lay_out(config: FleetConfig, storage: Storage, payload: ProvisionPayload, release: ReleaseInfo) -> list[str]:
    name = payload.instance
    changes = []
    before = storage.paths(name)
    existed = before.data.is_dir()
    storage.ensure_layout()
    quota = config.limits.disk_mb * 1024 * 1024 or None
    paths = storage.create_instance(name, quota_bytes=quota)  # adopts what exists; makes what is missing
    if not existed:
        changes.append(f"made its storage at {paths.root}")
    installed = _installed(storage, name, paths, release)
    if installed != "this":
        storage.install_release(name, Path(release.path))
        changes.append(f"{'replaced its install with' if installed == 'other' else 'installed'} release {release.version}")
    if not (paths.install / release.entry).is_file():
        raise FleetError(f"release {release.version} installed at {paths.install} has no entry point {release.entry}",
                         "remove the release from this node's cache and add it again")
    if _write_options_if_missing(config, paths, payload):
        changes.append(f"wrote {instance_layout.OPTIONS}")
    misowned = _count_misowned(paths.data, payload.uid)
    if misowned:
        chown_tree(paths.data, payload.uid, payload.uid)
        changes.append(f"gave {misowned} of its data's entries to uid {payload.uid}")
    return changes


def _installed(storage: Storage, name: str, paths: InstancePaths, release: ReleaseInfo) -> str:
    """What the instance's install holds: "this" release, an "other" one, or "none".

    A ZFS install says which release it is a clone of; a directory install is a tree of hard links into
    the release cache (or the home's own copy of it, across file systems), so it is the release exactly
    when it links the same files (same inodes) at the same places and nothing else."""
    installed = getattr(storage, "installed_release", None)
    if callable(installed):
        found = installed(name)
        return "none" if found is None else "this" if found == release.version else "other"
    tree = _tree_identity(paths.install)
    if not tree:
        return "none"
    # A home on another file system than the release cache links its installs to its own copy of it.
    linked = getattr(storage, "linked_release", None)
    release_tree = linked(Path(release.path)) if callable(linked) else Path(release.path)
    return "this" if tree == _tree_identity(release_tree) else "other"


def _tree_identity(root: Path) -> dict[str, tuple[object, ...]] | None:
    """Every entry under `root` (the fleet's own tree, read-only to tenants) by relative path: directories,
    links with their targets, files by (device, inode). None when `root` is not a directory."""
    if not root.is_dir() or root.is_symlink():
        return None
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for entry in [*dirnames, *filenames]:
            path = os.path.join(dirpath, entry)
            key = entry if rel == "." else f"{rel}/{entry}"
            st = os.lstat(path)
            if os.path.islink(path):
                found[key] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[key] = ("dir",)
            else:
                found[key] = ("file", st.st_dev, st.st_ino)
    return found


def _write_options_if_missing(config: FleetConfig, paths: InstancePaths, payload: ProvisionPayload) -> bool:
    """options.json as creating the instance writes it, only when it is missing (a present one is the
    instance's: Foundry's own settings page rewrites it)."""
    target = paths.data / instance_layout.OPTIONS
    if os.path.lexists(target):
        return False
    if payload.port is None:
        raise InvalidInput(f"{target} is missing and the payload names no port to write it with",
                           "dispatch again with the instance's port in the payload")
    options = build_options(
        data_path=str(paths.data), port=payload.port, hostname=config.host_for(payload.instance),
        proxy_port=config.edge.https_port,
    )
    write_atomic(target, json.dumps(options, indent=2) + "\n", 0o600)
    return True


def _count_misowned(data: Path, uid: int) -> int:
    """Entries of the data tree (the shared assets' mount point aside, which stays root's) not owned by
    `uid`:`uid`. Only read, through descriptors: a tenant's tree is never walked by path."""
    shared = instance_layout.SHARED_MOUNT.parts
    root = open_root(data)
    count = 0
    try:
        for entry in walk(root, skip=lambda parts: parts == shared):
            if entry.kind in (Kind.LEAVE, Kind.CHANGED) or entry.st is None:
                continue
            if entry.st.st_uid != uid or entry.st.st_gid != uid:
                count += 1
    finally:
        os.close(root)
    return count
