"""The local driver's private state of one task: which processes on this host make it up.

It travels inside the opaque `TaskHandle.state`; nothing outside the local driver reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.base import TaskHandle
from foundry_fleet.runtime.network import Forwarder

DRIVER = "local"


@dataclass(frozen=True)
class LocalTask:
    name: str
    pid: int  # the server process (node) as seen from the host
    leader_pid: int  # the process the runtime spawned (bwrap, or node itself)
    leader_start: int  # leader's start time in clock ticks since boot (guards against pid reuse)
    pgid: int  # process group holding the whole task
    started_at: float  # wall clock
    # The kernel's boot id at start: after a reboot pids and start times repeat, so they prove nothing.
    boot_id: str | None = None
    # The task's network forwarder (slirp4netns), when it has a network namespace of its own: part of
    # the task, it lives and dies with it. None for a task on the host network (and for handles
    # recorded before namespaces existed).
    net_pid: int | None = None
    net_start: int | None = None
    net_socket: str | None = None
    # Where the server listens (and, in a namespace, the port its forwarder holds on the host).
    # None in handles recorded before the driver kept it: recover_task reads it off the server.
    port: int | None = None
    log_dir: str | None = None

    # Is it still this task? Pids and start times repeat after a reboot, so they prove nothing then.

    def same_boot(self) -> bool:
        return self.boot_id is None or self.boot_id == procfs.boot_id()

    def leader_alive(self) -> bool:
        return self.same_boot() and procfs.is_alive(self.leader_pid, self.leader_start)

    def forwarder(self) -> Forwarder | None:
        if self.net_pid is None:
            return None
        return Forwarder(self.net_pid, self.net_start or 0, self.net_socket or "")

    def forwarder_alive(self) -> bool:
        """True for a task on the host network (nothing to lose) or one whose forwarder lives."""
        forwarder = self.forwarder()
        return forwarder is None or (self.same_boot() and forwarder.alive())

    @property
    def key(self) -> tuple[int, int]:
        """Names this task among every task the driver has seen (its leader pid alone may repeat)."""
        return self.leader_pid, self.leader_start

    # in and out of the opaque handle

    def handle(self) -> TaskHandle:
        state = {k: v for k, v in asdict(self).items() if k not in ("name", "started_at")}
        return TaskHandle(driver=DRIVER, name=self.name, started_at=self.started_at, state=state)

    @classmethod
    def of(cls, handle: TaskHandle) -> LocalTask:
        """The local state inside `handle`; ValueError for another driver's handle or a broken one."""
        if handle.driver != DRIVER:
            raise ValueError(f"a {handle.driver} task handle given to the {DRIVER} runtime")
        known = {f.name for f in fields(cls)} - {"name", "started_at"}
        try:
            return cls(name=handle.name, started_at=handle.started_at,
                       **{k: v for k, v in handle.state.items() if k in known})  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(f"a local task handle without its processes: {exc}") from exc


def listening_port(server_pid: int) -> int | None:
    """The port a server was started with (its --port flag), for handles recorded without it."""
    for word in procfs.cmdline(server_pid):
        if word.startswith("--port=") and word[7:].isdigit():
            return int(word[7:])
    return None
