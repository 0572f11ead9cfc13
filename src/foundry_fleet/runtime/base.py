"""The runtime port, modelled on Nomad's task drivers (plugins/drivers/driver.go, task_handle.go).

A task spec says *what* to run (a release, its data, limits); each driver decides *how* (a node
binary in bubblewrap on this host, an image, a cluster job). The handle it returns is opaque: the
driver's name, the instance, the start time and a `state` dict only that driver reads. The control
plane stores it and hands it back, e.g. to `recover_task`, the important verb: after the control
plane restarts it re-attaches to a task that is still running instead of starting it twice.

Every verb is async: a driver runs its blocking work in a thread, never on the event loop.
"""

from __future__ import annotations

import signal as signals
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from foundry_fleet.domain.errors import ExternalFailure

# Fields of the handle the first local runtime stored flat; they now live in the driver's `state`.
_LEGACY_STATE_KEYS = ("pid", "leader_pid", "leader_start", "pgid", "boot_id", "net_pid", "net_start", "net_socket")


class RuntimeUnavailable(ExternalFailure):
    """start_task could not start the task *for now*: the runtime (a cluster's servers) does not answer,
    or the node holding the task's data is away. Trying again later may work, so the supervisor retries
    under its crash policy instead of marking the instance failed at once."""


@dataclass(frozen=True)
class ResourceLimits:
    memory_mb: int | None = None
    cpu_percent: int | None = None  # 100 = one core
    pids: int | None = None


@dataclass(frozen=True)
class ReleaseToRun:
    """The Foundry release an instance runs: which one, and where its unpacked files are."""

    version: str
    generation: int  # Foundry's major version: it decides the Node.js the server needs
    install_dir: Path  # the instance's install tree, read-only for the server
    entry: str  # the server's entry script, relative to install_dir (e.g. resources/app/main.js)


@dataclass(frozen=True)
class TaskSpec:
    """What to run for one instance. How (which binary, which sandbox) is the driver's business."""

    name: str  # instance name; unique in the fleet
    release: ReleaseToRun
    data_dir: Path  # read-write: Foundry's --dataPath
    shared_dir: Path | None  # read-only at <data_dir>/Data/shared
    log_dir: Path
    port: int  # where the server listens, as the driver's address() reaches it
    uid: int | None = None  # run as this user (root only); None = as the fleet
    gid: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    limits: ResourceLimits = ResourceLimits()
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5
    hosts: tuple[str, ...] = ()  # the hostnames the edge serves it under (a cluster's service tags carry them)
    # The node an operator chose for it (`instance create --node`): where a cluster places it while its
    # data is nowhere yet; once the data is on a node, that node holds it. None: the runtime chooses.
    node: str | None = None
    # The home holding its data (a storage of its own that some nodes see, or "fleet", the fleet's own):
    # a cluster runs it only on a node of that home. None: the runtime does not care (one host).
    storage: str | None = None

    @property
    def install_dir(self) -> Path:
        return self.release.install_dir


@dataclass(frozen=True)
class TaskHandle:
    """What the control plane stores to find a task again after it restarts.

    `state` belongs to the driver named by `driver`: JSON-able, read by nobody else.
    """

    driver: str
    name: str
    started_at: float  # wall clock
    state: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"driver": self.driver, "name": self.name, "started_at": self.started_at, "state": dict(self.state)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TaskHandle:
        """Read a stored handle, also one stored flat (pids at top level) by an older control plane,
        so a daemon upgraded in place re-attaches to the instances the old one started."""
        if "name" not in d or not isinstance(d["name"], str):
            raise ValueError("a task handle names its instance")
        if isinstance(d.get("state"), dict):
            state = dict(d["state"])  # type: ignore[arg-type]
        else:
            state = {k: d[k] for k in _LEGACY_STATE_KEYS if k in d}
        started = d.get("started_at", 0.0)
        return cls(driver=str(d.get("driver") or "local"), name=d["name"],
                   started_at=float(started) if isinstance(started, int | float) else 0.0, state=state)


