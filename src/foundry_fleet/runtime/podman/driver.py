"""The podman runtime: each instance in a rootful Podman container, driven through the libpod REST API.

The container is the task. Its name (`foundry-fleet-<fleet id>-<instance>`) and labels say whose it
is; the handle's state holds its id, name, port and log file. conmon, not the daemon, is the
container's parent, so the containers outlive a `kill -9` of the daemon (and of Podman's API service):
`recover_task` finds them again by id, and `forget_unknown` removes the fleet's containers that no
record claims any more. What a container gets is container_spec.py's business; the API service is
service.py's (started and restarted on demand); the images are images.py's; the network that keeps
containers off the host and off each other is fleet_network.py's.

Every call that finds the API silent asks the service to come back and tries again; one that fails on a
container's lost network namespace mount (see host_state.py) mounts it again and tries again.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal as signals
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput, Unsupported
from foundry_fleet.runtime import logs, procfs
from foundry_fleet.runtime.this_host import never_moves, this_host_name, this_host_node
from foundry_fleet.runtime.base import (
    Address, Capabilities, Capability, NodeInfo, TaskEvent, TaskExit, TaskHandle, TaskSpec, TaskStats, TaskStatus,
)
from foundry_fleet.runtime.podman import container_spec, fleet_network, host_state
from foundry_fleet.runtime.podman.api import PodmanApi, PodmanRefused, PodmanUnreachable
from foundry_fleet.runtime.podman.container_logs import server_lines
from foundry_fleet.runtime.podman.containers_conf import find_init
from foundry_fleet.runtime.podman.fleet_network import FleetNetwork
from foundry_fleet.runtime.podman.service import PodmanService
from foundry_fleet.runtime.host_ports import host_port_is_free
from foundry_fleet.runtime.task_dirs import check_dirs, prepare_dirs

DRIVER = "podman"
T = TypeVar("T")
# How long wait_task waits for a stopped container's conmon to finish (drain the log, free the port).
CONMON_GRACE = 5.0
# How long inspect_task waits for a container's init to fork the server. Podman answers a start once
# the init runs; the init forks the server a moment later, on a busy host after the supervisor has asked
# for the pid it records.
SERVER_FORK_GRACE = 5.0
# Starts tried when runc itself fails (not the server, nor a port in use).
START_ATTEMPTS = 2
# Lost namespace mounts one call may repair (Podman reports them one at a time).
MAX_REPAIRS = 50


class ImageSource(Protocol):
    async def ensure(self, generation: int, progress: Any = None) -> str: ...


class PodmanRuntime:
    name = DRIVER
    capabilities = Capabilities(isolation="container", limits=True, needs_image=True, multi_node=False)

    def __init__(
        self,
        fleet_id: str,
        service: PodmanService,
        images: Callable[[PodmanApi], ImageSource],
        *,
        log_dir_of: Callable[[str], Path] | None = None,
        network: FleetNetwork | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        """`images(api)` makes the image source (NodeImages) on the service's API client;
        `network`: the fleet's isolated network (fleet_network.FleetNetwork), None for Podman's own bridge;
        `listen_host`: the host address containers' ports are published on (another loopback address than
        127.0.0.1 stands for a second machine in multi-node tests)."""
        self.listen_host = listen_host
        self.fleet_id = fleet_id
        self.service = service
        self.log_dir_of = log_dir_of
        self.network = network
        self._images_factory = images
        self._images: ImageSource | None = None
        self._events: list[TaskEvent] = []
        self._exits: dict[str, TaskExit] = {}

    @property
    def api(self) -> PodmanApi:
        return self.service.api

    @property
    def images(self) -> ImageSource:
        if self._images is None:
            self._images = self._images_factory(self.api)
        return self._images

    async def _call(self, call: Callable[[PodmanApi], Awaitable[T]]) -> T:
        """`call(api)`; when the API is silent, the service is brought back, and when Podman failed on a
        container's lost namespace mount (it names one at a time), that is mounted again; then it is
        tried again."""
        try:
            return await call(self.api)
        except PodmanUnreachable:
            await self.service.ensure()
        except PodmanRefused as e:
            if not await self._remount(host_state.lost_namespaces(e.message)):
                raise
        for _ in range(MAX_REPAIRS):
            try:
                return await call(self.api)
            except PodmanRefused as e:
                if not await self._remount(host_state.lost_namespaces(e.message)):
                    raise
        return await call(self.api)

    async def _remount(self, lost: list[tuple[str, Path]]) -> bool:
        repaired = False
        for cid, path in lost:
            info = await self.api.inspect(cid)
            pid = int(((info or {}).get("State") or {}).get("Pid") or 0)
            if pid and await asyncio.to_thread(host_state.remount_namespace, path, pid):
                repaired = True
        return repaired

    async def _heal(self, cid: str) -> dict[str, Any] | None:
        """The container's inspect document, its namespace mount restored first if it was lost."""
        info = await self._call(lambda api: api.inspect(cid))
        if info is None:
            return None
        key = (info.get("NetworkSettings") or {}).get("SandboxKey")
        pid = int((info.get("State") or {}).get("Pid") or 0)
        if await asyncio.to_thread(host_state.namespace_lost, key):
            if pid and await asyncio.to_thread(host_state.remount_namespace, Path(key), pid):
                self._events.append(TaskEvent(_instance(info), "repaired",
                                              f"mounted the lost network namespace of its container at {key} again"))
        return info

    # ------------------------------------------------------------------ open / close / health

    async def open(self) -> list[Capability]:
        """Start (or find) the API service, set up the fleet's network; health lines."""
        try:
            await self.service.ensure()
        except (ExternalFailure, Unsupported) as e:
            return [Capability("podman", False, f"{e.message} ({e.hint})" if e.hint else e.message)]
        caps = await self.fingerprint()
        if self.network is not None:
            caps.append(await self.network.open(self.api))
            await self._sweep_dead_forwarding()
        return caps

    async def _sweep_dead_forwarding(self) -> None:
        """Forwarding left by containers that are gone (a teardown cut short) goes before anything
        starts: it would redirect their ports to nothing."""
        live_ids, live_ips = set(), set()
        for entry in await self._call(lambda api: api.list(container_spec.fleet_labels(self.fleet_id))):
            found = await self._call(lambda api, ident=entry["Id"]: api.inspect(ident))
            if found is None:
                continue
            live_ids.add(found["Id"])
            networks = (found.get("NetworkSettings") or {}).get("Networks") or {}
            live_ips |= {n.get("IPAddress") for n in networks.values() if n.get("IPAddress")}
        removed = await asyncio.to_thread(fleet_network.sweep_dead_forwarding, self.network.name,
                                          self.network.subnet, live_ids, live_ips)
        if removed:
            self._events.append(TaskEvent(self.network.name, "strays",
                                          f"removed {removed} port forwarding rule(s) of containers that are gone"))

    async def close(self, instances_left_running: bool) -> None:
        if self.network is not None and not instances_left_running:
            try:
                await self.network.close(self.api)
            except ExternalFailure:
                pass  # a silent service: the chain goes at the next close
        await self.service.stop()

    async def fingerprint(self) -> list[Capability]:
        """What Podman offers here. Asks the API only when it answers: a status check must not start
        the fleet's service (the daemon's `open` does)."""
        api = self.api
        if not await api.ping():
            if self.service.own:
                return [Capability("podman", False, f"the fleet's Podman API service is not running "
                                                    f"({self.service.socket_path}); the daemon starts it")]
            return [Capability("podman", False, f"the configured Podman API socket {self.service.socket_path} "
                                                f"does not answer")]
        try:
            info = await api.info()
            version = (await api.version()).get("Version", "?")
        except ExternalFailure as e:
            return [Capability("podman", False, e.message)]
        host = info.get("host") or {}
        where = "the fleet's own service" if self.service.own else "a configured socket"
        caps = [Capability("podman", True, f"Podman {version} API at {self.service.socket_path} ({where})")]
        oci = host.get("ociRuntime") or {}
        runtime_name = oci.get("name", "?")
        version_line = (oci.get("version") or "").strip().splitlines()[:1]
        detail = " ".join([runtime_name, *version_line])
        # crun refuses a cgroup v1/hybrid layout; on cgroup v2 both work (containers_conf.oci_runtime).
        works = runtime_name == "runc" or (runtime_name == "crun" and host.get("cgroupVersion") == "v2")
        if not works:
            detail += " (runc is the one known to work on cgroup v1/hybrid hosts; see containers.conf)"
        caps.append(Capability("oci runtime", works, detail))
        rootless = bool((host.get("security") or {}).get("rootless"))
        caps.append(Capability("rootful", not rootless,
                               "containers run rootful: one unprivileged uid per instance inside"
                               if not rootless else "Podman runs rootless: instance uids cannot be mapped"))
        caps.append(_cgroup_capability(host))
        init = find_init()
        caps.append(Capability("init", init is not None,
                               f"{init} forwards SIGTERM to the server" if init
                               else "no catatonit: SIGTERM would not reach Node (apt install catatonit)"))
        return caps

    # ------------------------------------------------------------------ start

    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        await asyncio.to_thread(self._check_spec, spec)
        image = await self.images.ensure(spec.release.generation)
        network = None
        if self.network is not None:
            network = await self._call(self.network.ensure)
        owner = await asyncio.to_thread(_owner, spec.data_dir)
        try:
            plan = container_spec.build(spec, image, self.fleet_id, network=network, data_owner=owner,
                                         host_ip=self.listen_host)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        # A daemon that died between creating a container and recording it left one nobody knows; it
        # would hold the name and the port, so it goes first.
        stale = await self._call(lambda api: api.inspect(plan.name))
        if stale is not None:
            await self._call(lambda api: api.remove(plan.name))
            self._events.append(TaskEvent(spec.name, "strays",
                                          f"removed container {plan.name} ({_state(stale)}), which no record knew"))
        cid = await self._create_and_start(spec, plan)
        state: dict[str, object] = {"container": cid, "container_name": plan.name, "port": spec.port,
                                    "log": str(plan.log_path)}
        # Where Podman keeps its network: to tidy up after it, should its namespace mount be lost.
        info = await self._call(lambda api: api.inspect(cid)) or {}
        settings = info.get("NetworkSettings") or {}
        conmon = int((info.get("State") or {}).get("ConmonPid") or 0)
        if conmon:
            state["conmon"] = conmon
        if settings.get("SandboxKey"):
            state["netns"] = settings["SandboxKey"]
        return TaskHandle(DRIVER, spec.name, time.time(), state)

    async def _create_and_start(self, spec: TaskSpec, plan: container_spec.ContainerPlan) -> str:
        """The started container's id. runc fails a start now and then on a busy host ("can't get final
        child's PID from pipe", seen here); such a start is tried once more with a new container."""
        for attempt in range(1, START_ATTEMPTS + 1):
            cid = await self._call(lambda api: api.create(plan.body))
            try:
                await self._call(lambda api, cid=cid: api.start(cid))
                return cid
            except ExternalFailure as e:
                await self._call(lambda api, cid=cid: api.remove(cid))
                # Podman set the network up before runc failed and does not always take it down.
                await self._sweep_forwarding(cid, spec.port)
                if attempt < START_ATTEMPTS and _runtime_hiccup(e.message):
                    continue
                last = await asyncio.to_thread(self._log_tail, plan.log_path, 5)
                raise ExternalFailure(f"instance {spec.name} did not start: {e.message}; last log lines: "
                                      f"{' | '.join(last) if last else 'nothing in the log'}",
                                      f"see {plan.log_path}") from None
        raise AssertionError("unreachable")

    async def _sweep_forwarding(self, cid: str, port: int | None) -> int:
        """Take away the port forwarding of a container that is gone (see destroy_task); how many rules."""
        if self.network is None:
            return 0
        if self.network.subnet is None:
            await self._call(self.network.ensure)
        return await asyncio.to_thread(fleet_network.sweep_forwarding, cid, self.network.subnet, port)

    @staticmethod
    def _check_spec(spec: TaskSpec) -> None:
        check_dirs(spec)
        # The log directory, and Data/shared as the mount point of the shared assets.
        prepare_dirs(spec, True, spec.uid, spec.gid)

    # ------------------------------------------------------------------ wait / stop / destroy

    async def wait_task(self, handle: TaskHandle) -> TaskExit:
        cid = _container(handle)
        known = self._exits.get(cid)
        if known is not None:
            return known
        conmon = handle.state.get("conmon")
        conmon = conmon if isinstance(conmon, int) else 0
        delay = 0.1
        while True:
            try:
                await self.api.wait(cid)
                break
            except PodmanUnreachable:
                pass  # the service died under the wait; conmon still holds the container
            except PodmanRefused:
                break  # removed meanwhile (404, or 500 while being removed): inspect says what is left
            try:
                await self.service.ensure()
                continue
            except (ExternalFailure, Unsupported):
                # No service for now: the container is watched from the host until there is one.
                if conmon and not _alive(conmon, "conmon"):
                    return TaskExit(exit_code=None, signal=None,
                                    reason="its container ended while Podman's API service could not be started")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        info = await self._call(lambda api: api.inspect(cid))
        if info is None:
            return TaskExit(exit_code=None, signal=None)
        # Podman calls a container stopped as soon as its process has; its conmon still drains the
        # last output into the log and holds the published port until it exits.
        await _gone(conmon, "conmon", CONMON_GRACE)
        result = _exit_of(info)
        self._exits[cid] = result
        return result

    async def stop_task(self, handle: TaskHandle, timeout: float, signal: int = signals.SIGTERM) -> None:
        cid = _container(handle)
        await self._heal(cid)  # Podman tears the network down as the container stops
        seconds = max(0, math.ceil(timeout))
        if signal != signals.SIGTERM:
            await self._call(lambda api: api.kill(cid, signal))
            try:
                await asyncio.wait_for(self.api.wait(cid), timeout)
            except (TimeoutError, ExternalFailure):
                pass  # still running (killed below), gone, or the API silent (the stop brings it back)
            seconds = 0
        await self._call(lambda api: api.stop(cid, seconds))

    async def destroy_task(self, handle: TaskHandle) -> None:
        cid = _container(handle)
        await self._heal(cid)
        await self._call(lambda api: api.remove(cid))
        self._exits.pop(cid, None)
        # Podman does not tear a container's network down when its namespace mount was lost before it
        # ended: what netavark left would catch the next container published on the same port.
        port = handle.state.get("port")
        if await self._sweep_forwarding(cid, port if isinstance(port, int) else None):
            self._events.append(TaskEvent(handle.name, "repaired", "removed the port forwarding Podman left "
                                                                   "behind for its container"))
        netns = handle.state.get("netns")
        if isinstance(netns, str):
            await asyncio.to_thread(host_state.forget_namespace_file, Path(netns))

    # ------------------------------------------------------------------ the other verbs

    async def inspect_task(self, handle: TaskHandle) -> TaskStatus:
        info = await self._call(lambda api: api.inspect(_container(handle)))
        if info is None or not (info.get("State") or {}).get("Running"):
            return TaskStatus(running=False)
        pid = int(info["State"].get("Pid") or 0) or None
        if pid and (info.get("HostConfig") or {}).get("Init"):
            pid = await _server_of(pid, SERVER_FORK_GRACE)
        return TaskStatus(running=True, pid=pid)

    async def recover_task(self, handle: TaskHandle) -> TaskHandle | None:
        if handle.driver != DRIVER or not isinstance(handle.state.get("container"), str):
            return None  # not a task this driver could have started
        cid = _container(handle)
        info = await self._heal(cid)
        if info is None:
            return None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(container_spec.FLEET_LABEL) != self.fleet_id:
            return None  # another fleet's: not ours to touch
        if (info.get("State") or {}).get("Running"):
            conmon = int(info["State"].get("ConmonPid") or 0)
            if conmon and handle.state.get("conmon") != conmon:
                return TaskHandle(handle.driver, handle.name, handle.started_at, {**handle.state, "conmon": conmon})
            return handle
        await self.destroy_task(handle)  # exited while the control plane was down
        return None

    async def forget_instance(self, name: str) -> None:
        return None  # destroy_task removed its container; its image is the release's, shared

    async def forget_unknown(self, known: set[str]) -> list[str]:
        """Remove the fleet's containers of instances not in `known` (those whose recorded task the
        control plane will recover); each is reported as an event. Their instance names."""
        found = await self._call(lambda api: api.list(container_spec.fleet_labels(self.fleet_id)))
        removed = []
        for entry in found:
            labels = entry.get("Labels") or {}
            instance = labels.get(container_spec.INSTANCE_LABEL, "")
            if instance in known:
                continue
            names = entry.get("Names") or [entry.get("Id", "?")[:12]]
            # Nobody's task: no graceful stop to wait for before the daemon can start the known ones.
            await self._call(lambda api, ident=entry["Id"]: api.remove(ident, stop_timeout=0))
            ports = [p.get("host_port") for p in entry.get("Ports") or [] if isinstance(p.get("host_port"), int)]
            await self._sweep_forwarding(entry["Id"], ports[0] if ports else None)
            self._events.append(TaskEvent(instance or names[0], "strays",
                                          f"removed container {names[0]} ({entry.get('State', '?')}), "
                                          f"which the fleet no longer knows"))
            removed.append(instance)
        return removed

    def host_processes(self) -> set[int]:
        """The monitors (conmon) of the fleet's containers on this host: with what runs below them, the
        processes that are the fleet's own (its tenants' uids in use), found without the API."""
        return host_state.fleet_monitors(self.fleet_id)

    async def task_stats(self, handle: TaskHandle) -> TaskStats | None:
        try:
            stats = await self._call(lambda api: api.stats(_container(handle)))
        except ExternalFailure:
            return None  # not running (409) or gone
        if not stats or not stats.get("SystemNano"):
            return None  # a stopped container's stats are all zeros, its time of measurement too
        # Podman caps the limit it reports at the host's RAM, which is what a container without one shows.
        limit = int(stats.get("MemLimit") or 0)
        return TaskStats(memory_bytes=int(stats.get("MemUsage") or 0),
                         cpu_seconds=int(stats.get("CPUNano") or 0) / 1e9,
                         memory_limit_bytes=limit if 0 < limit < _host_memory_bytes() else None)

    async def address(self, handle: TaskHandle) -> Address:
        port = handle.state.get("port")
        if not isinstance(port, int):
            raise ExternalFailure(f"the task of {handle.name} does not say which port it listens on",
                                  "restart the instance")
        return Address(self.listen_host, port)

    async def watch_address(self, handle: TaskHandle, current: Address) -> Address:
        return await never_moves(current)

    async def data_node(self, name: str) -> str | None:
        return this_host_name()

    async def nodes(self) -> list[NodeInfo]:
        # A read for `status`: asked once, never bringing the service back (that is the daemon's business).
        found = await self.api.list(container_spec.fleet_labels(self.fleet_id))
        running = sum(1 for entry in found if entry.get("State") == "running")
        return [this_host_node(running)]

    def port_is_free(self, port: int) -> bool:
        return host_port_is_free(port, self.listen_host)  # Podman holds a published port while its container runs

    async def logs(self, task: TaskHandle | str, lines: int = 100, follow: bool = False) -> AsyncIterator[str]:
        path = self._log_path(task)
        for line in await asyncio.to_thread(self._log_tail, path, lines):
            yield line
        if not follow:
            return
        async for line in logs.follow_on_own_thread(path, server_lines):
            yield line

    def take_events(self) -> list[TaskEvent]:
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ helpers

    def _log_path(self, task: TaskHandle | str) -> Path:
        if isinstance(task, TaskHandle):
            recorded = task.state.get("log")
            if isinstance(recorded, str):
                return Path(recorded)
            task = task.name
        if self.log_dir_of is None:
            raise Unsupported(f"no log directory is known for {task}")
        return self.log_dir_of(task) / container_spec.LOG_NAME

    @staticmethod
    def _log_tail(path: Path, lines: int) -> list[str]:
        # Partial lines join up, so read a few more raw lines than asked for.
        return list(server_lines(logs.tail(path, lines * 2)))[-lines:] if lines > 0 else []


