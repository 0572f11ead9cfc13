"""The runtime port, modelled on Nomad's task-driver verbs.

`recover_task` is the important one: after the control plane restarts it re-attaches to a process
that is still running instead of starting the instance twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ResourceLimits:
    memory_mb: int | None = None
    cpu_percent: int | None = None  # 100 = one core
    pids: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to start one instance's server."""

    name: str  # instance name; unique on the host
    argv: list[str]  # node binary first, then entry and flags; paths are host paths
    install_dir: Path  # read-only inside the sandbox
    data_dir: Path  # read-write
    shared_dir: Path | None  # read-only at <data_dir>/Data/shared
    log_dir: Path
    port: int
    uid: int | None = None  # run as this user (root only); None = as the fleet
    gid: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    limits: ResourceLimits = ResourceLimits()
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5


@dataclass(frozen=True)
class TaskHandle:
    """What the control plane stores to find a task again after it restarts."""

    name: str
    pid: int  # the server process (node) as seen from the host
    leader_pid: int  # the process the runtime spawned (bwrap, or node itself)
    leader_start: int  # leader's start time in clock ticks since boot (guards against pid reuse)
    pgid: int  # process group holding the whole task
    started_at: float  # wall clock
    driver: str = "local"
    # The kernel's boot id at start: after a reboot pids and start times repeat, so they prove nothing.
    boot_id: str | None = None
    # The task's network forwarder (slirp4netns), when it has a network namespace of its own: part of
    # the task, it lives and dies with it. None for a task on the host network (and for handles
    # recorded before namespaces existed).
    net_pid: int | None = None
    net_start: int | None = None
    net_socket: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TaskHandle:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskExit:
    exit_code: int | None  # None when the task was not our child (re-attached) or was signalled
    signal: int | None
    oom_killed: bool = False
    reason: str | None = None  # why the runtime ended the task, when it was not the server's doing

    def describe(self) -> str:
        if self.reason:
            return self.reason
        if self.oom_killed:
            return "killed: out of memory"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        if self.exit_code is not None:
            return f"exited with code {self.exit_code}"
        return "exited"


@dataclass(frozen=True)
class TaskStats:
    rss_bytes: int
    cpu_seconds: float


@dataclass(frozen=True)
class Capability:
    name: str
    available: bool
    detail: str


class Runtime(Protocol):
    name: str

    def fingerprint(self) -> list[Capability]:
        """What this runtime can do on this host (sandbox, users, limits, firewall)."""

    async def start_task(self, spec: TaskSpec) -> TaskHandle: ...

    async def wait_task(self, handle: TaskHandle) -> TaskExit:
        """Return when the task's process has exited."""

    async def stop_task(self, handle: TaskHandle, timeout: float) -> None:
        """SIGTERM the whole task, SIGKILL whatever is left after `timeout` seconds."""

    def destroy_task(self, handle: TaskHandle) -> None:
        """Release what the task held (cgroups); the process must already be gone."""

    def inspect_task(self, handle: TaskHandle) -> bool:
        """Is the task still running?"""

    def recover_task(self, handle: TaskHandle) -> TaskHandle | None:
        """Re-attach to a task started by an earlier control plane; None if it is gone."""

    def task_stats(self, handle: TaskHandle) -> TaskStats | None: ...

    def kill_strays(self, name: str, data_dir: Path) -> int:
        """Kill processes of a task no handle knows about (the control plane died between spawning
        it and recording it); returns how many there were."""
