"""The stand-in's task drivers: each really runs what a Nomad client would run for it on this host.

- `exec`: through the fleet's own LocalRuntime (bubblewrap, cgroups, a network namespace whose one
  way in is published on the node's address), one runtime per node; the task is mapped to a TaskSpec
  (install, data and shared dirs from the volumes mounted at the paths the args name).
- `raw_exec`: a plain process group in the alloc dir, stdout/stderr to the alloc's log files.
- `podman`: through the fleet's PodmanRuntime, one per node, publishing on the node's address.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import pwd
import signal as signals
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from foundry_fleet.domain.foundry_options import server_args
from foundry_fleet.runtime import logs
from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, TaskHandle, TaskSpec
from foundry_fleet.runtime.local import LocalRuntime

# The driver config keys each driver knows; a key outside them fails the task's validation on the
# client, as a real driver's config schema does.
CONFIG_KEYS = {
    "exec": {"command", "args", "pid_mode", "ipc_mode", "cap_add", "cap_drop"},
    "raw_exec": {"command", "args", "cgroup_v1_override", "cgroup_v2_override", "oom_score_adj", "work_dir"},
    "podman": {"image", "command", "args", "ports", "user", "init", "init_path", "cap_add", "cap_drop",
               "readonly_rootfs", "volumes", "network_mode", "entrypoint", "working_dir", "hostname", "labels",
               "logging", "memory_reservation", "privileged", "tty", "auth", "force_pull", "ulimit", "sysctl",
               "devices", "userns", "security_opt", "image_pull_timeout", "shm_size", "socket", "extra_hosts",
               "dns", "pids_limit", "apparmor_profile", "selinux_opts", "cpu_hard_limit", "cpu_cfs_period",
               "memory_swap", "memory_swappiness", "tmpfs", "mount", "auth_soft_fail", "cpuset_cpus"},
}


class DriverFailure(Exception):
    """The driver could not start the task (a Driver Failure event with this text)."""


class ValidationFailure(Exception):
    """The task's driver config is wrong (a Failed Validation event; never restarted)."""


@dataclass
class TaskContext:
    """Everything a driver needs for one task of one allocation, interpolated."""

    alloc_id: str
    job_id: str
    group: str
    task: dict[str, Any]  # the task as registered (canonical)
    config: dict[str, Any]  # the driver config, interpolated
    env: dict[str, str]  # NOMAD_* and the task's Env, interpolated
    node_name: str
    node_address: str
    alloc_dir: Path
    task_dir: Path  # <alloc dir>/<task>
    ports: dict[str, int]
    volumes: dict[str, Path]  # group volume name -> host path
    mounts: list[dict[str, Any]] = field(default_factory=list)  # the task's VolumeMounts

    @property
    def log_dir(self) -> Path:
        return self.alloc_dir / "alloc" / "logs"

    def log_file(self, stream: str) -> Path:
        return self.log_dir / f"{self.task['Name']}.{stream}.0"

    def mount_source(self, destination: str) -> Path | None:
        for mount in self.mounts:
            if posixpath.normpath(mount.get("Destination") or "") == posixpath.normpath(destination):
                return self.volumes.get(mount.get("Volume") or "")
        return None


class Run(Protocol):
    async def wait(self) -> tuple[int | None, int | None, str]: ...
    async def stop(self, timeout: float, sig: int) -> None: ...
    async def destroy(self) -> None: ...


def check_config(driver: str, config: dict[str, Any]) -> None:
    known = CONFIG_KEYS.get(driver)
    if known is None:
        raise ValidationFailure(f'missing drivers: driver "{driver}" is not available on this node')
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValidationFailure(f'failed to parse config: Invalid label "{unknown[0]}": An argument named '
                                f'"{unknown[0]}" is not expected here.')
    if not isinstance(config.get("args", []), list):
        raise ValidationFailure("failed to parse config: args must be a list of strings")


# ----------------------------------------------------------------------------------- raw_exec


