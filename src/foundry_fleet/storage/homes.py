"""Storage with several homes: the fleet's own, and storage some Nomad nodes keep of their own.

Each home is a whole Storage (a ZFS pool's datasets, or a directory tree) with its own root; an instance's
data lives in exactly one of them, which `home_of` names (the store's record of it). `HomedStorage` is the
Storage the services see: every verb about an instance goes to that instance's home, verbs about the fleet
as a whole (its layout, the views sweep, status) go to every home, and what only the fleet host has (the
shared assets it serves, the driver's name) comes from the main home.

`home_of` is asked at every call, never cached here: a move switches an instance's home in one
transaction, and from that moment on its snapshots, backups and restores must work on the new home.

Every home is driven from the fleet's own host: its root is a path the fleet host reads and writes (a
pool imported here, or the node's fleet dataset mounted here, e.g. over NFS). Its `zfs` commands run
here, or for a pool on another host over ssh (its ZfsRunner's `remote`, see wiring `make_home_storage`);
for those, `ensure_layout` checks that this host's root is that host's tree (storage/home_reach.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from foundry_fleet.domain.errors import ExternalFailure, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.homes import MAIN_HOME
from foundry_fleet.storage.base import InstancePaths, Snapshots, Storage
from foundry_fleet.storage.snapshots import SnapshotInfo
from foundry_fleet.storage.zfs_cmd import ZfsHostUnreachable

log = logging.getLogger(__name__)



class HomedSnapshots:
    """The Snapshots verbs, each on the snapshots of the home holding the instance."""

    def __init__(self, homes: Mapping[str, Storage], home_of: Callable[[str], str]) -> None:
        self._homes = homes
        self._home_of = home_of

    def _of(self, instance: str) -> Snapshots:
        return _home_named(self._homes, self._home_of(instance), instance).snapshots

    def names(self, instance: str) -> list[str]:
        return self._of(instance).names(instance)

    def list(self, instance: str) -> list[SnapshotInfo]:
        return self._of(instance).list(instance)

    def path(self, instance: str, name: str) -> Path:
        return self._of(instance).path(instance, name)

    def take(self, instance: str, data: Path, name: str) -> SnapshotInfo:
        return self._of(instance).take(instance, data, name)

    def take_many(self, targets: list[tuple[str, Path]], name: str) -> list[SnapshotInfo]:
        """Each home's instances in one call to that home (atomic within a home where its driver can be),
        the answers in the order of `targets`."""
        groups: dict[str, list[int]] = {}
        for index, (instance, _data) in enumerate(targets):
            groups.setdefault(self._home_of(instance), []).append(index)
        infos: list[SnapshotInfo | None] = [None] * len(targets)
        for home, indexes in groups.items():
            snapshots = _home_named(self._homes, home, targets[indexes[0]][0]).snapshots
            for index, info in zip(indexes, snapshots.take_many([targets[i] for i in indexes], name), strict=True):
                infos[index] = info
        return [info for info in infos if info is not None]

    def destroy(self, instance: str, name: str) -> None:
        self._of(instance).destroy(instance, name)

    def destroy_all(self, instance: str) -> None:
        self._of(instance).destroy_all(instance)

    def restore(self, instance: str, name: str, data: Path, uid: int | None) -> None:
        self._of(instance).restore(instance, name, data, uid)

    def finish_restore(self, instance: str, data: Path) -> str | None:
        return self._of(instance).finish_restore(instance, data)

    def restoring(self, instance: str) -> str | None:
        return self._of(instance).restoring(instance)

    def sweep_views(self, idle_seconds: float | None = None) -> int:
        """Every home's idle views (each home's own default idle time unless one is given)."""
        swept = 0
        for home in self._homes.values():
            try:
                swept += (home.snapshots.sweep_views() if idle_seconds is None
                          else home.snapshots.sweep_views(idle_seconds))
            except ZfsHostUnreachable as e:  # its views wait for the next sweep; the other homes' go now
                log.warning("snapshot views not swept: %s", e.message)
        return swept


class HomedStorage:
    """The Storage protocol over several homes, each instance's verbs routed to the home holding it."""

    def __init__(self, homes: Mapping[str, Storage], home_of: Callable[[str], str]) -> None:
        if MAIN_HOME not in homes:
            raise InvalidInput(f"the storage homes {sorted(homes)} do not include the fleet's own ({MAIN_HOME!r})",
                               "build the homes from fleet.toml's [[nomad.homes]] plus the fleet root's storage")
        drivers = {home.name for home in homes.values()}
        if len(drivers) > 1:
            raise InvalidInput(f"the storage homes use different drivers ({', '.join(sorted(drivers))})",
                               "every home uses the fleet's [storage] driver")
        self._homes = dict(homes)
        self._home_of = home_of
        main = self._homes[MAIN_HOME]
        self.name = main.name
        self.enforces_limits = main.enforces_limits
        self.snapshots = HomedSnapshots(self._homes, home_of)

    # which home -------------------------------------------------------------------------------

    @property
    def home_names(self) -> tuple[str, ...]:
        """The fleet's own home first, then the others by name."""
        return (MAIN_HOME, *sorted(name for name in self._homes if name != MAIN_HOME))

    def home(self, name: str) -> Storage:
        return _home_named(self._homes, name)

    def home_for(self, instance: str) -> Storage:
        """The Storage that holds the instance's data now."""
        return _home_named(self._homes, self._home_of(instance), instance)

    # the fleet as a whole ---------------------------------------------------------------------

    def ensure_layout(self) -> None:
        """Every home's layout, the fleet's own first; a home that cannot be laid out is named.

        A home on another host that does not answer over ssh is skipped with a warning: a node that is
        down must not keep the fleet (or instances in other homes) from starting; that home's own verbs
        fail, naming it, until it answers, and its layout is made by the next call. One that answers but
        whose tree this host does not see at its root (storage/home_reach.py) is refused, naming the
        mount to make: its files would be written where its nodes never see them."""
        from foundry_fleet.storage.home_reach import check_reached
        from foundry_fleet.storage.zfs import ZfsStorage

        for name in self.home_names:
            home = self._homes[name]
            try:
                home.ensure_layout()
                if isinstance(home, ZfsStorage):
                    check_reached(home, name)  # before anything of its is written through a wrong mount
            except ZfsHostUnreachable as e:
                if name == MAIN_HOME:
                    raise
                log.warning("storage home %s not laid out now: %s", name, e.message)
            except ExternalFailure as e:
                raise ExternalFailure(f"storage home {name!r}: {e.message}", e.hint) from e
            except OSError as e:
                raise ExternalFailure(f"storage home {name!r} cannot be laid out: {e}",
                                      "check that its root is mounted here and writable (see [[nomad.homes]])") from e

    def shared_dir(self) -> Path:
        return self._homes[MAIN_HOME].shared_dir()

    def sweep_views(self, idle_seconds: float | None = None) -> int:
        """Every home's idle snapshot views (the same as `snapshots.sweep_views`)."""
        return self.snapshots.sweep_views(idle_seconds)

    def status(self) -> dict[str, object]:
        """The main home's status (as with one home), plus "homes": each home's own status, or for a home
        that cannot be read now (an NFS mount gone, a pool not imported) what went wrong."""
        main = self._homes[MAIN_HOME].status()
        homes: dict[str, object] = {MAIN_HOME: main}
        for name in self.home_names[1:]:
            try:
                homes[name] = self._homes[name].status()
            except (FleetError, OSError) as e:
                homes[name] = {"driver": self.name, "error": getattr(e, "message", None) or str(e),
                               "hint": getattr(e, "hint", None)}
        return {**main, "homes": homes}

    def tighten_quotas(self, instances: list[str]) -> list[str]:
        by_home: dict[str, list[str]] = {}
        for instance in instances:
            by_home.setdefault(self._home_of(instance), []).append(instance)
        changed: list[str] = []
        for name, members in by_home.items():
            changed += _home_named(self._homes, name, members[0]).tighten_quotas(members)
        return changed

    # one instance -----------------------------------------------------------------------------

    def paths(self, instance: str) -> InstancePaths:
        return self.home_for(instance).paths(instance)

    def create_instance(self, instance: str, quota_bytes: int | None = None) -> InstancePaths:
        return self.home_for(instance).create_instance(instance, quota_bytes)

    def install_release(self, instance: str, release_dir: Path) -> Path:
        return self.home_for(instance).install_release(instance, release_dir)

    def archive_instance(self, instance: str, stamp: str) -> Path:
        return self.home_for(instance).archive_instance(instance, stamp)

    def destroy_instance(self, instance: str) -> None:
        self.home_for(instance).destroy_instance(instance)

    def usage_bytes(self, instance: str) -> int:
        return self.home_for(instance).usage_bytes(instance)


def holding(storage: Storage, instance: str) -> Storage:
    """The storage that holds `instance`: its home's in a fleet with homes, else the fleet's one storage."""
    return storage.home_for(instance) if isinstance(storage, HomedStorage) else storage


def named_home(storage: Storage, home: str) -> Storage:
    """Home `home` of a fleet with homes; a fleet without has one storage, its own home."""
    return storage.home(home) if isinstance(storage, HomedStorage) else storage


def _home_named(homes: Mapping[str, Storage], name: str, instance: str | None = None) -> Storage:
    found = homes.get(name)
    if found is None:
        whose = f" (where instance {instance} is recorded to live)" if instance is not None else ""
        raise NotFound(f"there is no storage home named {name!r}{whose}",
                       f"the homes are {', '.join(sorted(homes))}; see [[nomad.homes]] in fleet.toml")
    return found