@dataclass(frozen=True)
class Address:
    """Where the edge and the health check reach a running instance."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TaskExit:
    exit_code: int | None  # None when the task was not our child (re-attached) or was signalled
    signal: int | None
    oom_killed: bool = False
    reason: str | None = None  # why the runtime ended the task, when it was not the server's doing
    # The runtime applied a crash policy of its own (Nomad's restart policy) and ran out of attempts:
    # restarting it again would only repeat what the runtime already tried.
    gave_up: bool = False

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
class TaskStatus:
    """What inspect_task tells about a task."""

    running: bool
    pid: int | None = None  # the server's process id as the host sees it, for display; None if none


@dataclass(frozen=True)
class TaskStats:
    """A running task's memory and CPU, as its runtime measures them now.

    CPU comes one of two ways. Most runtimes keep a running total (`cpu_seconds`), which a sampler turns
    into a rate from two readings. Nomad's API keeps no total: its client measures a percent itself, over
    its own short collection interval, and gives that (`cpu_percent`); a total made up from it would
    pretend to a precision Nomad never had, so such a runtime leaves `cpu_seconds` None.
    """

    memory_bytes: int  # what counts against its memory limit: its cgroup's usage, else its resident set
    cpu_seconds: float | None  # CPU time since the task started; None where the runtime keeps no total
    memory_limit_bytes: int | None = None  # the limit the runtime enforces; None: none known
    cpu_percent: float | None = None  # the runtime's own recent measurement, 100 = one core


@dataclass(frozen=True)
class TaskEvent:
    """Something the driver did on a task's behalf that its operators should hear of (Nomad's TaskEvents)."""

    name: str  # the instance
    action: str  # a short word, e.g. "strays"
    message: str


@dataclass(frozen=True)
class NodeInfo:
    """One machine the runtime places tasks on, as `status` shows it."""

    name: str
    address: str
    healthy: bool  # new tasks may be placed there
    status: str  # the runtime's own word (e.g. Nomad's "ready", "down")
    instances: int  # the fleet's tasks running there
    free_memory_mb: int | None  # None: unknown
    # The home the node keeps instances' data in: nodes naming the same one see the same files, so an
    # instance moves between them by re-pinning alone; to another home its data is sent. None: this
    # host's own storage (a runtime of one host).
    storage: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "address": self.address, "healthy": self.healthy, "status": self.status,
                "instances": self.instances, "free_memory_mb": self.free_memory_mb, "home": self.storage}


@dataclass(frozen=True)
class Capability:
    """One line of the health report: what the driver found on this host, and whether it works."""

    name: str
    available: bool
    detail: str


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do, whatever its health on this host."""

    isolation: str  # e.g. "bubblewrap", "container", "none"
    limits: bool  # memory, cpu and pid limits are enforced
    needs_image: bool  # a release must be built into an image before it runs
    multi_node: bool  # tasks may run on other machines (address() is not this host)


class Runtime(Protocol):
    name: str
    capabilities: Capabilities

    async def open(self) -> list[Capability]:
        """Prepare the host (e.g. firewall the port range); health lines for the start-up report."""

    async def close(self, instances_left_running: bool) -> None:
        """Undo `open`; what running instances still need stays when they are left running."""

    async def fingerprint(self) -> list[Capability]:
        """What works on this host (sandbox, users, limits, network), one health line each."""

    async def start_task(self, spec: TaskSpec) -> TaskHandle: ...

    async def wait_task(self, handle: TaskHandle) -> TaskExit:
        """Return when the task has exited (everything of it is gone then)."""

    async def stop_task(self, handle: TaskHandle, timeout: float, signal: int = signals.SIGTERM) -> None:
        """Send `signal` to the task, SIGKILL whatever is left after `timeout` seconds."""

    async def destroy_task(self, handle: TaskHandle) -> None:
        """Release what the task held (cgroups, forwarders); the task must be stopped."""

    async def inspect_task(self, handle: TaskHandle) -> TaskStatus:
        """Whether the task runs now. Not running and not exited: its runtime is putting it back (a
        cluster replacing it after its node went away); the supervisor then restarts nothing."""

    async def recover_task(self, handle: TaskHandle) -> TaskHandle | None:
        """Re-attach to a task started by an earlier control plane; None if it is gone (and then
        whatever was left of it is gone too)."""

    async def task_stats(self, handle: TaskHandle) -> TaskStats | None:
        """The task's memory and CPU now; None when it does not run (any more)."""

    async def address(self, handle: TaskHandle) -> Address: ...

    async def watch_address(self, handle: TaskHandle, current: Address) -> Address:
        """Return when the task answers somewhere other than `current` (a cluster moved it to another
        node); a runtime whose tasks never move waits forever."""

    async def nodes(self) -> list[NodeInfo]:
        """The machines tasks run on: one, this host, for a single-host runtime."""

    async def data_node(self, name: str) -> str | None:
        """The node holding the instance's data, which is where it runs, by name as nodes() names it;
        None while its data is on no node yet (never started). A single-host runtime: this host."""

    def port_is_free(self, port: int) -> bool:
        """May a new instance be given `port`? The local runtime: nothing on this host listens there;
        a cluster's driver answers for where it would place the task."""

    def logs(self, task: TaskHandle | str, lines: int = 100, follow: bool = False) -> AsyncIterator[str]:
        """The last `lines` lines of the task's log (by handle, or by instance name when it is not
        running), then, with `follow`, each new line as it comes."""

    async def forget_unknown(self, known: set[str]) -> list[str]:
        """Remove the fleet's tasks that no record claims (the instances in `known` have one: an instance
        deleted, or a task started but not recorded, while the control plane was down); each is noted
        as an event. Their instance names. A driver whose tasks die with the control plane's host
        process tree, or that finds strays when it starts a task, has nothing to do here."""

    async def forget_instance(self, name: str) -> None:
        """Release what the runtime keeps for an instance besides its task (a cluster's registrations
        of its volumes), once the instance is deleted and its task destroyed. Nothing kept: nothing to do."""

    def host_processes(self) -> set[int]:
        """Processes on this host that hold the fleet's tasks but are no recorded handle's (a container's
        monitor): with what runs below them, the control plane counts them as its own."""

    def take_events(self) -> list[TaskEvent]:
        """The events noted since the last call (and forget them)."""
