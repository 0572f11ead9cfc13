"""What each instance should be doing: running or stopped, suspended or not, on which release.

Writing the wish is all this does; the supervisor makes it so (services/operations.py tells it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.errors import Conflict, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.idle import FOLLOW_FLEET, format_idle_after, parse_idle_after
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.config import NodeSection
from foundry_fleet.services.changes import Changes
from foundry_fleet.services.events import record
from foundry_fleet.services.instance_views import InstanceViews, changeable_row, instance_row
from foundry_fleet.services.node_binaries import resolve_node
from foundry_fleet.services.views import InstanceView
from foundry_fleet.storage.base import Storage
from foundry_fleet.store.models import Release


@dataclass(frozen=True)
class ReleaseSwitch:
    name: str
    previous: str
    current: str


class DesiredStates:
    def __init__(self, node: NodeSection, sessions: sessionmaker[Session], storage: Storage,
                 instances: InstanceViews, changes: Changes) -> None:
        # The desired state of each instance is read and written here; `changes` hears of every change
        # (the edge follows them), `node` says which node binary each release generation needs.
        self.node = node
        self.sessions = sessions
        self.storage = storage
        self.instances = instances
        self.changes = changes

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def set(self, actor: str, name: str, desired: DesiredState, reason: str = "") -> InstanceView:
        """Running or stopped. Refused (with the reason) while it is being created or deleted, and a
        start while it is suspended."""
        with self._session() as s:
            row = changeable_row(s, name)
            if desired is DesiredState.RUNNING and row.suspended_reason is not None:
                raise Conflict(f"{name} is suspended: {row.suspended_reason}",
                               "a fleet admin can resume it (`instance resume`)")
            row.desired = desired.value
            if desired is DesiredState.RUNNING and row.state == InstanceState.FAILED.value:
                # An explicit start after a crash loop: forget the loop and try again.
                row.crash_times = []
                row.state = InstanceState.STOPPED.value
                row.state_reason = "start requested after failure"
            action = "instance.start" if desired is DesiredState.RUNNING else "instance.stop"
            record(s, actor, action, name, Outcome.OK, reason)
            view = self.instances.view(row)
        self.changes.notify()
        return view

    def set_idle_after(self, actor: str, name: str, text: str) -> InstanceView:
        """The instance's own idle time before it sleeps: a duration ("2h"), "off" (it never sleeps), or
        "fleet" (the fleet's [instances] idle_after). Takes effect at the next idle check."""
        cleaned = text.strip().lower()
        own = None if cleaned == FOLLOW_FLEET else (parse_idle_after(cleaned) or 0.0)
        with self._session() as s:
            row = changeable_row(s, name)
            row.idle_after = own
            said = FOLLOW_FLEET if own is None else format_idle_after(own or None)
            record(s, actor, "instance.idle-after", name, Outcome.OK, said)
            view = self.instances.view(row)
        return view

    def suspend(self, actor: str, name: str, reason: str) -> InstanceView:
        """Stop the instance and keep it stopped: its tenant cannot start it until an admin resumes it."""
        reason = " ".join(reason.split())[:200] or "suspended by a fleet admin"
        with self._session() as s:
            row = instance_row(s, name)
            row.suspended_reason = reason
            row.desired = DesiredState.STOPPED.value
            record(s, actor, "instance.suspend", name, Outcome.OK, reason)
            view = self.instances.view(row)
        self.changes.notify()
        return view

    def resume(self, actor: str, name: str) -> InstanceView:
        """Lift a suspension and start the instance again."""
        with self._session() as s:
            row = instance_row(s, name)
            if row.suspended_reason is None:
                raise Conflict(f"instance {name} is not suspended")
            row.suspended_reason = None
            row.desired = DesiredState.RUNNING.value
            record(s, actor, "instance.resume", name, Outcome.OK, "")
            view = self.instances.view(row)
        self.changes.notify()
        return view

    def set_node(self, actor: str, name: str, node: str, source: str | None) -> InstanceView:
        """The node it is to run on (`instance move`), `source` the one holding its data now (None: none
        yet): its runtime moves it there when it next starts."""
        with self._session() as s:
            row = changeable_row(s, name)
            row.node = node
            record(s, actor, "instance.move", name, Outcome.OK, f"{source or 'no node yet'} -> {node}")
            view = self.instances.view(row)
        self.changes.notify()
        return view

    def switch_release(self, actor: str, name: str, version: str) -> ReleaseSwitch:
        """Install another release for a stopped instance."""
        with self._session() as s:
            row = instance_row(s, name)
            if row.task is not None:
                raise Conflict(f"instance {name} is running", "stop it first")
            rel = s.get(Release, version)
            if rel is None:
                raise NotFound(f"release {version} is not in this fleet", "see `foundry-fleet release list`")
            resolve_node(self.node, rel.generation)
            old, path = row.release_version, rel.path
        self.storage.install_release(name, Path(path))
        with self._session() as s:
            row = instance_row(s, name)
            row.release_version = version
            record(s, actor, "instance.release", name, Outcome.OK, f"{old} -> {version}")
        self.changes.notify()
        return ReleaseSwitch(name, old, version)

