"""The fleet's state: releases, instances and their views, hostnames, what the edge routes and what the
supervisor records. Operations on an instance are services/operations.py's; creating and deleting are
provisioning.py's, and what each instance should be doing is desired_state.py's."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.foundry_options import normalise_license_key
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.domain.hosts import HostConflict, InstanceHosts, assign_hosts, comparable_host, normalise_hostname
from foundry_fleet.domain.names import validate_discord_id
from foundry_fleet.edge.caddy_config import TenantSite
from foundry_fleet.domain.release import ReleaseInfo, ReleaseLayout, node_range_for
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import ProgressCallback
from foundry_fleet.services.events import record
from foundry_fleet.services.node_binaries import resolve_node
from foundry_fleet.services.views import EventView, InstanceView, ReleaseView
from foundry_fleet.storage.base import Storage
from foundry_fleet.store.models import EventRow, Instance, Release

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

    def _instance_row(self, session: Session, name: str) -> Instance:
        row = session.scalar(select(Instance).where(Instance.name == name))
        if row is None:
            raise NotFound(f"no instance named {name!r}", "see `foundry-fleet instance list`")
        return row

    def view(self, row: Instance) -> InstanceView:
        paths = self.storage.paths(row.name)
        task = row.task or {}
        return InstanceView(
            name=row.name,
            state=row.state,
            desired=row.desired,
            state_reason=row.state_reason,
            release=row.release_version,
            port=row.port,
            host=self.config.host_for(row.name),
            hosts=[self.config.host_for(row.name), *(row.extra_hosts or [])],
            url=self.config.public_url(row.name),
            data_dir=str(paths.data),
            install_dir=str(paths.install),
            pid=task.get("pid") if isinstance(task.get("pid"), int) else None,
            restarts=row.restarts,
            owner=row.owner.discord_id if row.owner else None,
            uid=row.uid,
            created_at=row.created_at,
            suspended=row.suspended_reason,
        )

    # releases -----------------------------------------------------------------------------

    def add_release(self, source: str, progress: ProgressCallback | None = None) -> ReleaseView:
        info = self.releases.add(source, progress)
        try:
            # A release that no node binary here can run is refused now, not when a tenant starts it.
            resolve_node(self.config.node, info.generation)
        except FleetError as e:
            with self._session() as s:
                record(s, self.actor, "release.add", info.version, Outcome.REFUSED, e.message)
            raise
        with self._session() as s:
            row = s.get(Release, info.version)
            if row is None:
                s.add(_release_row(info))
                record(s, self.actor, "release.add", info.version, Outcome.OK, f"from {info.source}", sha256=info.sha256)
            elif row.sha256 != info.sha256:
                raise Conflict(
                    f"release {info.version} is already registered with another zip (sha256 {row.sha256[:12]}...)",
                    f"remove it first with `foundry-fleet release remove {info.version}`",
                )
        return self.get_release(info.version)

    def _release_view(self, s: Session, row: Release) -> ReleaseView:
        users = s.scalars(select(Instance.name).where(Instance.release_version == row.version)).all()
        return ReleaseView(
            version=row.version, generation=row.generation, build=row.build, layout=row.layout,
            entry=row.entry, node=str(node_range_for(row.generation)), sha256=row.sha256,
            zip_bytes=row.zip_bytes, unpacked_bytes=row.unpacked_bytes, source=row.source,
            instances=sorted(users),
        )

    def get_release(self, version: str) -> ReleaseView:
        with self._session() as s:
            row = s.get(Release, version)
            if row is None:
                raise NotFound(f"release {version} is not in this fleet", "see `foundry-fleet release list`, or add it with `release add`")
            return self._release_view(s, row)

    def list_releases(self) -> list[ReleaseView]:
        with self._session() as s:
            rows = s.scalars(select(Release).order_by(Release.generation, Release.build)).all()
            return [self._release_view(s, r) for r in rows]

    def remove_release(self, version: str) -> None:
        with self._session() as s:
            row = s.get(Release, version)
            if row is None:
                raise NotFound(f"release {version} is not in this fleet", "see `foundry-fleet release list`")
            users = s.scalars(select(Instance.name).where(Instance.release_version == version)).all()
            if users:
                record(s, self.actor, "release.remove", version, Outcome.REFUSED, "in use")
                raise Conflict(
                    f"release {version} is in use by {', '.join(sorted(users))}",
                    "upgrade or delete those instances first",
                )
            s.delete(row)
            record(s, self.actor, "release.remove", version, Outcome.OK)
        self.releases.remove(version)

    # instances: reading -------------------------------------------------------------------

    def list_instances(self) -> list[InstanceView]:
        with self._session() as s:
            return [self.view(r) for r in s.scalars(select(Instance).order_by(Instance.name)).all()]

    def get_instance(self, name: str) -> InstanceView:
        with self._session() as s:
            return self.view(self._instance_row(s, name))

    def events(self, target: str | None = None, limit: int = 50) -> list[EventView]:
        with self._session() as s:
            q = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
            if target:
                q = q.where(EventRow.target == target)
            rows = s.scalars(q).all()
            return [EventView(r.at, r.actor, r.action, r.target, r.outcome, r.message) for r in reversed(rows)]

    # instances: creating ------------------------------------------------------------------

    def clean_extra_hosts(self, name: str, hosts: list[str]) -> list[str]:
        """Extra hostnames in their one spelling, each a real hostname (never an IP address)."""
        own = self.config.host_for(name)
        clean: list[str] = []
        for h in hosts:
            host = normalise_hostname(h, "extra hostname", min_labels=2)
            if host == own:
                raise InvalidInput(f"{host} is already {name}'s own host", "list only the hostnames it has besides that")
            if host not in clean:
                clean.append(host)
        return clean

    def set_extra_hosts(self, name: str, hosts: list[str]) -> InstanceView:
        clean = self.clean_extra_hosts(name, hosts)
        with self.hosts_lock(), self._session() as s:
            row = self._instance_row(s, name)
            self.refuse_taken_hosts(s, name, clean)
            row.extra_hosts = clean
            record(s, self.actor, "instance.hosts", name, Outcome.OK, ", ".join(clean) or "none")
            view = self.view(row)
        self.changed()
        return view

    # hostnames: each served for one instance ----------------------------------------------

    @contextmanager
    def hosts_lock(self) -> Iterator[None]:
        """Held while a host is checked and claimed, by every process (CLI or daemon): two requests
        for the same host cannot both find it free."""
        lock_dir = self.config.paths.run / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_dir / "hosts.lock"), timeout=60):
                yield
        except Timeout:
            raise Conflict("another change of hostnames has been under way for a minute", "try again") from None

    def refuse_taken_hosts(self, s: Session, name: str, hosts: list[str], own: str | None = None) -> None:
        """Conflict if one of `hosts` (or `own`, the host a new instance's name gives it) is the fleet's
        or another instance's. Call with the hosts lock held, in the session that writes the claim."""
        fleet_host = self.fleet_host()
        taken = self._claims(s, exclude=name)
        if own is not None:
            if own == fleet_host:
                raise Conflict(f"{name}'s host {own} is the fleet's own host", "choose another name")
            if own in taken:
                holder, kind = taken[own]
                raise Conflict(
                    f"the name {name!r} would be served at {own}, which is already {kind} of instance {holder}",
                    f"choose another name, or first remove {own} from {holder} "
                    f"(`foundry-fleet instance hosts {holder} HOST...` with the hosts it keeps, or --clear)",
                )
        for host in hosts:
            if host == fleet_host:
                raise Conflict(f"host {host} is the fleet's own host", "choose another hostname")
            if host in taken:
                holder, kind = taken[host]
                hint = ("each hostname can point at one instance only: choose another hostname"
                        if kind == "the own host" else
                        f"each hostname can point at one instance only: remove it from {holder} first "
                        f"(`foundry-fleet instance hosts {holder} HOST...` with the hosts it keeps, or --clear)")
                raise Conflict(f"host {host} is already {kind} of instance {holder}", hint)

    def _claims(self, s: Session, exclude: str | None = None) -> dict[str, tuple[str, str]]:
        """host -> (the instance that asks for it, "the own host" or "an extra hostname"), as stored."""
        claims: dict[str, tuple[str, str]] = {}
        for row in s.scalars(select(Instance).where(Instance.name != exclude) if exclude else select(Instance)).all():
            claims.setdefault(comparable_host(self.config.host_for(row.name)), (row.name, "the own host"))
            for extra in row.extra_hosts or []:
                claims.setdefault(comparable_host(str(extra)), (row.name, "an extra hostname"))
        return claims

    def host_holder(self, host: str) -> str | None:
        """Who claims `host` in the state database (an instance, or "the fleet"), served or not."""
        host = comparable_host(host)
        if host == self.fleet_host():
            return "the fleet"
        with self._session() as s:
            holder = self._claims(s).get(host)
        return holder[0] if holder else None

    # the edge -----------------------------------------------------------------------------

    def fleet_host(self) -> str:
        return self.config.host_for(self.config.fleet.fleet_host)

    def _served_hosts(self, s: Session) -> tuple[list[Instance], dict[str, tuple[str, ...]], list[HostConflict]]:
        """The instances the edge routes, the hosts it serves for each, and the claims it does not serve.

        The one answer the edge, the backups app and the TLS permission all use, so a host never leads
        to one instance's server and another's backups."""
        rows = list(s.scalars(select(Instance).where(Instance.desired != DesiredState.DELETED.value)).all())
        wanted = [InstanceHosts(r.name, self.config.host_for(r.name), tuple(r.extra_hosts or []), (r.created_at, r.id))
                  for r in rows]
        served, conflicts = assign_hosts(self.fleet_host(), wanted)
        return rows, served, conflicts

    def known_hosts(self) -> set[str]:
        """Every hostname the fleet serves: its own host and all of its instances' hosts."""
        with self._session() as s:
            _rows, served, _conflicts = self._served_hosts(s)
        return {self.fleet_host(), *(h for hosts in served.values() for h in hosts)}

    def instance_for_host(self, host: str) -> str | None:
        """The instance the edge serves at a hostname (its own or an extra one), or None."""
        host = comparable_host(host)
        with self._session() as s:
            _rows, served, _conflicts = self._served_hosts(s)
        return next((name for name, hosts in served.items() if host in hosts), None)

    def host_conflicts(self) -> list[HostConflict]:
        """Hosts instances ask for that the edge does not serve them (collisions from before they were
        refused, or an invalid hostname in an old database)."""
        with self._session() as s:
            return self._served_hosts(s)[2]

    def edge_sites(self) -> list[TenantSite]:
        """What the edge routes: every instance that exists, with the state its page should show."""
        with self._session() as s:
            rows, served, _conflicts = self._served_hosts(s)
            return [TenantSite(name=r.name, hosts=served[r.name], port=r.port, state=r.state)
                    for r in rows if served[r.name]]

    # instances: desired state -------------------------------------------------------------

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

    def log_path(self, name: str) -> Path:
        """The instance's server log (stdout and stderr); NotFound for an unknown instance."""
        self.get_instance(name)
        return self.config.paths.instance_logs(name) / "foundry.log"

    def log_tail(self, name: str, lines: int = 100) -> list[str]:
        """The last `lines` lines of the instance's server log."""
        from foundry_fleet.runtime.logs import tail

        return tail(self.log_path(name), max(0, lines))

    # used by the supervisor ---------------------------------------------------------------

    def launch_plan(self, name: str) -> tuple[InstanceView, ReleaseInfo, str]:
        """What the supervisor needs to start an instance: its view, release and node binary."""
        with self._session() as s:
            row = self._instance_row(s, name)
            rel = row.release
            info = ReleaseInfo(
                version=rel.version, generation=rel.generation, build=rel.build,
                layout=ReleaseLayout(rel.layout), entry=rel.entry, sha256=rel.sha256,
                zip_bytes=rel.zip_bytes, unpacked_bytes=rel.unpacked_bytes, path=rel.path, source=rel.source,
            )
            view = self.view(row)
        return view, info, resolve_node(self.config.node, info.generation)

    def observe(
        self,
        name: str,
        state: InstanceState,
        reason: str = "",
        *,
        task: dict | None | bool = False,
        restarts_delta: int = 0,
        crash_times: list[float] | None = None,
        event: tuple[str, Outcome] | None = None,
        actor: str = "supervisor",
    ) -> None:
        """Record what the supervisor saw. `task=False` leaves the stored task handle untouched."""
        with self._session() as s:
            row = s.scalar(select(Instance).where(Instance.name == name))
            if row is None:
                return
            row.state = state.value
            row.state_reason = reason
            if task is not False:
                row.task = task  # type: ignore[assignment]
            row.restarts += restarts_delta
            if crash_times is not None:
                row.crash_times = crash_times
            if event:
                record(s, actor, event[0], name, event[1], reason)
        self.changed()

    def supervision_rows(self) -> list[tuple[str, str, str, dict | None, list[float]]]:
        """(name, desired, state, task, crash_times) of every instance past creation."""
        with self._session() as s:
            rows = s.scalars(
                select(Instance).where(
                    Instance.state != InstanceState.CREATING.value, Instance.desired != DesiredState.DELETED.value
                )
            ).all()
            return [(r.name, r.desired, r.state, r.task, list(r.crash_times or [])) for r in rows]

    def backup_facts(self, name: str) -> tuple[str | None, bool, int | None]:
        """(its own backup plan or None, whether a process is recorded, its uid)."""
        with self._session() as s:
            row = self._instance_row(s, name)
            return row.backup_plan, row.task is not None, row.uid

    def set_backup_plan(self, name: str, plan: str | None) -> None:
        with self._session() as s:
            row = self._instance_row(s, name)
            row.backup_plan = plan
            record(s, self.actor, "backup.plan", name, Outcome.OK, plan or f"default ({self.config.backups.plan})")

    def crash_times(self, name: str) -> list[float]:
        """When the instance crashed recently (what the crash-loop rule counts)."""
        with self._session() as s:
            return list(self._instance_row(s, name).crash_times or [])

    def record_event(self, action: str, target: str, outcome: Outcome, message: str = "", actor: str | None = None) -> None:
        with self._session() as s:
            record(s, actor or self.actor, action, target, outcome, message)


def _release_row(info: ReleaseInfo) -> Release:
    return Release(
        version=info.version, generation=info.generation, build=info.build, layout=info.layout.value,
        entry=info.entry, sha256=info.sha256, zip_bytes=info.zip_bytes, unpacked_bytes=info.unpacked_bytes,
        path=info.path, source=info.source, added_at=time.time(),
    )


__all__ = ["Fleet", "normalise_license_key", "validate_discord_id"]
