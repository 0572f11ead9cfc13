"""Bringing an instance into being and out of it: reserve its name, port and uid, lay out its storage,
install its release and write Foundry's files; roll back a creation that failed or was interrupted;
archive (or purge) a deleted one; and, after a crash, finish whichever of these was under way.

Every step leaves the state database saying where it got to (`creating`, `deleted`), so whatever step
the fleet dies in, `repair_interrupted` puts it right: nothing half-made stays behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from filelock import FileLock, Timeout
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import MAIN_HOME, FleetConfig
from foundry_fleet.domain import admin_key, instance_layout
from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound, Unsupported
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.foundry_options import build_license, build_options
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.domain.names import validate_discord_id, validate_instance_name
from foundry_fleet.domain.ports import choose_port
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.services.changes import Changes
from foundry_fleet.services.events import record
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.instance_views import InstanceViews, changeable_row, instance_row
from foundry_fleet.services.node_binaries import resolve_node
from foundry_fleet.services.views import CreatedInstance
from foundry_fleet.storage.base import Storage
from foundry_fleet.storage.homes import holding, named_home
from foundry_fleet.storage.ownership import chown_tree
from foundry_fleet.store.models import Instance, Release, Tenant

MIN_ADMIN_PASSWORD = 8


@dataclass(frozen=True)
class Repaired:
    """What `repair_interrupted` finished."""

    rolled_back: list[str]  # creations that never finished: their files and rows are gone
    deleted: list[str]  # deletions that never finished: done now, their data archived


class Provisioning:
    def __init__(self, config: FleetConfig, sessions: sessionmaker[Session], storage: Storage,
                 instances: InstanceViews, hostnames: Hostnames, changes: Changes,
                 port_is_free: Callable[[int], bool]) -> None:
        # The rows of creating and deleting are read and written here; `hostnames` checks and claims
        # the hosts a new instance brings, `changes` hears of every change (the edge follows them).
        # `port_is_free`: the runtime's say on a port (only it knows where its tasks listen).
        self.config = config
        self.sessions = sessions
        self.storage = storage
        self.instances = instances
        self.hostnames = hostnames
        self.changes = changes
        self.port_is_free = port_is_free
        self.running_as_root = os.geteuid() == 0

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # creating -----------------------------------------------------------------------------

    def create(
        self,
        actor: str,
        name: str,
        release: str,
        license_key: str | None = None,
        owner: str | None = None,
        admin_password: str | None = None,
        start: bool = True,
        extra_hosts: list[str] | None = None,
        node: str | None = None,
    ) -> CreatedInstance:
        """`node`: the node the runtime is to place it on (checked against the runtime by the caller)."""
        name = validate_instance_name(name, frozenset({self.config.fleet.fleet_host}))
        hosts = self.hostnames.clean_extra_hosts(name, extra_hosts or [])
        license_json = build_license(license_key) if license_key else None
        owner_id = validate_discord_id(owner) if owner else None
        if admin_password is not None and len(admin_password) < MIN_ADMIN_PASSWORD:
            raise InvalidInput(f"the admin password is shorter than {MIN_ADMIN_PASSWORD} characters", "choose a longer one")
        generated = admin_password is None
        password = admin_key.generate_admin_password() if generated else admin_password
        assert password is not None

        self.repair_interrupted(actor)
        with self._creation_lock(name):
            self._refuse_unowned_files(name, node)
            row_id = self._reserve(name, release, owner_id, start, hosts, node)
            try:
                self._lay_out(name, license_json, password)
            except BaseException as e:
                self._roll_back(actor, name, f"{type(e).__name__}: {e}")
                raise
        with self._session() as s:
            row = instance_row(s, name)
            assert row.id == row_id
            row.state = InstanceState.STOPPED.value
            row.state_reason = "created"
            record(s, actor, "instance.create", name, Outcome.OK,
                   f"release {release}, port {row.port}" + (f", node {row.node}" if row.node else ""))
            view = self.instances.view(row)
        self.changes.notify()
        return CreatedInstance(view, password if generated else None)

    def _creation_lock(self, name: str) -> FileLock:
        lock_dir = self.config.paths.run / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"create-{name}.lock"))

    def _refuse_unowned_files(self, name: str, node: str | None) -> None:
        """Files under instances/<name> that no instance owns are someone's data: never adopt them (looked
        for in the home the instance is to be laid out in)."""
        root = named_home(self.storage, self._home_for(node) or MAIN_HOME).paths(name).root
        with self._session() as s:
            owned = s.scalar(select(Instance.id).where(Instance.name == name)) is not None
        if root.exists() and not owned:
            raise Conflict(
                f"{root} exists but belongs to no instance of this fleet",
                f"move it away (for example into {self.config.paths.archive}) before creating {name!r}",
            )

    def _reserve(self, name: str, release: str, owner_id: str | None, start: bool, hosts: list[str],
                 node: str | None = None) -> int:
        """Insert the row in state `creating`: it holds the name, port and uid while files are laid out."""
        lo, hi = self.config.instances.port_range
        for attempt in range(3):
            try:
                with self.hostnames.lock(), self._session() as s:
                    if s.scalar(select(Instance.id).where(Instance.name == name)) is not None:
                        raise Conflict(f"an instance named {name!r} already exists", "choose another name, or delete it first")
                    self.hostnames.refuse_taken(s, name, hosts, own=self.config.host_for(name))
                    rel = s.get(Release, release)
                    if rel is None:
                        raise NotFound(
                            f"release {release} is not in this fleet",
                            "see `foundry-fleet release list`, or add it with `foundry-fleet release add ZIP_OR_URL`",
                        )
                    resolve_node(self.config.node, rel.generation)
                    taken = s.scalars(select(Instance.port)).all()
                    port = choose_port(lo, hi, taken, self.port_is_free)
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
                        restarts=0, crash_times=[], extra_hosts=hosts, node=node, home=self._home_for(node),
                    )
                    s.add(row)
                    s.flush()
                    return row.id
            except IntegrityError:
                # Another creator took the same port or uid between our read and write: pick again.
                if attempt == 2:
                    raise Conflict("could not reserve a port for the instance (busy fleet)", "try again") from None
        raise AssertionError("unreachable")

    def _home_for(self, node: str | None) -> str | None:
        """The home a new instance's data is laid out in: that of the node asked for (its job can run only
        where its data is); None, the fleet's own, when the runtime chooses."""
        home = self.config.nomad.home_of_node(node) if node else MAIN_HOME
        return None if home == MAIN_HOME else home

    def _allocate_uid(self, s: Session) -> int:
        lo, hi = self.config.instances.uid_range
        used = set(s.scalars(select(Instance.uid).where(Instance.uid.is_not(None))).all())
        for uid in range(lo, hi + 1):
            if uid not in used:
                return uid
        raise Conflict(f"no free uid left in [instances] uid_range {lo}-{hi}", "widen uid_range in fleet.toml")

    def _lay_out(self, name: str, license_json: dict[str, str] | None, password: str) -> None:
        """Storage, the installed release, and Foundry's own files (options, license, admin key)."""
        with self._session() as s:
            row = instance_row(s, name)
            rel = row.release
            port, uid = row.port, row.uid
        # Only the home it is laid out in: another home's host may be far away (ssh) or not answering, and
        # the daemon's start lays out every home anyway.
        holding(self.storage, name).ensure_layout()
        quota = self.config.limits.disk_mb * 1024 * 1024 or None
        paths = self.storage.create_instance(name, quota_bytes=quota)
        self.storage.install_release(name, Path(rel.path))
        entry = paths.install / rel.entry
        if not entry.is_file():
            raise FleetError(f"release {rel.version} install has no entry point {rel.entry}", "re-add the release")
        options = build_options(
            data_path=str(paths.data), port=port, hostname=self.config.host_for(name),
            proxy_port=self.config.edge.https_port,
        )
        # Secrets all three: written 0600 from the start, never readable by others for a moment.
        write_atomic(paths.data / instance_layout.OPTIONS, _json(options), 0o600)
        if license_json:
            write_atomic(paths.data / instance_layout.LICENSE, _json(license_json), 0o600)
        write_atomic(paths.data / instance_layout.ADMIN_PASSWORD, admin_key.hash_admin_password(password), 0o600)
        if uid is not None:
            chown_tree(paths.data, uid, uid)

    def _roll_back(self, actor: str, name: str, why: str) -> None:
        """Undo a creation that failed or was interrupted: nothing half-made is left behind."""
        try:
            self.storage.destroy_instance(name)
        finally:
            with self._session() as s:
                row = s.scalar(select(Instance).where(Instance.name == name))
                if row is not None and row.state == InstanceState.CREATING.value:
                    s.delete(row)
                record(s, actor, "instance.create", name, Outcome.FAILED, f"rolled back: {why}")

    # Foundry's secrets, after creation ------------------------------------------------------

    def set_license(self, actor: str, name: str, license_key: str) -> None:
        """Write the instance's Config/license.json (Foundry reads it at start: the caller restarts it)."""
        license_json = build_license(license_key)
        self._write_secret(actor, name, instance_layout.LICENSE, _json(license_json), "instance.license",
                           "license key set")

    def set_admin_password(self, actor: str, name: str, password: str | None) -> str | None:
        """Replace the admin key (a generated password when `password` is None); returns the generated one."""
        if password is not None and len(password) < MIN_ADMIN_PASSWORD:
            raise InvalidInput(f"the admin password is shorter than {MIN_ADMIN_PASSWORD} characters", "choose a longer one")
        chosen = password if password is not None else admin_key.generate_admin_password()
        self._write_secret(actor, name, instance_layout.ADMIN_PASSWORD, admin_key.hash_admin_password(chosen),
                           "instance.admin-password", "admin password " + ("set" if password else "generated"))
        return None if password is not None else chosen

    def _write_secret(self, actor: str, name: str, relative: PurePosixPath, text: str, action: str,
                      message: str) -> None:
        with self._session() as s:
            row = changeable_row(s, name)
            uid, home = row.uid, row.home or MAIN_HOME
        if home != MAIN_HOME:
            # Its data lies on another home's host: this daemon cannot write there directly.
            raise Unsupported(f"instance {name}'s data is on home {home}",
                              "move it to a node of this fleet's own home first (`instance move`)")
        path = self.storage.paths(name).data / relative
        # 0600 from the start like at creation, then the instance's own, so its server can read it.
        write_atomic(path, text, 0o600)
        if uid is not None:
            os.chown(path, uid, uid)
        with self._session() as s:
            record(s, actor, action, name, Outcome.OK, message)

    # deleting -----------------------------------------------------------------------------

    def delete(self, actor: str, name: str, purge: bool = False) -> str | None:
        """Forget an instance. Its data is archived (kept) unless `purge`; returns where it was kept.

        Two steps: the row is marked `deleted` first, then the files go, then the row. A delete
        interrupted in between is finished by `repair_interrupted`.
        """
        with self._session() as s:
            row = instance_row(s, name)
            if row.task is not None:
                raise Conflict(
                    f"instance {name} still has a process (state {row.state})",
                    "stop it first (the daemon must be running to stop it)",
                )
            row.desired = DesiredState.DELETED.value
        return self._finish_delete(actor, name, purge)

    def _finish_delete(self, actor: str, name: str, purge: bool) -> str | None:
        kept: str | None = None
        if purge:
            self.storage.destroy_instance(name)
        elif self.storage.paths(name).root.exists():
            kept = str(self.storage.archive_instance(name, time.strftime("%Y%m%d-%H%M%S")))
        with self._session() as s:
            s.delete(instance_row(s, name))
            record(s, actor, "instance.delete", name, Outcome.OK, "purged" if purge else f"data kept at {kept}")
        self.changes.notify()
        return kept

    # after a crash ------------------------------------------------------------------------

    def repair_interrupted(self, actor: str = "repair") -> Repaired:
        """Finish what a crash interrupted: creations are rolled back, deletions completed (archived).

        A creation counts as interrupted when its row is `creating` and nobody holds its lock.
        """
        with self._session() as s:
            deleting = list(s.scalars(
                select(Instance.name).where(Instance.desired == DesiredState.DELETED.value, Instance.task.is_(None))
            ).all())
        for name in deleting:
            self._finish_delete(actor, name, purge=False)
        with self._session() as s:
            creating = s.scalars(select(Instance.name).where(Instance.state == InstanceState.CREATING.value)).all()
        rolled_back = []
        for name in creating:
            lock = self._creation_lock(name)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a creation in progress elsewhere
            try:
                self._roll_back(actor, name, "interrupted before it finished")
                rolled_back.append(name)
            finally:
                lock.release()
        return Repaired(rolled_back=rolled_back, deleted=deleting)



def _json(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"
