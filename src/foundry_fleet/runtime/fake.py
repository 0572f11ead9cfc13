"""A complete runtime driver whose tasks live in memory: the supervisor's tests run on it in
milliseconds (as Nomad's drivers/mock serves Nomad's own tests).

Each task serves a real HTTP status endpoint on a loopback port of its own, told by `address()`,
so health checks run unchanged. What a task does is set per instance with `behave(name, ...)`:
fail to start, exit after a while with a code, answer unhealthy, ignore SIGTERM, or be lost across
a control-plane restart. A "control-plane restart" in a test is a new supervisor given the same
FakeRuntime: its tasks are what a host would still be running.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal as signals
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.runtime.this_host import this_host_name, this_host_node
from foundry_fleet.runtime.base import (
    Address, Capabilities, Capability, NodeInfo, RuntimeUnavailable, TaskEvent, TaskExit, TaskHandle, TaskSpec,
    TaskStats, TaskStatus,
)

DRIVER = "fake"
FAKE_PIDS = 900_000  # fake tasks' "pids" count up from here, far from real ones


@dataclass
class Behaviour:
    """What the task of one instance does. Mutable: a test may change it while the task runs."""

    start_error: str | None = None  # start_task raises ExternalFailure with this message
    start_unavailable: str | None = None  # start_task raises RuntimeUnavailable (try again later) with this
    replacing: bool = False  # the runtime is putting it back elsewhere: not running, yet not exited
    unreachable: str | None = None  # recover_task and address raise RuntimeUnavailable (its cluster is away)
    exit_after: float | None = None  # the task exits by itself this many seconds after starting
    exit_code: int = 1
    healthy: bool = True  # its status endpoint answers 200 with JSON (else 503)
    users: int | None = None  # connected users its status reports, as Foundry's does; None: not reported
    ignores_sigterm: bool = False  # only SIGKILL ends it
    survives_restart: bool = True  # recover_task finds it after a control-plane restart
    memory_bytes: int = 0  # what task_stats reports
    cpu_seconds: float = 0.0
    memory_limit_bytes: int | None = None


@dataclass
class FakeTask:
    id: int
    name: str
    spec: TaskSpec
    behaviour: Behaviour
    started_at: float
    server: asyncio.Server | None = None
    port: int = 0
    exit: TaskExit | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    signals: list[int] = field(default_factory=list)
    destroyed: bool = False
    moved: asyncio.Event = field(default_factory=asyncio.Event)  # set when a test moves it elsewhere
    timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        return FAKE_PIDS + self.id

    def end(self, result: TaskExit) -> None:
        if self.exit is not None:
            return
        self.exit = result
        if self.timer is not None:
            self.timer.cancel()
        if self.server is not None:
            self.server.close()  # the port goes with the process
        self.exited.set()


class FakeRuntime:
    name = DRIVER
    capabilities = Capabilities(isolation="none", limits=False, needs_image=False, multi_node=False)

    def __init__(self, log_dir_of: Callable[[str], Path] | None = None) -> None:
        self.log_dir_of = log_dir_of
        self.behaviours: dict[str, Behaviour] = {}
        self.tasks: dict[int, FakeTask] = {}
        self.starts: list[tuple[str, float]] = []  # (instance, monotonic time) of every start_task
        self.lines: dict[str, list[str]] = {}
        self.forgotten: list[str] = []  # instances forget_instance was called for
        self.status_asked: dict[str, int] = {}  # status requests each instance's tasks answered
        self.opened = False
        self._ids = itertools.count(1)
        self._events: list[TaskEvent] = []

    # what a test sets and reads ------------------------------------------------------------

    def behave(self, name: str, **changes: object) -> Behaviour:
        """Set how `name`'s tasks behave (also the one running now, which shares the object)."""
        current = self.behaviours.setdefault(name, Behaviour())
        for key, value in changes.items():
            if not hasattr(current, key):
                raise TypeError(f"a fake task has no behaviour {key!r}")
            setattr(current, key, value)
        return current

    def running(self, name: str) -> list[FakeTask]:
        return [t for t in self.tasks.values() if t.name == name and t.exit is None]

    def starts_of(self, name: str) -> list[float]:
        return [at for n, at in self.starts if n == name]

    def crash(self, name: str, exit_code: int = 1) -> None:
        """End `name`'s running task as if its server died."""
        for task in self.running(name):
            self._log(task, f"exiting with code {exit_code}")
            task.end(TaskExit(exit_code=exit_code, signal=None))

    def give_up(self, name: str, reason: str) -> None:
        """End `name`'s running task as a runtime does whose own restart policy ran out of attempts."""
        for task in self.running(name):
            self._log(task, reason)
            task.end(TaskExit(exit_code=1, signal=None, reason=reason, gave_up=True))

    async def move(self, name: str) -> None:
        """Serve `name`'s running task on a new port, as if a cluster rescheduled it to another node."""
        for task in self.running(name):
            old = task.server
            task.server = await asyncio.start_server(lambda r, w, t=task: self._answer(t, r, w), "127.0.0.1", 0)
            task.port = task.server.sockets[0].getsockname()[1]
            if old is not None:
                old.close()
            self._log(task, f"moved: listening on {task.port}")
            task.moved.set()

    def note_event(self, name: str, action: str, message: str) -> None:
        self._events.append(TaskEvent(name, action, message))

    # the driver's verbs ---------------------------------------------------------------------

    async def open(self) -> list[Capability]:
        self.opened = True
        return await self.fingerprint()

    async def close(self, instances_left_running: bool) -> None:
        self.opened = False

    async def fingerprint(self) -> list[Capability]:
        return [Capability("fake", True, "instances are simulated in memory: nothing is isolated or limited")]

    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        self.starts.append((spec.name, time.monotonic()))
        behaviour = self.behaviours.setdefault(spec.name, Behaviour())
        if behaviour.start_error is not None:
            raise ExternalFailure(f"instance {spec.name} did not start: {behaviour.start_error}")
        if behaviour.start_unavailable is not None:
            raise RuntimeUnavailable(behaviour.start_unavailable)
        task = FakeTask(id=next(self._ids), name=spec.name, spec=spec, behaviour=behaviour, started_at=time.time())
        task.server = await asyncio.start_server(lambda r, w: self._answer(task, r, w), "127.0.0.1", 0)
        task.port = task.server.sockets[0].getsockname()[1]
        if behaviour.exit_after is not None:
            code = behaviour.exit_code
            task.timer = asyncio.get_running_loop().call_later(
                behaviour.exit_after, lambda: self._exit_by_itself(task, code))
        self.tasks[task.id] = task
        self._log(task, f"listening on {task.port}")
        return self._handle(task)

    async def wait_task(self, handle: TaskHandle) -> TaskExit:
        task = self._task(handle)
        if task is None:
            return TaskExit(exit_code=None, signal=None)
        await task.exited.wait()
        assert task.exit is not None
        return task.exit

    async def stop_task(self, handle: TaskHandle, timeout: float, signal: int = signals.SIGTERM) -> None:
        task = self._task(handle)
        if task is None or task.exit is not None:
            return
        task.signals.append(signal)
        if signal == signals.SIGKILL or not (signal == signals.SIGTERM and task.behaviour.ignores_sigterm):
            task.end(TaskExit(exit_code=None, signal=signal))
            return
        self._log(task, f"ignoring signal {signal}")
        try:
            await asyncio.wait_for(task.exited.wait(), timeout)
        except TimeoutError:
            task.signals.append(signals.SIGKILL)
            task.end(TaskExit(exit_code=None, signal=signals.SIGKILL))

    async def destroy_task(self, handle: TaskHandle) -> None:
        task = self._task(handle)
        if task is not None:
            task.end(TaskExit(exit_code=None, signal=signals.SIGKILL))
            task.destroyed = True

    async def inspect_task(self, handle: TaskHandle) -> TaskStatus:
        task = self._task(handle)
        running = task is not None and task.exit is None and not task.behaviour.replacing
        return TaskStatus(running=running, pid=task.pid if running and task else None)

    async def recover_task(self, handle: TaskHandle) -> TaskHandle | None:
        task = self._task(handle)
        if task is not None and task.behaviour.unreachable is not None:
            raise RuntimeUnavailable(task.behaviour.unreachable)
        if task is None or task.exit is not None:
            return None
        if not task.behaviour.survives_restart:
            task.end(TaskExit(exit_code=None, signal=signals.SIGKILL))
            return None
        return self._handle(task)

    async def task_stats(self, handle: TaskHandle) -> TaskStats | None:
        task = self._task(handle)
        if task is None or task.exit is not None:
            return None
        b = task.behaviour
        return TaskStats(memory_bytes=b.memory_bytes, cpu_seconds=b.cpu_seconds, memory_limit_bytes=b.memory_limit_bytes)

    async def address(self, handle: TaskHandle) -> Address:
        task = self._task(handle)
        if task is not None and task.behaviour.unreachable is not None:
            raise RuntimeUnavailable(task.behaviour.unreachable)
        if task is None:
            raise ExternalFailure(f"no fake task of {handle.name} is known")
        return Address("127.0.0.1", task.port)

    async def watch_address(self, handle: TaskHandle, current: Address) -> Address:
        """Returns when a test `move`s the task (as a cluster reschedules it to another node)."""
        task = self._task(handle)
        if task is None:
            await asyncio.Event().wait()
        assert task is not None
        while True:
            moved = Address("127.0.0.1", task.port)
            if moved != current:
                return moved
            task.moved.clear()
            await task.moved.wait()

    async def data_node(self, name: str) -> str | None:
        return this_host_name()

    async def nodes(self) -> list[NodeInfo]:
        return [this_host_node(sum(1 for t in self.tasks.values() if t.exit is None))]

    def port_is_free(self, port: int) -> bool:
        """Every port but those its own running tasks hold: the fake's tasks listen on ports of their own."""
        return all(t.port != port or t.exit is not None for t in self.tasks.values())

    async def logs(self, task: TaskHandle | str, lines: int = 100, follow: bool = False) -> AsyncIterator[str]:
        name = task if isinstance(task, str) else task.name
        seen = self.lines.setdefault(name, [])
        start = max(0, len(seen) - lines)
        for line in seen[start:]:
            yield line
        position = len(seen)
        while follow:
            while position < len(seen):
                yield seen[position]
                position += 1
            await asyncio.sleep(0.01)

    async def forget_unknown(self, known: set[str]) -> list[str]:
        return []  # its tasks live in this process: none outlives it

    async def forget_instance(self, name: str) -> None:
        self.forgotten.append(name)  # nothing else is kept; tests see that it was asked

    def host_processes(self) -> set[int]:
        return set()  # every task's processes are in its recorded handle

    def take_events(self) -> list[TaskEvent]:
        events, self._events = self._events, []
        return events

    # inside ---------------------------------------------------------------------------------

    def _handle(self, task: FakeTask) -> TaskHandle:
        return TaskHandle(driver=DRIVER, name=task.name, started_at=task.started_at, state={"id": task.id})

    def _task(self, handle: TaskHandle) -> FakeTask | None:
        if handle.driver != DRIVER:
            return None
        task_id = handle.state.get("id")
        task = self.tasks.get(task_id) if isinstance(task_id, int) else None
        return task if task is not None and task.name == handle.name else None

    def _exit_by_itself(self, task: FakeTask, code: int) -> None:
        self._log(task, f"exiting with code {code}")
        task.end(TaskExit(exit_code=code, signal=None))

    def _log(self, task: FakeTask, line: str) -> None:
        self.lines.setdefault(task.name, []).append(line)

    async def _answer(self, task: FakeTask, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.1 exchange: the status page, healthy or not as the behaviour says now."""
        try:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # request line and headers: every path answers the same
            self.status_asked[task.name] = self.status_asked.get(task.name, 0) + 1
            if task.behaviour.healthy and task.exit is None:
                answer: dict[str, object] = {"active": False, "version": "fake", "world": None}
                if task.behaviour.users is not None:
                    answer["users"] = task.behaviour.users
                status, body = "200 OK", json.dumps(answer)
            else:
                status, body = "503 Service Unavailable", json.dumps({"error": "unhealthy"})
            writer.write((f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                          f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

