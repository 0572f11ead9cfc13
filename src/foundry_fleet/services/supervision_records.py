"""The supervisor's own reads and writes of the instances table: what to run, and what it saw.

The supervisor is the only writer of an instance's observed state (`state`, `state_reason`, the
runtime's task handle, `address`, `pid`, restarts and crash times); desired state is the
operations' business and is only read here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.homes import MAIN_HOME
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.runtime.base import ReleaseToRun, TaskHandle
from foundry_fleet.services.events import record
from foundry_fleet.services.instance_views import instance_row
from foundry_fleet.storage.base import Storage
from foundry_fleet.store.models import Instance

log = logging.getLogger("foundry_fleet.supervisor")
ACTOR = "supervisor"


@dataclass(frozen=True)
class SupervisedInstance:
    """One instance as the supervisor sees it."""

    name: str
    desired: str  # a DesiredState value
    state: str  # an InstanceState value
    task: TaskHandle | None  # the runtime's handle of its task, when one was recorded
    node: str | None = None  # the node it is to run on (create --node, instance move); None: the runtime's choice
    storage: str = MAIN_HOME  # the home holding its data

    @property
    def wants_running(self) -> bool:
        return self.desired == DesiredState.RUNNING.value

    @property
    def failed(self) -> bool:
        return self.state == InstanceState.FAILED.value

    @property
    def sleeping(self) -> bool:
        return self.state == InstanceState.SLEEPING.value

    @property
    def seems_active(self) -> bool:
        """The row says a task runs (or is on its way up or down)."""
        return self.state in (InstanceState.STARTING.value, InstanceState.RUNNING.value, InstanceState.STOPPING.value)


@dataclass(frozen=True)
class LaunchPlan:
    """What to run for an instance, read when it starts."""

    name: str
    port: int
    uid: int | None
    release: ReleaseToRun
    data_dir: Path
    shared_dir: Path
    hosts: tuple[str, ...] = ()  # its own host first, then its extra hostnames
    node: str | None = None  # the node asked for at create; None: the runtime chooses
    storage: str = MAIN_HOME  # the home holding its data: a cluster runs it on a node of that home


@dataclass(frozen=True)
class RunningTask:
    """A task the runtime started or re-attached to, as it is recorded."""

    handle: TaskHandle
    address: str  # "host:port", as the runtime's address() said
    pid: int | None  # for display only


@dataclass(frozen=True)
class Event:
    action: str
    outcome: Outcome


class SupervisionRecords:
    def __init__(self, sessions: sessionmaker[Session], storage: Storage,
                 changed: Callable[[], None] = lambda: None, own_host: Callable[[str], str] | None = None) -> None:
        """`changed` is called after every write (the edge follows instances' states); any thread.
        `own_host` names an instance's own hostname (<name>.<domain>), for the launch plan's hosts."""
        self.sessions = sessions
        self.storage = storage
        self.changed = changed
        self.own_host = own_host

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # reads ----------------------------------------------------------------------------------

    def supervised(self) -> list[SupervisedInstance]:
        """Every instance past creation and not being deleted."""
        with self._session() as s:
            rows = s.scalars(select(Instance).where(
                Instance.state != InstanceState.CREATING.value, Instance.desired != DesiredState.DELETED.value,
            )).all()
            return [_supervised(r) for r in rows]

    def get(self, name: str) -> SupervisedInstance:
        with self._session() as s:
            return _supervised(instance_row(s, name))

    def launch_plan(self, name: str) -> LaunchPlan:
        with self._session() as s:
            row = instance_row(s, name)
            rel = row.release
            paths = self.storage.paths(name)
            own = (self.own_host(name),) if self.own_host is not None else ()
            return LaunchPlan(
                name=name, port=row.port, uid=row.uid,
                release=ReleaseToRun(version=rel.version, generation=rel.generation,
                                     install_dir=paths.install, entry=rel.entry),
                data_dir=paths.data, shared_dir=self.storage.shared_dir(),
                hosts=own + tuple(h for h in row.extra_hosts or [] if h not in own),
                node=row.node, storage=row.home or MAIN_HOME,
            )

    def crash_times(self, name: str) -> list[float]:
        """When the instance crashed recently (what the crash-loop rule counts)."""
        with self._session() as s:
            return list(instance_row(s, name).crash_times or [])

    # writes (a row deleted meanwhile is no error: there is nothing left to record) ------------

    def set_state(self, name: str, state: InstanceState, reason: str, event: Event | None = None) -> None:
        """A new state; the recorded task, if any, stays."""
        self._write(name, state, reason, event, lambda row: None)

    def record_task(self, name: str, state: InstanceState, reason: str, task: RunningTask,
                    event: Event | None = None) -> None:
        def keep(row: Instance) -> None:
            row.task = task.handle.to_dict()
            row.address = task.address
            row.pid = task.pid

        self._write(name, state, reason, event, keep)

    def clear_task(self, name: str, state: InstanceState, reason: str, event: Event | None = None, *,
                   restarts_delta: int = 0, crash_times: list[float] | None = None) -> None:
        """No task any more (stopped, crashed, lost); with a crash, its count and times."""
        def forget(row: Instance) -> None:
            row.task = None
            row.address = None
            row.pid = None
            row.idle_since = None  # idle is a running instance's measure; the next run starts afresh
            row.restarts += restarts_delta
            if crash_times is not None:
                row.crash_times = crash_times

        self._write(name, state, reason, event, forget)

    def record_event(self, action: str, name: str, outcome: Outcome, message: str = "") -> None:
        with self._session() as s:
            record(s, ACTOR, action, name, outcome, message)

    def _write(self, name: str, state: InstanceState, reason: str, event: Event | None,
               change: Callable[[Instance], None]) -> None:
        with self._session() as s:
            row = s.scalar(select(Instance).where(Instance.name == name))
            if row is None:
                return
            row.state = state.value
            row.state_reason = reason
            change(row)
            if event is not None:
                record(s, ACTOR, event.action, name, event.outcome, reason)
        self.changed()


def _supervised(row: Instance) -> SupervisedInstance:
    task = None
    if row.task:
        try:
            task = TaskHandle.from_dict(row.task)
        except (ValueError, TypeError) as exc:
            log.warning("the recorded task of %s cannot be read (%s): treated as gone", row.name, exc)
    return SupervisedInstance(name=row.name, desired=row.desired, state=row.state, task=task, node=row.node,
                              storage=row.home or MAIN_HOME)