class ProcessRun:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def wait(self) -> tuple[int | None, int | None, str]:
        code = await self.proc.wait()
        if code < 0:
            return None, -code, f"killed by signal {-code}"
        return code, None, f"exited with code {code}"

    async def stop(self, timeout: float, sig: int) -> None:
        self._signal(sig)
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            pass
        self._signal(signals.SIGKILL)  # the rest of its process group too
        await self.proc.wait()

    async def destroy(self) -> None:
        self._signal(signals.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # its own session: the group is its and its children's
        except (ProcessLookupError, PermissionError):
            pass


async def start_raw_exec(ctx: TaskContext) -> Run:
    command = ctx.config.get("command")
    if not isinstance(command, str) or not command:
        raise ValidationFailure("failed to parse config: missing required field: command")
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ctx.env}
    with open(ctx.log_file("stdout"), "ab") as out, open(ctx.log_file("stderr"), "ab") as err:
        try:
            proc = await asyncio.create_subprocess_exec(
                command, *[str(a) for a in ctx.config.get("args") or []], cwd=ctx.task_dir, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        except OSError as exc:
            raise DriverFailure(f"failed to launch command with executor: {exc}") from exc
    return ProcessRun(proc)


# ----------------------------------------------------------------------------------- exec


class NodeRuntime(LocalRuntime):
    """A node's LocalRuntime whose node binary is the task's own `command`, per task."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.binaries: dict[str, str] = {}

    def server_command(self, spec: TaskSpec) -> list[str]:
        entry = str(spec.release.install_dir / spec.release.entry)
        return [self.binaries[spec.name], *server_args(entry, spec.port, str(spec.data_dir))]


class RuntimeRun:
    def __init__(self, runtime: Any, handle: TaskHandle, on_destroy: Any = None) -> None:
        self.runtime = runtime
        self.handle = handle
        self.on_destroy = on_destroy

    async def wait(self) -> tuple[int | None, int | None, str]:
        exit_ = await self.runtime.wait_task(self.handle)
        return exit_.exit_code, exit_.signal, exit_.describe()

    async def stop(self, timeout: float, sig: int) -> None:
        await self.runtime.stop_task(self.handle, timeout, sig)

    async def destroy(self) -> None:
        await self.runtime.destroy_task(self.handle)
        if self.on_destroy is not None:
            self.on_destroy()


def task_name(ctx: TaskContext) -> str:
    """The runtime's name for the task: unique per allocation, a label both runtimes accept."""
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in ctx.job_id)[:40]
    return f"{base}-{ctx.alloc_id[:8]}"


def foundry_spec(ctx: TaskContext, args: list[str], user: str | None = None,
                 fixed_mounts: tuple[str, str] | None = None) -> TaskSpec:
    """The TaskSpec of a Foundry task, from its mounts and the args the fleet sends:
    `<install mount>/<entry>`, `--port=<the http port>`, `--dataPath=<data mount>`, then flags.
    `user`: a name to look up (exec) or `uid:gid` (podman); `fixed_mounts`: the install and data
    mount points the runtime itself uses (podman's container spec), which the job must use too."""
    meta = ctx.task.get("Meta") or {}
    entry = meta.get("fvtt_entry")
    generation = meta.get("fvtt_generation")
    if not entry or not generation or not str(generation).isdigit():
        raise DriverFailure("task Meta must carry fvtt_entry and a numeric fvtt_generation")
    if len(args) < 3:
        raise DriverFailure(f"args {args!r} are not <install>/<entry> --port=... --dataPath=...")
    install_mount = None
    for mount in ctx.mounts:
        destination = posixpath.normpath(mount.get("Destination") or "")
        if args[0] == posixpath.join(destination, entry):
            install_mount = destination
    if install_mount is None:
        raise DriverFailure(f"args[0] {args[0]!r} is not the entry {entry!r} under a mounted volume")
    if not args[1].startswith("--port=") or args[1] != f"--port={ctx.ports.get('http')}":
        raise DriverFailure(f"args[1] {args[1]!r} is not --port=${{NOMAD_PORT_http}}")
    if not args[2].startswith("--dataPath="):
        raise DriverFailure(f"args[2] {args[2]!r} is not --dataPath=<the data mount>")
    data_mount = args[2].removeprefix("--dataPath=")
    if fixed_mounts is not None and (install_mount, posixpath.normpath(data_mount)) != fixed_mounts:
        raise DriverFailure(f"the install and data mounts are {install_mount} and {data_mount}; this driver's "
                            f"containers have them at {fixed_mounts[0]} and {fixed_mounts[1]}")
    install_dir, data_dir = ctx.mount_source(install_mount), ctx.mount_source(data_mount)
    if install_dir is None or data_dir is None:
        raise DriverFailure(f"no volume is mounted at {install_mount if install_dir is None else data_mount}")
    shared_dir = None
    for mount in ctx.mounts:
        destination = posixpath.normpath(mount.get("Destination") or "")
        if destination not in (install_mount, posixpath.normpath(data_mount)):
            if not destination.startswith(posixpath.normpath(data_mount) + "/"):
                raise DriverFailure(f"the mount at {destination} is neither the install, the data nor "
                                    f"under the data mount")
            shared_dir = ctx.volumes.get(mount.get("Volume") or "")
    uid = gid = None
    user = ctx.task.get("User") or "" if user is None else user
    if ":" in user or user.isdigit():
        uid_text, _, gid_text = user.partition(":")
        if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
            raise DriverFailure(f"user {user!r} is not uid:gid")
        uid, gid = int(uid_text), int(gid_text or uid_text)
    elif user:
        try:
            entry_pw = pwd.getpwnam(user)
        except KeyError:
            raise DriverFailure(f"failed to identify user {user!r}: user: unknown user {user}") from None
        uid, gid = entry_pw.pw_uid, entry_pw.pw_gid
    resources = ctx.task.get("Resources") or {}
    memory = int(resources.get("MemoryMaxMB") or 0) or int(resources.get("MemoryMB") or 0) or None
    return TaskSpec(
        name=task_name(ctx),
        release=ReleaseToRun(version=str(meta.get("fvtt_release") or "nomad"), generation=int(generation),
                             install_dir=install_dir, entry=entry),
        data_dir=data_dir, shared_dir=shared_dir, log_dir=ctx.log_dir / ctx.task["Name"],
        port=ctx.ports["http"], uid=uid, gid=gid,
        env={k: v for k, v in ctx.env.items()},
        limits=ResourceLimits(memory_mb=memory),
    )


