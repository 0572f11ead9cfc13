"""The fleet's state, and a façade over the small services it composes.

Reading and registry work lives in its own services (instance_views, release_registry, hostnames,
edge_sites, events, backup_records); operations on an instance are services/operations.py's, creating
and deleting provisioning.py's, and what each instance should be doing desired_state.py's. The methods
here only pass a call on, for the callers that still take the whole fleet."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.hosts import HostConflict
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.edge.caddy_config import TenantSite
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import ProgressCallback
from foundry_fleet.services.backup_records import BackupRecords
from foundry_fleet.services.disk_limits import DiskLimits, limit_bytes
from foundry_fleet.services.edge_sites import EdgeSites
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.instance_views import InstanceViews, instance_row
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.views import EventView, InstanceView, ReleaseView
from foundry_fleet.storage.base import Storage
from foundry_fleet.store.models import Instance

class Fleet:
    """One fleet: its configuration, state database, storage and release cache."""

    def __init__(
        self,
        config: FleetConfig,
        sessions: sessionmaker[Session],
        storage: Storage,
        releases: ReleaseCache,
        actor: str = "cli",
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.storage = storage
        self.releases = releases
        self.actor = actor
        self.running_as_root = os.geteuid() == 0
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every change to instances (the edge follows them). Any thread."""
        self._listeners.append(listener)

    def changed(self) -> None:
        for listener in self._listeners:
            listener()

    def acting_as(self, actor: str) -> Fleet:
        """The same fleet, recording events under another actor (e.g. the CLI user behind an API call)."""
        other = copy.copy(self)
        other.actor = actor
        return other

    # helpers ------------------------------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # the small services, built with this fleet's actor ----------------------------------------

    @property
    def instances(self) -> InstanceViews:
        return InstanceViews(self.config, self.sessions, self.storage)

    @property
    def event_log(self) -> EventLog:
        return EventLog(self.sessions, self.actor)

    @property
    def registry(self) -> ReleaseRegistry:
        return ReleaseRegistry(self.config.node, self.sessions, self.releases, self.actor)

    @property
    def hostnames(self) -> Hostnames:
        return Hostnames(self.config, self.sessions, self.instances, self.actor)

    @property
    def sites(self) -> EdgeSites:
        return EdgeSites(self.sessions, self.hostnames)

    @property
    def backup_records(self) -> BackupRecords:
        return BackupRecords(self.sessions, self.config.backups.plan, self.actor)

    @property
    def disk_limits(self) -> DiskLimits:
        return DiskLimits(self.storage, limit_bytes(self.config))

    @staticmethod
    def _instance_row(session: Session, name: str) -> Instance:
        return instance_row(session, name)

    def view(self, row: Instance) -> InstanceView:
        return self.instances.view(row)

    # passed on to the small services ---------------------------------------------------------

    def add_release(self, source: str, progress: ProgressCallback | None = None) -> ReleaseView:
        return self.registry.add(source, progress)

    def get_release(self, version: str) -> ReleaseView:
        return self.registry.get(version)

    def list_releases(self) -> list[ReleaseView]:
        return self.registry.list()

    def remove_release(self, version: str) -> None:
        self.registry.remove(version)

    def list_instances(self) -> list[InstanceView]:
        return self.instances.list()

    def get_instance(self, name: str) -> InstanceView:
        return self.instances.get(name)

    def events(self, target: str | None = None, limit: int = 50) -> list[EventView]:
        return self.event_log.recent(target, limit)

    def record_event(self, action: str, target: str, outcome: Outcome, message: str = "", actor: str | None = None) -> None:
        self.event_log.record(action, target, outcome, message, actor)

    def set_extra_hosts(self, name: str, hosts: list[str]) -> InstanceView:
        view = self.hostnames.set_extra_hosts(name, hosts)
        self.changed()
        return view

    def known_hosts(self) -> set[str]:
        return self.hostnames.known_hosts()

    def instance_for_host(self, host: str) -> str | None:
        return self.hostnames.instance_for_host(host)

    def host_conflicts(self) -> list[HostConflict]:
        return self.hostnames.conflicts()

    def edge_sites(self) -> list[TenantSite]:
        return self.sites()

    # used by the lifecycle services (provisioning, desired state) ------------------------------------------

    def clean_extra_hosts(self, name: str, hosts: list[str]) -> list[str]:
        return self.hostnames.clean_extra_hosts(name, hosts)

    def hosts_lock(self) -> AbstractContextManager[None]:
        return self.hostnames.lock()

    def fleet_host(self) -> str:
        return self.hostnames.fleet_host()

    def refuse_taken_hosts(self, s: Session, name: str, hosts: list[str], own: str | None = None) -> None:
        self.hostnames.refuse_taken(s, name, hosts, own)

    # instances: hand-offs for callers that predate the lifecycle services --------------------

    def repair_interrupted(self) -> list[str]:
        """For the supervisor's start: finish creations and deletions a crash interrupted (see
        services/provisioning.py, which owns them)."""
        from foundry_fleet.services.provisioning import Provisioning

        repaired = Provisioning(self).repair_interrupted()
        return [*repaired.deleted, *repaired.rolled_back]

    def set_desired(self, name: str, desired: DesiredState, reason: str = "") -> InstanceView:
        """For the backups' repair, which keeps an instance stopped on half-restored data: the desired
        state itself is services/desired_state.py's."""
        from foundry_fleet.services.desired_state import DesiredStates

        return DesiredStates(self).set(self.actor, name, desired, reason)