def _cgroup_capability(host: dict[str, Any]) -> Capability:
    version = host.get("cgroupVersion", "?")
    if version == "v2":
        try:
            present = set(Path("/sys/fs/cgroup/cgroup.controllers").read_text().split())
        except OSError:
            present = set()
    else:
        present = {c for c in ("memory", "cpu", "pids") if Path("/sys/fs/cgroup", c).is_dir()}
    missing = [c for c in ("memory", "cpu", "pids") if c not in present]
    where = f"cgroups {version}, {host.get('cgroupManager', '?')}"
    if missing:
        return Capability("cgroup limits", False, f"no {', '.join(missing)} controller ({where}): those limits "
                                                  "are not enforced")
    return Capability("cgroup limits", True, f"memory, CPU and pids limits per container ({where})")


def _host_memory_bytes() -> int:
    """The host's RAM as the kernel counts it (sysinfo's total), the figure Podman compares limits with."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _container(handle: TaskHandle) -> str:
    cid = handle.state.get("container")
    if not isinstance(cid, str) or not cid:
        raise InvalidInput(f"the task handle of {handle.name} names no container", "restart the instance")
    return cid


def _runtime_hiccup(message: str) -> bool:
    return "runc create failed" in message and "address already in use" not in message


def _alive(pid: int, comm: str) -> bool:
    """Is process `pid` alive, and a `comm` (not another process given its number since)?"""
    st = procfs.stat(pid)
    return st is not None and st.comm == comm and st.state not in ("Z", "X", "x")


async def _gone(pid: int, comm: str, timeout: float) -> None:
    """Wait (at most `timeout`) until process `pid`, if it is a `comm`, has exited."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while pid > 0 and time.monotonic() < deadline and _alive(pid, comm):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _server_of(init_pid: int, timeout: float) -> int | None:
    """The server the container's init (`init_pid`) runs: its child, waited for (at most `timeout`) while
    the init has not forked it yet. None when the init ends without one (the server is gone, or never
    started): the init's own pid is not the server's."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    started = procfs.start_time(init_pid)
    while True:
        children = procfs.children(init_pid)
        if children:
            return children[0]
        if started is None or not procfs.is_alive(init_pid, started) or time.monotonic() >= deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _instance(info: dict[str, Any]) -> str:
    labels = (info.get("Config") or {}).get("Labels") or {}
    return str(labels.get(container_spec.INSTANCE_LABEL) or info.get("Name") or "?")


def _owner(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def _state(info: dict[str, Any]) -> str:
    return str((info.get("State") or {}).get("Status", "?"))


def _exit_of(info: dict[str, Any]) -> TaskExit:
    state = info.get("State") or {}
    code = int(state.get("ExitCode") or 0)
    oom = bool(state.get("OOMKilled"))
    # The init reports a server killed by signal N as 128 + N, as a shell does.
    if 128 < code <= 128 + 64:
        return TaskExit(exit_code=None, signal=code - 128, oom_killed=oom)
    return TaskExit(exit_code=code, signal=None, oom_killed=oom)
