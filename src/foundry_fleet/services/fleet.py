"""The fleet's instance lifecycle, and a façade over the small services it composes.

Reading and registry work lives in its own services (instance_views, release_registry, hostnames,
edge_sites, events, backup_records); the methods here that only pass a call on keep today's callers
working while the lifecycle (create, provision, desired state, delete, switch release) moves into the
operations service and the supervisor's records into their own."""

from __future__ import annotations

import copy
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain import admin_key
from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.foundry_options import build_license, build_options, normalise_license_key
from foundry_fleet.domain.hosts import HostConflict
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.domain.names import validate_discord_id, validate_instance_name
from foundry_fleet.domain.ports import choose_port
from foundry_fleet.edge.caddy_config import TenantSite
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import ProgressCallback
from foundry_fleet.services.backup_records import BackupRecords
from foundry_fleet.services.disk_limits import DiskLimits, limit_bytes
from foundry_fleet.services.edge_sites import EdgeSites
from foundry_fleet.services.events import EventLog, record
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.instance_views import InstanceViews, instance_row
from foundry_fleet.services.node_binaries import resolve_node
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.views import CreatedInstance, EventView, InstanceView, ReleaseView
from foundry_fleet.storage.base import Storage
from foundry_fleet.store.models import Instance, Release, Tenant

MIN_ADMIN_PASSWORD = 8


