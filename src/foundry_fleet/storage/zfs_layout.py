"""Where everything lives in the ZFS layout, and which properties each dataset must have.

Datasets under the fleet's base (`POOL[/PATH]`), with their mountpoints under the fleet root:

    <base>/shared                         <root>/shared
    <base>/releases                       none (a container)
    <base>/releases/<version>@pristine    <root>/releases-zfs/<version>, read-only (see below)
    <base>/instances                      none
    <base>/instances/<id>                 none
    <base>/instances/<id>/data            <root>/instances/<id>/data (quota = the tenant's limit,
                                          snapshots included; see zfs_quota)
    <base>/instances/<id>/install         <root>/instances/<id>/install, read-only, a clone of
                                          <base>/releases/<version>@pristine
    <base>/instances/<id>/install.new     none, read-only: a swap in progress (see ZfsStorage)
    <base>/instances/<id>/install.old     none, read-only: a swap in progress
    <base>/archive/<id>-<stamp>           none
    <base>/archive/<id>-<stamp>/data      <root>/archive/<id>-<stamp>/data
    <base>/views/<id>:<snapshot>          <root>/views/<id>:<snapshot>, read-only: a snapshot's files
                                          for the backup pages where the host has no .zfs (zfs-fuse)

Every mountpoint is set explicitly (never inherited), so the layout does not depend on where the
pool or the base happen to be mounted. The base itself is left as it is: it may be someone's pool.

Read-only datasets have `readonly=on` and `canmount=noauto`, and the driver mounts them itself with
`zfs mount -o ro`. zfs-fuse does not enforce `readonly=on` for writes into files that already exist
(open for writing and write both succeed, and the bytes reach the pool); a read-only mount makes the
kernel refuse them. `noauto` keeps a daemon restart from mounting them read-write behind the fleet's
back; the fleet daemon's `ensure_layout` at start mounts them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain.errors import InvalidInput

PRISTINE = "pristine"
RELEASE_MOUNT_DIR = "releases-zfs"
INSTALL_NEW = "install.new"
INSTALL_OLD = "install.old"

# A ZFS dataset name component: what zfs accepts, minus spaces (they make mountpoints awkward).
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
# Instance ids are DNS labels (validated by the domain); here only what keeps dataset names safe.
_INSTANCE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Expected:
    mountpoint: str  # an absolute path, or "none"
    readonly: bool | None = None  # None: not the layout's business

    @property
    def canmount(self) -> str | None:
        """Read-only datasets are mounted by the driver (read-only), never automatically."""
        return "noauto" if self.readonly else None

    @property
    def mounted(self) -> bool:
        return self.mountpoint != "none"


def parse_base(base: str) -> tuple[str, str]:
    """(pool, base) from `POOL[/PATH]`; raises InvalidInput for anything zfs would refuse."""
    text = base.strip().strip("/")
    parts = text.split("/") if text else []
    if not parts or any(not _COMPONENT.match(p) or p in (".", "..") for p in parts) or "@" in text:
        raise InvalidInput(
            f"{base!r} is not a ZFS dataset name",
            "give POOL or POOL/PATH, e.g. tank or tank/foundry (letters, digits, _ - . :)",
        )
    return parts[0], "/".join(parts)


def check_instance(instance: str) -> str:
    if not isinstance(instance, str) or not _INSTANCE.match(instance):
        raise InvalidInput(f"{instance!r} is not an instance name", "use lowercase letters, digits and dashes")
    return instance


def check_component(text: str, what: str) -> str:
    if not _COMPONENT.match(text) or text in (".", ".."):
        raise InvalidInput(f"{text!r} cannot be part of a ZFS dataset name ({what})", "use letters, digits, _ - . :")
    return text


@dataclass(frozen=True)
class ZfsLayout:
    root: Path
    base: str

    # -- dataset names -----------------------------------------------------------------------------

    @property
    def shared(self) -> str:
        return f"{self.base}/shared"

    @property
    def releases(self) -> str:
        return f"{self.base}/releases"

    @property
    def instances(self) -> str:
        return f"{self.base}/instances"

    @property
    def archive(self) -> str:
        return f"{self.base}/archive"

    def release(self, version: str) -> str:
        return f"{self.releases}/{version}"

    def pristine(self, version: str) -> str:
        return f"{self.release(version)}@{PRISTINE}"

    def instance(self, instance: str) -> str:
        return f"{self.instances}/{instance}"

    def data(self, instance: str) -> str:
        return f"{self.instance(instance)}/data"

    def install(self, instance: str, leaf: str = "install") -> str:
        return f"{self.instance(instance)}/{leaf}"

    def archived(self, name: str) -> str:
        return f"{self.archive}/{name}"

    # -- mount paths -------------------------------------------------------------------------------

    def shared_path(self) -> Path:
        return self.root / "shared"

    def release_path(self, version: str) -> Path:
        return self.root / RELEASE_MOUNT_DIR / version

    def instance_path(self, instance: str) -> Path:
        return self.root / "instances" / instance

    def archived_path(self, name: str) -> Path:
        return self.root / "archive" / name

    # -- what each dataset must look like ----------------------------------------------------------

    def expected(self, dataset: str) -> Expected | None:
        """The properties the layout requires of `dataset`, or None for a dataset that is not ours."""
        if not dataset.startswith(self.base + "/") or "@" in dataset:
            return None
        rel = dataset[len(self.base) + 1 :].split("/")
        match rel:
            case ["shared"]:
                return Expected(str(self.shared_path()), readonly=False)
            case ["releases"] | ["instances"] | ["archive"] | ["views"] | ["instances", _] | ["archive", _]:
                return Expected("none")
            case ["releases", version]:
                return Expected(str(self.release_path(version)), readonly=True)
            case ["instances", instance, "data"]:
                return Expected(str(self.instance_path(instance) / "data"), readonly=False)
            case ["instances", instance, "install"]:
                return Expected(str(self.instance_path(instance) / "install"), readonly=True)
            case ["instances", _, "install.new"] | ["instances", _, "install.old"]:
                return Expected("none", readonly=True)
            case ["archive", name, "data"]:
                return Expected(str(self.archived_path(name) / "data"))
        return None

    def instance_of(self, dataset: str) -> str | None:
        """`<id>` when `dataset` is `<base>/instances/<id>`."""
        prefix = self.instances + "/"
        if dataset.startswith(prefix) and "/" not in dataset[len(prefix) :] and "@" not in dataset:
            return dataset[len(prefix) :]
        return None

    def version_of_origin(self, origin: str) -> str | None:
        """`<version>` when `origin` is `<base>/releases/<version>@pristine`."""
        prefix, suffix = self.releases + "/", "@" + PRISTINE
        if origin.startswith(prefix) and origin.endswith(suffix):
            return origin[len(prefix) : -len(suffix)]
        return None