async def start_exec(ctx: TaskContext, runtime: NodeRuntime) -> Run:
    command = ctx.config.get("command")
    if not isinstance(command, str) or not command:
        raise ValidationFailure("failed to parse config: missing required field: command")
    if "http" not in ctx.ports:
        raise DriverFailure("the group has no port labelled http")
    spec = foundry_spec(ctx, [str(a) for a in ctx.config.get("args") or []])
    runtime.binaries[spec.name] = command
    try:
        handle = await runtime.start_task(spec)
    except Exception as exc:  # the runtime's own words are the driver failure's
        raise DriverFailure(getattr(exc, "message", None) or str(exc)) from exc
    return RuntimeRun(runtime, handle, lambda: runtime.binaries.pop(spec.name, None))


def exec_log(ctx: TaskContext) -> Path:
    """The exec task's log file (the runtime writes stdout and stderr to it, as one stream)."""
    return logs.log_path(ctx.log_dir / ctx.task["Name"])


# ----------------------------------------------------------------------------------- podman


class ImageOfTask:
    """The podman runtime's image source: the image the task's config names (the fleet built it on
    this host), per runtime task name, set just before the start."""

    def __init__(self) -> None:
        self.images: dict[int, str] = {}

    async def ensure(self, generation: int, progress: Any = None) -> str:
        return self.images[generation]


async def start_podman(ctx: TaskContext, runtime: Any, images: ImageOfTask) -> Run:
    from foundry_fleet.runtime.podman import container_spec

    image = ctx.config.get("image")
    if not isinstance(image, str) or not image:
        raise ValidationFailure("failed to parse config: missing required field: image")
    if ctx.config.get("command") not in (None, "node"):
        raise DriverFailure(f"command {ctx.config.get('command')!r}: the image runs node")
    if "http" not in ctx.ports or ctx.config.get("ports") != ["http"]:
        raise DriverFailure("the task must publish exactly its http port (ports = [\"http\"])")
    spec = foundry_spec(ctx, [str(a) for a in ctx.config.get("args") or []], user=str(ctx.config.get("user") or ""),
                        fixed_mounts=(container_spec.INSTALL_MOUNT, container_spec.DATA_MOUNT))
    images.images[spec.release.generation] = image
    try:
        handle = await runtime.start_task(spec)
    except Exception as exc:
        raise DriverFailure(getattr(exc, "message", None) or str(exc)) from exc
    return RuntimeRun(runtime, handle)