def _port_is_free(port: int) -> bool:
    """Nothing on the host listens on `port` (an instance bound there would fail to start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


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

    def _changed(self) -> None:
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

    def _creation_lock(self, name: str) -> FileLock:
        lock_dir = self.config.paths.run / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"create-{name}.lock"))

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
        self._changed()
        return view

    def known_hosts(self) -> set[str]:
        return self.hostnames.known_hosts()

    def instance_for_host(self, host: str) -> str | None:
        return self.hostnames.instance_for_host(host)

    def host_conflicts(self) -> list[HostConflict]:
        return self.hostnames.conflicts()

    def edge_sites(self) -> list[TenantSite]:
        return self.sites()

    # used by the lifecycle code below, until it moves ------------------------------------------

    def _clean_extra_hosts(self, name: str, hosts: list[str]) -> list[str]:
        return self.hostnames.clean_extra_hosts(name, hosts)

    def _hosts_lock(self) -> AbstractContextManager[None]:
        return self.hostnames.lock()

    def _refuse_taken_hosts(self, s: Session, name: str, hosts: list[str], own: str | None = None) -> None:
        self.hostnames.refuse_taken(s, name, hosts, own)

    # instances: creating ------------------------------------------------------------------

    def create_instance(
        self,
        name: str,
        release: str,
        license_key: str | None = None,
        owner: str | None = None,
        admin_password: str | None = None,
        start: bool = True,
        extra_hosts: list[str] | None = None,
    ) -> CreatedInstance:
        name = validate_instance_name(name, frozenset({self.config.fleet.fleet_host}))
        hosts = self._clean_extra_hosts(name, extra_hosts or [])
        license_json = build_license(license_key) if license_key else None
        owner_id = validate_discord_id(owner) if owner else None
        if admin_password is not None and len(admin_password) < MIN_ADMIN_PASSWORD:
            raise InvalidInput(f"the admin password is shorter than {MIN_ADMIN_PASSWORD} characters", "choose a longer one")
        generated = admin_password is None
        password = admin_key.generate_admin_password() if generated else admin_password
        assert password is not None

        self.repair_interrupted()
        lock = self._creation_lock(name)
        with lock:
            self._refuse_unowned_files(name)
            row_id = self._reserve_instance(name, release, owner_id, start, hosts)
            try:
                self._provision(name, license_json, password)
            except BaseException as e:
                self._roll_back_creation(name, f"{type(e).__name__}: {e}")
                raise
        with self._session() as s:
            row = self._instance_row(s, name)
            assert row.id == row_id
            row.state = InstanceState.STOPPED.value
            row.state_reason = "created"
            record(s, self.actor, "instance.create", name, Outcome.OK, f"release {release}, port {row.port}")
            view = self.view(row)
        self._changed()
        return CreatedInstance(view, password if generated else None)

    def _refuse_unowned_files(self, name: str) -> None:
        """Files under instances/<name> that no instance owns are someone's data: never adopt them."""
        root = self.storage.paths(name).root
        with self._session() as s:
            owned = s.scalar(select(Instance.id).where(Instance.name == name)) is not None
        if root.exists() and not owned:
            raise Conflict(
                f"{root} exists but belongs to no instance of this fleet",
                f"move it away (for example into {self.config.paths.archive}) before creating {name!r}",
            )

    def _reserve_instance(self, name: str, release: str, owner_id: str | None, start: bool, hosts: list[str]) -> int:
        """Insert the row in state `creating`: it holds the name, port and uid while files are laid out."""
        lo, hi = self.config.instances.port_range
        for attempt in range(3):
            try:
                with self._hosts_lock(), self._session() as s:
                    if s.scalar(select(Instance.id).where(Instance.name == name)) is not None:
                        raise Conflict(f"an instance named {name!r} already exists", "choose another name, or delete it first")
                    self._refuse_taken_hosts(s, name, hosts, own=self.config.host_for(name))
                    rel = s.get(Release, release)
                    if rel is None:
                        raise NotFound(
                            f"release {release} is not in this fleet",
                            "see `foundry-fleet release list`, or add it with `foundry-fleet release add ZIP_OR_URL`",
                        )
                    resolve_node(self.config.node, rel.generation)
                    taken = s.scalars(select(Instance.port)).all()
                    port = choose_port(lo, hi, taken, _port_is_free)
                    uid = self._allocate_uid(s) if self.running_as_root else None
                    tenant = None
                    if owner_id:
                        tenant = s.scalar(select(Tenant).where(Tenant.discord_id == owner_id))
                        if tenant is None:
                            tenant = Tenant(discord_id=owner_id)
                            s.add(tenant)
                    row = Instance(
                        name=name, release_version=release, port=port, uid=uid, owner=tenant,
                        desired=(DesiredState.RUNNING if start else DesiredState.STOPPED).value,
                        state=InstanceState.CREATING.value, state_reason="laying out storage",
                        restarts=0, crash_times=[], extra_hosts=hosts,
                    )
                    s.add(row)
                    s.flush()
                    return row.id
            except IntegrityError:
                # Another creator took the same port or uid between our read and write: pick again.
                if attempt == 2:
                    raise Conflict("could not reserve a port for the instance (busy fleet)", "try again") from None
        raise AssertionError("unreachable")

    def _allocate_uid(self, s: Session) -> int:
        lo, hi = self.config.instances.uid_range
        used = set(s.scalars(select(Instance.uid).where(Instance.uid.is_not(None))).all())
        for uid in range(lo, hi + 1):
            if uid not in used:
                return uid
        raise Conflict(f"no free uid left in [instances] uid_range {lo}-{hi}", "widen uid_range in fleet.toml")

    def _provision(self, name: str, license_json: dict[str, str] | None, password: str) -> None:
        with self._session() as s:
            row = self._instance_row(s, name)
            rel = row.release
            port, uid = row.port, row.uid
        self.storage.ensure_layout()
        quota = self.config.limits.disk_mb * 1024 * 1024 or None
        paths = self.storage.create_instance(name, quota_bytes=quota)
        self.storage.install_release(name, Path(rel.path))
        entry = paths.install / rel.entry
        if not entry.is_file():
            raise FleetError(f"release {rel.version} install has no entry point {rel.entry}", "re-add the release")
        config_dir = paths.data / "Config"
        options = build_options(
            data_path=str(paths.data), port=port, hostname=self.config.host_for(name),
            proxy_port=self.config.edge.https_port,
        )
        _write_json(config_dir / "options.json", options, 0o600)
        if license_json:
            _write_json(config_dir / "license.json", license_json, 0o600)
        _write_text(config_dir / "admin.txt", admin_key.hash_admin_password(password), 0o600)
        if uid is not None:
            _chown_tree(paths.data, uid, uid)

    def _roll_back_creation(self, name: str, why: str) -> None:
        """Undo a creation that failed or was interrupted: nothing half-made is left behind."""
        try:
            self.storage.destroy_instance(name)
        finally:
            with self._session() as s:
                row = s.scalar(select(Instance).where(Instance.name == name))
                if row is not None and row.state == InstanceState.CREATING.value:
                    s.delete(row)
                record(s, self.actor, "instance.create", name, Outcome.FAILED, f"rolled back: {why}")

    def repair_interrupted(self) -> list[str]:
        """Finish what a crash interrupted: creations are rolled back, deletions completed (archived).

        A creation counts as interrupted when its row is `creating` and nobody holds its lock.
        """
        repaired = []
        with self._session() as s:
            deleting = s.scalars(
                select(Instance.name).where(Instance.desired == DesiredState.DELETED.value, Instance.task.is_(None))
            ).all()
        for name in deleting:
            self._finish_delete(name, purge=False)
            repaired.append(name)
        with self._session() as s:
            names = s.scalars(select(Instance.name).where(Instance.state == InstanceState.CREATING.value)).all()
        for name in names:
            lock = self._creation_lock(name)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a creation in progress elsewhere
            try:
                self._roll_back_creation(name, "interrupted before it finished")
                repaired.append(name)
            finally:
                lock.release()
        return repaired

    # instances: desired state -------------------------------------------------------------

    def set_desired(self, name: str, desired: DesiredState, reason: str = "") -> InstanceView:
        with self._session() as s:
            row = self._instance_row(s, name)
            if row.state == InstanceState.CREATING.value:
                raise Conflict(f"instance {name} is still being created", "wait a moment and retry")
            if row.desired == DesiredState.DELETED.value:
                raise Conflict(f"instance {name} is being deleted", "wait a moment; it will be gone")
            if desired is DesiredState.RUNNING and row.suspended_reason is not None:
                raise Conflict(f"instance {name} is suspended: {row.suspended_reason}",
                               "a fleet admin can resume it (`instance resume`)")
            row.desired = desired.value
            if desired is DesiredState.RUNNING and row.state == InstanceState.FAILED.value:
                # An explicit start after a crash loop: forget the loop and try again.
                row.crash_times = []
                row.state = InstanceState.STOPPED.value
                row.state_reason = "start requested after failure"
            action = "instance.start" if desired is DesiredState.RUNNING else "instance.stop"
            record(s, self.actor, action, name, Outcome.OK, reason)
            view = self.view(row)
        self._changed()
        return view

    def log_path(self, name: str) -> Path:
        """The instance's server log (stdout and stderr); NotFound for an unknown instance."""
        self.get_instance(name)
        return self.config.paths.instance_logs(name) / "foundry.log"

    def log_tail(self, name: str, lines: int = 100) -> list[str]:
        """The last `lines` lines of the instance's server log."""
        from foundry_fleet.runtime.logs import tail

        return tail(self.log_path(name), max(0, lines))

    def suspend(self, name: str, reason: str) -> InstanceView:
        """Stop the instance and keep it stopped: its tenant cannot start it until an admin resumes it."""
        reason = " ".join(reason.split())[:200] or "suspended by a fleet admin"
        with self._session() as s:
            row = self._instance_row(s, name)
            row.suspended_reason = reason
            row.desired = DesiredState.STOPPED.value
            record(s, self.actor, "instance.suspend", name, Outcome.OK, reason)
            view = self.view(row)
        self._changed()
        return view

    def resume(self, name: str) -> InstanceView:
        """Lift a suspension and start the instance again."""
        with self._session() as s:
            row = self._instance_row(s, name)
            if row.suspended_reason is None:
                raise Conflict(f"instance {name} is not suspended")
            row.suspended_reason = None
            row.desired = DesiredState.RUNNING.value
            record(s, self.actor, "instance.resume", name, Outcome.OK, "")
            view = self.view(row)
        self._changed()
        return view

    def delete_instance(self, name: str, purge: bool = False) -> str | None:
        """Forget an instance. Its data is archived (kept) unless `purge`; returns where it was kept.

        Two steps: the row is marked `deleted` first, then the files go, then the row. A delete
        interrupted in between is finished by `repair_interrupted`.
        """
        with self._session() as s:
            row = self._instance_row(s, name)
            if row.task is not None:
                raise Conflict(
                    f"instance {name} still has a process (state {row.state})",
                    "stop it first (the daemon must be running to stop it)",
                )
            row.desired = DesiredState.DELETED.value
        return self._finish_delete(name, purge)

    def _finish_delete(self, name: str, purge: bool) -> str | None:
        kept: str | None = None
        if purge:
            self.storage.destroy_instance(name)
        elif self.storage.paths(name).root.exists():
            kept = str(self.storage.archive_instance(name, time.strftime("%Y%m%d-%H%M%S")))
        with self._session() as s:
            row = self._instance_row(s, name)
            s.delete(row)
            record(s, self.actor, "instance.delete", name, Outcome.OK, "purged" if purge else f"data kept at {kept}")
        self._changed()
        return kept

    # used by the supervisor ---------------------------------------------------------------

    def switch_release(self, name: str, version: str) -> str:
        """Install another release for a stopped instance; returns the release it had."""
        with self._session() as s:
            row = self._instance_row(s, name)
            if row.task is not None:
                raise Conflict(f"instance {name} is running", "stop it first")
            rel = s.get(Release, version)
            if rel is None:
                raise NotFound(f"release {version} is not in this fleet", "see `foundry-fleet release list`")
            resolve_node(self.config.node, rel.generation)
            old, path = row.release_version, rel.path
        self.storage.install_release(name, Path(path))
        with self._session() as s:
            row = self._instance_row(s, name)
            row.release_version = version
            record(s, self.actor, "instance.release", name, Outcome.OK, f"{old} -> {version}")
        self._changed()
        return old



def _write_json(path: Path, data: object, mode: int) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n", mode)


def _write_text(path: Path, text: str, mode: int) -> None:
    """Write atomically with the final mode from the start (secrets are never world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            # Data/shared is a mount point for the fleet's shared assets: leave it to root.
            if os.path.relpath(full, path) == os.path.join("Data", "shared"):
                continue
            os.lchown(full, uid, gid)


__all__ = ["Fleet", "normalise_license_key", "validate_discord_id"]
