"""The local runtime: each instance is a detached process tree on this host.

Launch chain (root, sandbox available):

    /bin/sh -c 'echo $$ > <each cgroup.procs> && exec "$@"' sh \\
        bwrap <sandbox options> -- \\
        setpriv --reuid=UID --regid=GID --clear-groups --no-new-privs [--inh-caps=-all --bounding-set=-all] \\
        node main.js --port=... --dataPath=...

The shell joins the task's cgroups while it is root, bwrap builds the sandbox as root, and inside it
setpriv drops to the instance's own uid before exec'ing node. Every step but bwrap's fork is an
exec, so the process the runtime spawned (the *leader*) keeps one pid and start time from the shell
to bwrap. Without a sandbox, setpriv comes before node directly.

The task is detached from the control plane, so killing the control plane (even with SIGKILL)
leaves every instance running: the task gets a session and process group of its own, stdin is
/dev/null, and stdout/stderr are a pipe to the task's own log writer (see logs.py), detached too; the
control plane holds no end of it, so its death cannot SIGPIPE the server.
A restarted control plane finds its tasks again with `recover_task`.

In the sandbox, bwrap forks an init (pid 1 of the instance's pid namespace) which forks node. The
handle's `pid` is node's host pid; `leader_pid` is bwrap. When pid 1 of the namespace dies, the
kernel kills everything else in it, which is what makes "kill the init" a complete stop.

As root, the sandbox also gets a network namespace of its own, and the runtime starts its forwarder
(slirp4netns, network.py) once bwrap has exec'd the server (it has finished setting up the namespace
then), while node boots. The forwarder is part of the task:
detached like it, recorded in the handle (`net_pid`, `net_start`), found again by `recover_task`,
killed with it, and swept by `kill_strays`. If it dies while the task runs, the task has lost its
only way in: `wait_task` then ends the whole task and says why, and the supervisor restarts it as
after a crash (with a new forwarder), within its crash-loop limits. A task that comes back from a
control plane restart without its forwarder is ended the same way rather than re-attached.

As Nomad's drivers are split: this file holds the driver and its verbs; local_task.py one task's
processes (the state inside its opaque handle); pidfds.py waiting for processes; task_dirs.py the
task's directories on the host.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from foundry_fleet.domain.errors import Conflict, ExternalFailure, InvalidInput, Unsupported
from foundry_fleet.domain.foundry_options import data_path_flag, server_args
from foundry_fleet.runtime import logs, procfs, sandbox, seccomp
from foundry_fleet.runtime.this_host import never_moves, this_host_name, this_host_node
from foundry_fleet.runtime.base import (
    Address, Capabilities, Capability, NodeInfo, TaskEvent, TaskExit, TaskHandle, TaskSpec, TaskStats, TaskStatus,
)
from foundry_fleet.runtime.local_task import LocalTask, listening_port
from foundry_fleet.runtime.pidfds import pidfd_of, send_signal, wait_readable
from foundry_fleet.runtime.host_ports import host_port_is_free
from foundry_fleet.runtime.task_dirs import check_dirs, check_reachable, prepare_dirs
from foundry_fleet.runtime.cgroups import CgroupHost, ForwarderCgroup, LogWriterCgroup, TaskCgroups
from foundry_fleet.runtime.firewall import DEFAULT_CHAIN, EgressFilter, PortFirewall
from foundry_fleet.runtime.network import PrivateNetworks

# After the server dies, bwrap exits at once; if it does not within this time it is killed.
SERVER_EXIT_GRACE = 2.0
# How long start_task waits for the sandbox to run the server before giving up.
START_TIMEOUT = 15.0
INFO_FD = 3  # the descriptor number bwrap writes its child's pid to, inside the leader
SECCOMP_FD = 4  # the descriptor number bwrap reads the seccomp filter from, inside the leader
NET_LOST = "its network forwarder (slirp4netns) exited, so nothing could reach it any more"


def _high_fd(fd: int) -> int:
    """A close-on-exec copy of `fd` numbered above the standard streams and INFO_FD."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def _decode_status(status: int, sandboxed: bool) -> TaskExit:
    if os.WIFSIGNALED(status):
        return TaskExit(exit_code=None, signal=os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    # bwrap reports a server killed by signal N as exit code 128 + N.
    if sandboxed and 128 < code <= 128 + 64:
        return TaskExit(exit_code=None, signal=code - 128)
    return TaskExit(exit_code=code, signal=None)


def _node_on_path(generation: int) -> str:
    found = shutil.which("node")
    if found is None:
        raise Unsupported("no node binary on PATH", "install Node.js, or configure [node] in fleet.toml")
    return found


class LocalRuntime:
    name = "local"

    def __init__(
        self,
        cgroup_parent: str = "foundry-fleet",
        use_sandbox: bool | None = None,
        firewall: bool | None = None,
        *,
        firewall_chain: str = DEFAULT_CHAIN,
        network: bool | None = None,
        run_dir: Path | None = None,
        node: Callable[[int], str] = _node_on_path,
        port_range: tuple[int, int] | None = None,
        log_dir_of: Callable[[str], Path] | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        """`network`: give each sandbox a network namespace (None: when the host can). `run_dir`:
        where the forwarders' API sockets live (the fleet's run directory; root-only). `node`: the
        node binary for a Foundry generation (raises Unsupported when there is none that fits).
        `port_range`: the instances' ports, which `open` firewalls. `log_dir_of`: an instance's log
        directory, for `logs` by name. `listen_host`: the host address the instances are published on
        (a loopback address of the host's; another one than 127.0.0.1 stands for a second machine in
        multi-node tests)."""
        self.node = node
        self.listen_host = listen_host
        self.port_range = port_range
        self.log_dir_of = log_dir_of
        self._events: list[TaskEvent] = []
        self.cgroups = CgroupHost(cgroup_parent)
        self.firewall = PortFirewall(firewall_chain)
        self.networks = PrivateNetworks(run_dir or Path("/run/foundry-fleet") / cgroup_parent / "net")
        self.forwarder_cgroup = ForwarderCgroup(cgroup_parent)
        self.log_writer_cgroup = LogWriterCgroup(cgroup_parent)
        self.egress = EgressFilter(f"{firewall_chain[:24]}-OUT")
        self._egress_probe: Capability | None = None
        self._network_wanted = network
        self._use_sandbox = use_sandbox
        self._firewall_wanted = firewall
        self._bwrap = sandbox.find_bwrap()
        self._sandbox_probe: Capability | None = None
        # Its real path: on NixOS the one on PATH is a link through /run/current-system, which the
        # sandbox does not show.
        found = shutil.which("setpriv")
        self._setpriv = os.path.realpath(found) if found else None
        self._setpriv_drops_caps: bool | None = None
        self._exits: dict[tuple[int, int], TaskExit] = {}

    # ------------------------------------------------------------------ the driver's verbs
    # Each takes and returns the opaque TaskHandle; the work is done on LocalTask, the driver's own
    # view of it. What blocks (procfs walks, waiting for kills, probes) runs in a thread.

    capabilities = Capabilities(isolation="bubblewrap", limits=True, needs_image=False, multi_node=False)

    async def open(self) -> list[Capability]:
        """Health lines, and (with a port range) the firewall that keeps other machines off it."""
        caps = [c for c in await self.fingerprint() if c.name != "firewall"]
        if self.port_range is None:
            return [*caps, self._firewall_capability()]
        low, high = self.port_range
        return [*caps, await asyncio.to_thread(self.protect_ports, low, high)]

    async def close(self, instances_left_running: bool) -> None:
        if not instances_left_running:
            await asyncio.to_thread(self.unprotect_ports)  # nothing listens in the range any more
            await asyncio.to_thread(self._remove_log_writer_group)

    async def fingerprint(self) -> list[Capability]:
        return await asyncio.to_thread(self._fingerprint)

    def server_command(self, spec: TaskSpec) -> list[str]:
        """node (the one the release's generation needs), the entry script and Foundry's flags."""
        release = spec.release
        entry = str(release.install_dir / release.entry)
        return [self.node(release.generation), *server_args(entry, spec.port, str(spec.data_dir))]

    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        command = await asyncio.to_thread(self.server_command, spec)
        # A control plane that died between spawning a task and recording it left one nobody knows
        # about; it would hold the port, so it goes first.
        strays = await asyncio.to_thread(self.kill_strays, spec.name, spec.data_dir)
        if strays:
            self._events.append(TaskEvent(spec.name, "strays", f"stopped {strays} unrecorded process(es)"))
        return (await self._start(spec, command)).handle()

    async def wait_task(self, handle: TaskHandle) -> TaskExit:
        return await self._wait(LocalTask.of(handle))

    async def stop_task(self, handle: TaskHandle, timeout: float, signal: int = signal.SIGTERM) -> None:
        await self._stop(LocalTask.of(handle), timeout, signal)

    async def destroy_task(self, handle: TaskHandle) -> None:
        await asyncio.to_thread(self._destroy, LocalTask.of(handle))

    async def inspect_task(self, handle: TaskHandle) -> TaskStatus:
        task = LocalTask.of(handle)
        running = await asyncio.to_thread(self._inspect, task)
        return TaskStatus(running=running, pid=task.pid if running else None)

    async def recover_task(self, handle: TaskHandle) -> TaskHandle | None:
        try:
            task = LocalTask.of(handle)
        except ValueError:
            return None  # not a task this driver could have started
        recovered = await asyncio.to_thread(self._recover, task)
        if recovered is None:
            return None
        if recovered.port is None:
            # Recorded before the handle kept the port: the server's own command line names it.
            recovered = replace(recovered, port=listening_port(recovered.pid))
        if recovered.log_dir is None and self.log_dir_of is not None:
            recovered = replace(recovered, log_dir=str(self.log_dir_of(recovered.name)))
        return recovered.handle()

    async def task_stats(self, handle: TaskHandle) -> TaskStats | None:
        return await asyncio.to_thread(self._stats, LocalTask.of(handle))

    def port_is_free(self, port: int) -> bool:
        return host_port_is_free(port, self.listen_host)  # the forwarder will listen there

    async def address(self, handle: TaskHandle) -> Address:
        """The host address tasks are published on and the task's port: in a network namespace the
        forwarder holds it."""
        port = LocalTask.of(handle).port
        if port is None:
            raise ExternalFailure(f"the task of {handle.name} does not say which port it listens on",
                                  "restart the instance")
        return Address(self.listen_host, port)

    async def watch_address(self, handle: TaskHandle, current: Address) -> Address:
        return await never_moves(current)

    async def data_node(self, name: str) -> str | None:
        return this_host_name()

    async def nodes(self) -> list[NodeInfo]:
        return [await asyncio.to_thread(self._this_host)]

    def _this_host(self) -> NodeInfo:
        """This host, counting the task groups under the fleet's cgroup parent that hold a process."""
        usable = self.cgroups.usable()
        running = 0
        if usable:
            parent = self.cgroups.parent_dir(usable[0])
            try:
                groups = [d for d in parent.iterdir() if d.is_dir() and not d.name.startswith("_")]
            except OSError:
                groups = []
            running = sum(1 for d in groups if self.cgroups.task(d.name).pids())
        return this_host_node(running)

    async def logs(self, task: TaskHandle | str, lines: int = 100, follow: bool = False) -> AsyncIterator[str]:
        path = logs.log_path(self._log_dir(task))
        for line in await asyncio.to_thread(logs.tail, path, lines):
            yield line
        if not follow:
            return
        async for line in logs.follow_on_own_thread(path):
            yield line

    async def forget_unknown(self, known: set[str]) -> list[str]:
        return []  # start_task finds a stray of the instance it starts (kill_strays)

    async def forget_instance(self, name: str) -> None:
        return None  # it keeps nothing of an instance once its task is destroyed

    def host_processes(self) -> set[int]:
        return set()  # every task's processes are in its recorded handle

    def take_events(self) -> list[TaskEvent]:
        events, self._events = self._events, []
        return events

    def _log_dir(self, task: TaskHandle | str) -> Path:
        if isinstance(task, TaskHandle):
            recorded = LocalTask.of(task).log_dir
            if recorded is not None:
                return Path(recorded)
            task = task.name
        if self.log_dir_of is None:
            raise Unsupported(f"no log directory is known for {task}")
        return self.log_dir_of(task)

    # ------------------------------------------------------------------ capabilities

    def sandbox_capability(self) -> Capability:
        if self._sandbox_probe is None:
            if self._use_sandbox is False:
                self._sandbox_probe = Capability(
                    "sandbox", False, "disabled in the configuration: instances see the whole host "
                    "and shared assets are protected by file permissions only"
                )
            else:
                # As root, bwrap runs privileged and drops to the instance's uid inside; otherwise it
                # runs as the fleet's user. Either way the probe runs it as the instances will.
                self._sandbox_probe = sandbox.probe(self._bwrap)
        return self._sandbox_probe

    @property
    def sandboxed(self) -> bool:
        return self.sandbox_capability().available

    def _fingerprint(self) -> list[Capability]:
        caps = [self.sandbox_capability(), self._users_capability(), self.network_capability(),
                self.seccomp_capability()]
        caps += self.cgroups.capabilities()
        caps.append(self._firewall_capability())
        caps.append(self._pidfd_capability())
        return caps

    def network_capability(self) -> Capability:
        if self._network_wanted is False:
            return Capability("network", False, "disabled: instances share the host's network")
        if not self.sandboxed:
            return Capability("network", False, "no sandbox, so no network namespace: instances share the "
                              "host's network, see its sockets and reach its loopback services")
        # The filter first: it decides the cgroup forwarders start in, the probe's included.
        egress = self._egress_capability() if self.networks.slirp is not None else None
        cap = self.networks.capability(self._bwrap)
        if not cap.available or egress is None:
            return cap
        if egress.available:
            return replace(cap, detail=f"{cap.detail}; its NAT reaches no address of the host's own and "
                                       f"no link-local one (cloud metadata), DNS aside ({egress.detail})")
        return replace(cap, detail=f"{cap.detail}; but through its NAT it still reaches host services bound "
                                   f"to the host's other addresses (or to all of them) and link-local "
                                   f"addresses such as cloud metadata: {egress.detail}")

    def _egress_capability(self) -> Capability:
        """Set up (once a process, and so at every daemon start, before any instance runs) the
        forwarders' cgroup and the OUTPUT chain that keeps their connections off the host."""
        if self._egress_probe is None:
            self._egress_probe = self._install_egress()
        return self._egress_probe

    def _install_egress(self) -> Capability:
        if os.geteuid() != 0:
            return Capability("egress", False, "not root, so no egress filter")
        try:
            self.forwarder_cgroup.ensure()
        except (OSError, ValueError) as exc:
            self.networks.cgroup_procs = None
            return Capability("egress", False, f"no cgroup v2 group for the forwarders ({exc})")
        # In the group even when the rules do not load: a later daemon that can load them covers
        # these forwarders too.
        self.networks.cgroup_procs = self.forwarder_cgroup.procs_file
        try:
            return self.egress.install(self.forwarder_cgroup.match_path())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return Capability("egress", False, f"iptables failed ({exc})")

    def seccomp_capability(self) -> Capability:
        return seccomp.capability(self.sandboxed)

    def _users_capability(self) -> Capability:
        if os.geteuid() != 0:
            return Capability(
                "users", False,
                f"not root: every instance runs as uid {os.geteuid()}, the fleet's own user",
            )
        if self._setpriv is None:
            return Capability("users", False, "setpriv (util-linux) is missing: instances cannot drop root")
        extra = ", capabilities cleared" if self._caps_droppable() else ""
        return Capability("users", True, f"root: each instance runs as its own uid via setpriv{extra}")

    def _firewall_capability(self) -> Capability:
        if self._firewall_wanted is False:
            return Capability("firewall", False, "disabled in the configuration")
        return self.firewall.usable()

    @staticmethod
    def _pidfd_capability() -> Capability:
        try:
            fd = os.pidfd_open(os.getpid())
        except (AttributeError, OSError) as exc:
            return Capability("pidfd", False, f"pidfd_open unavailable ({exc}): exits are noticed by polling")
        os.close(fd)
        return Capability("pidfd", True, "exits are noticed at once, also for re-attached instances")

    def _caps_droppable(self) -> bool:
        if self._setpriv_drops_caps is None:
            try:
                probe = subprocess.run(
                    [self._setpriv or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "true"],
                    stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                )
                self._setpriv_drops_caps = probe.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                self._setpriv_drops_caps = False
        return self._setpriv_drops_caps

    def protect_ports(self, low: int, high: int) -> Capability:
        """Keep other machines from connecting to instance ports directly (iptables)."""
        if self._firewall_wanted is False:
            return Capability(
                "firewall", False,
                f"instance ports {low}-{high} are reachable from other machines: the firewall is "
                "disabled in the configuration",
            )
        cap = self.firewall.protect(low, high)
        if self._firewall_wanted and not cap.available:
            raise ExternalFailure(cap.detail, "run the fleet as root with iptables installed, or set firewall = false")
        return cap

    def _log_writer_procs(self) -> Path | None:
        """Where a new log writer moves itself (made on first use); None without a cgroup v2 hierarchy."""
        try:
            self.log_writer_cgroup.ensure()
        except (OSError, ValueError):
            return None
        return self.log_writer_cgroup.procs_file

    def _remove_log_writer_group(self) -> None:
        if not self.log_writer_cgroup.pids():  # a writer still draining keeps it
            self.log_writer_cgroup.remove(keep_parent=True)

    def unprotect_ports(self) -> None:
        self.firewall.remove()
        # The egress filter goes only with the last forwarder: one still running stays filtered.
        if not self.forwarder_cgroup.pids():
            self.egress.remove()
            self.forwarder_cgroup.remove(keep_parent=self._tasks_share_the_parent())
            self.networks.cgroup_procs = None
            self._egress_probe = None

    def _tasks_share_the_parent(self) -> bool:
        mount = self.forwarder_cgroup.mount
        return mount is not None and self.cgroups.version == 2 and mount[0] == self.cgroups.root

    # ------------------------------------------------------------------ start

    async def _start(self, spec: TaskSpec, command: list[str]) -> LocalTask:
        check_dirs(spec)
        is_root = os.geteuid() == 0
        use_bwrap = self._sandbox_wanted()
        uid = spec.uid
        gid = spec.gid if spec.gid is not None else spec.uid
        if uid is not None and not is_root and uid != os.geteuid():
            raise Unsupported(
                f"instance {spec.name} should run as uid {uid}, which needs root",
                "run the fleet as root, or leave the instance's uid unset",
            )
        cg = self.cgroups.task(spec.name)
        argv = list(command)
        drop: list[str] = []
        if is_root and uid is not None:
            drop = [self._setpriv or "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs"]
            if self._caps_droppable():
                drop += ["--inh-caps=-all", "--bounding-set=-all"]
        use_net = use_bwrap and self._network_wanted_now()
        use_seccomp = use_bwrap and self.seccomp_capability().available
        if use_bwrap:
            # Root builds the sandbox, then drops to the instance's uid inside it.
            argv = sandbox.bwrap_argv(spec, command, self._bwrap or "bwrap", info_fd=INFO_FD,
                                      privileged=is_root, drop_privileges=drop,
                                      resolv_conf=self.networks.resolv_conf() if use_net else None,
                                      seccomp_fd=SECCOMP_FD if use_seccomp else None)
        else:
            argv = drop + argv
        # Only controllers whose parent group this process could create are used (CgroupHost), so
        # the task's own groups are ours to join, also when not root.
        joins = cg.procs_files()
        if joins:
            script = " && ".join(f"echo $$ > {shlex.quote(str(f))}" for f in joins)
            argv = ["/bin/sh", "-c", script + ' && exec "$@"', "sh", *argv]
        env = sandbox.sandbox_env(spec)
        executable = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env["PATH"])
        if executable is None:
            raise InvalidInput(f"{argv[0]!r} was not found on {env['PATH']}", "give the node binary's full path")

        if is_root and uid is not None and not use_bwrap:
            # Without a sandbox the server walks the host's own directories as its uid.
            check_reachable(spec, uid, gid if gid is not None else uid)
        prepare_dirs(spec, use_bwrap, uid, gid)
        try:
            cg.create(spec.limits)
        except RuntimeError as exc:
            raise Conflict(
                f"instance {spec.name} seems to be running already ({exc})",
                "recover or stop the running instance before starting it again",
            ) from exc
        except OSError as exc:
            raise ExternalFailure(f"cannot set up cgroups for {spec.name}: {exc}") from exc

        info_r = info_w = filter_fd = None
        if use_bwrap:
            info_r, info_w = (_high_fd(fd) for fd in os.pipe())
        if use_seccomp:
            filter_fd = _high_fd(seccomp.filter_fd())
        log_fd = _high_fd(logs.open_for_task(spec.log_dir, spec.log_max_bytes, spec.log_keep, uid=uid, gid=gid,
                                             cgroup_procs=self._log_writer_procs() if is_root else None))
        actions: list[tuple] = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ]
        if info_w is not None:
            actions.append((os.POSIX_SPAWN_DUP2, info_w, INFO_FD))
        if filter_fd is not None:
            actions.append((os.POSIX_SPAWN_DUP2, filter_fd, SECCOMP_FD))
        begun = time.time()
        try:
            leader = os.posix_spawn(
                executable, argv, env,
                file_actions=actions,
                setsid=True,  # own session and process group; no controlling terminal
                setsigmask=(),
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
            )
        except OSError as exc:
            cg.remove()
            if info_r is not None:
                os.close(info_r)
            raise ExternalFailure(f"could not start {spec.name}: {exc}") from exc
        finally:
            os.close(log_fd)
            if info_w is not None:
                os.close(info_w)
            if filter_fd is not None:
                os.close(filter_fd)
        leader_start = procfs.start_time(leader) or 0
        handle = LocalTask(
            name=spec.name, pid=leader, leader_pid=leader, leader_start=leader_start,
            pgid=leader, started_at=begun, boot_id=procfs.boot_id(), port=spec.port, log_dir=str(spec.log_dir),
        )
        if info_r is None:
            return handle
        try:
            try:
                init = await self._sandbox_init(handle, spec, info_r)
            finally:
                os.close(info_r)
            server = await self._find_server(handle, spec, command[0], init)
            if use_net:
                # Only now: until bwrap execs the server it is still setting up the namespace's
                # loopback, and slirp4netns configuring it at the same time makes that fail. node
                # takes far longer to listen than the forwarder to come up, so nothing waits for it.
                try:
                    net = await self.networks.start(spec.name, server, spec.port, self.listen_host)
                except ExternalFailure:
                    if not procfs.is_alive(handle.leader_pid, handle.leader_start):
                        # The server ran and exited before its forwarder could join the namespace: that
                        # exit is the news, told by wait_task like any crash (a start failure here would
                        # bypass the crash policy's backoff and loop count).
                        return replace(handle, pid=server)
                    raise
                handle = replace(handle, net_pid=net.pid, net_start=net.start, net_socket=net.api_socket)
        except BaseException:
            await self._abort_start(handle, cg)
            raise
        return replace(handle, pid=server)

    def _network_wanted_now(self) -> bool:
        cap = self.network_capability()
        if self._network_wanted and not cap.available:
            raise Unsupported(f"a network namespace per instance is required but not usable: {cap.detail}",
                              "install slirp4netns and run the fleet as root, or allow the host network")
        return cap.available

    def _sandbox_wanted(self) -> bool:
        if self._use_sandbox is False:
            return False
        cap = self.sandbox_capability()
        if self._use_sandbox and not cap.available:
            raise Unsupported(f"the sandbox is required but not usable: {cap.detail}",
                              "install bubblewrap, or set use_sandbox = false")
        return cap.available

    async def _sandbox_init(self, handle: LocalTask, spec: TaskSpec, info_r: int) -> int:
        """The sandbox init's pid (in the host's view), as bwrap reports it on its info pipe."""
        deadline = time.monotonic() + START_TIMEOUT
        leader_fd = os.pidfd_open(handle.leader_pid)
        try:
            os.set_blocking(info_r, False)
            raw = b""
            info: dict | None = None
            while info is None:
                ready = await wait_readable([info_r, leader_fd], deadline - time.monotonic())
                if info_r in ready:
                    chunk = os.read(info_r, 65536)
                    raw += chunk
                    try:
                        info = json.loads(raw)
                    except ValueError:
                        if not chunk:
                            raise await self._start_failure(spec, "bwrap closed its info pipe") from None
                        continue
                elif leader_fd in ready:
                    raise await self._start_failure(spec, "the sandbox exited during start-up")
                else:
                    raise await self._start_failure(spec, f"no sandbox after {START_TIMEOUT:.0f} s")
            return int(info["child-pid"])
        finally:
            os.close(leader_fd)

    async def _find_server(self, handle: LocalTask, spec: TaskSpec, binary: str, init: int) -> int:
        """Wait for the sandbox init's child to exec the server."""
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.001
        while True:
            for pid in procfs.children(init):
                words = procfs.cmdline(pid)
                if words and words[0] == binary:
                    return pid
            if not procfs.is_alive(handle.leader_pid, handle.leader_start):
                raise await self._start_failure(spec, "the sandbox exited during start-up")
            if time.monotonic() > deadline:
                raise await self._start_failure(spec, f"the server did not start within {START_TIMEOUT:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _start_failure(self, spec: TaskSpec, what: str) -> ExternalFailure:
        await asyncio.to_thread(logs.wait_drained, spec.log_dir, 1.0)  # let the last words reach the log
        last = logs.tail(logs.log_path(spec.log_dir), 5)
        detail = " | ".join(last) if last else "nothing in the log"
        return ExternalFailure(
            f"instance {spec.name} did not start: {what}; last log lines: {detail}",
            f"see {logs.log_path(spec.log_dir)}",
        )

    async def _abort_start(self, handle: LocalTask, cg: TaskCgroups) -> None:
        await self._kill_everything(handle)
        self._collect_exit(handle)
        cg.remove()

    # ------------------------------------------------------------------ wait / stop

    async def _wait(self, handle: LocalTask) -> TaskExit:
        known = self._exits.get(handle.key)
        if known is not None:
            return known
        if not handle.same_boot():
            return TaskExit(exit_code=None, signal=None)
        leader_fd = pidfd_of(handle.leader_pid, handle.leader_start)
        server_fd = net_fd = None
        if handle.pid != handle.leader_pid and self._is_server(handle, handle.pid):
            server_fd = pidfd_of(handle.pid, None)
        forwarder = handle.forwarder()
        net_lost = False
        if forwarder is not None:
            net_fd = pidfd_of(forwarder.pid, forwarder.start)
            net_lost = net_fd is None
        try:
            if leader_fd is not None and not net_lost:
                watched = [fd for fd in (leader_fd, server_fd, net_fd) if fd is not None]
                ready = await wait_readable(watched, None)
                if net_fd in ready and leader_fd not in ready and server_fd not in ready:
                    net_lost = True
                elif leader_fd not in ready:
                    # The server died; bwrap normally follows within milliseconds.
                    await wait_readable([leader_fd], SERVER_EXIT_GRACE)
        finally:
            for fd in (leader_fd, server_fd, net_fd):
                if fd is not None:
                    os.close(fd)
        # Whatever is left of the task goes, so the port is free when this returns.
        await self._kill_everything(handle)
        result = self._collect_exit(handle)
        if net_lost and leader_fd is not None and result.reason is None:
            result = replace(result, reason=NET_LOST)
            self._exits[handle.key] = result
        return result

    async def _stop(self, handle: LocalTask, timeout: float, sig: int) -> None:
        # SIGTERM only the server side: bwrap exits by itself once the server is gone. (Killing bwrap
        # first would look like a crash to wait_task, which would SIGKILL the server mid-shutdown.)
        sandbox_pids = self._sandbox_pids(handle)
        for pid in self._task_pids(handle) - sandbox_pids:
            send_signal(pid, sig)
        deadline = time.monotonic() + max(timeout, 0.0)
        leader_fd = pidfd_of(handle.leader_pid, handle.leader_start) if handle.same_boot() else None
        if leader_fd is not None:
            # The leader exits last (bwrap follows the server; without a sandbox it is the server).
            try:
                await wait_readable([leader_fd], timeout)
            finally:
                os.close(leader_fd)
        while time.monotonic() < deadline and self._task_pids(handle):
            await asyncio.sleep(0.02)
        await self._kill_everything(handle)
        self._collect_exit(handle)

    def _kill_round(self, handle: LocalTask) -> bool:
        """SIGKILL every live process of the task once; False when none was left.

        The forwarder goes last, once the server and the sandbox are gone: it is the one way in
        until then, and holding the port it keeps anyone else from taking it.
        """
        pids = self._task_pids(handle)
        if handle.leader_alive():
            pids.add(handle.leader_pid)
        for pid in pids:
            send_signal(pid, signal.SIGKILL)
        if pids:
            return True
        forwarder = handle.forwarder()
        if forwarder is not None and handle.same_boot() and forwarder.alive():
            self.networks.stop(forwarder)
        return False

    async def _kill_everything(self, handle: LocalTask) -> None:
        for _ in range(500):
            if not self._kill_round(handle):
                return
            await asyncio.sleep(0.01)

    def _kill_everything_now(self, handle: LocalTask) -> None:
        """The same, for callers outside the event loop (recover, destroy)."""
        for _ in range(500):
            if not self._kill_round(handle):
                return
            time.sleep(0.01)

    def _collect_exit(self, handle: LocalTask) -> TaskExit:
        """Reap the leader if it is our child; remember the result for every later caller."""
        key = handle.key
        if key in self._exits:
            return self._exits[key]
        sandboxed = handle.pid != handle.leader_pid
        result = TaskExit(exit_code=None, signal=None)
        st = procfs.stat(handle.leader_pid)
        if st is not None and st.start_time == handle.leader_start and st.ppid == os.getpid():
            try:
                pid, status = os.waitpid(handle.leader_pid, os.WNOHANG)
                if pid == handle.leader_pid:
                    result = _decode_status(status, sandboxed)
            except ChildProcessError:
                pass
        oom = self._cgroups_of(handle).oom_kills() > 0
        if oom:
            result = replace(result, oom_killed=True)
        self._exits[key] = result
        return result

    # ------------------------------------------------------------------ the other verbs

    def _inspect(self, handle: LocalTask) -> bool:
        if not handle.leader_alive() or not handle.forwarder_alive():
            return False
        return handle.pid == handle.leader_pid or self._is_server(handle, handle.pid)

    def _recover(self, handle: LocalTask) -> LocalTask | None:
        if handle.leader_alive() and handle.forwarder_alive():
            if handle.pid == handle.leader_pid or self._is_server(handle, handle.pid):
                return handle
            server = self._server_below(handle.leader_pid)
            return replace(handle, pid=server) if server is not None else handle
        # The leader is gone (or the forwarder, the task's only way in); anything of the task still
        # around (node, or a forwarder holding the port) must go.
        self._kill_everything_now(handle)
        return None

    def _stats(self, handle: LocalTask) -> TaskStats | None:
        """The task's groups' own figures where the kernel keeps them: what counts against its limit, and
        the CPU of processes gone too. Else its live processes': the groups' members (one file read) or,
        without groups, the walk of the whole process table that finds them."""
        if not handle.leader_alive():
            return None
        cg = self._cgroups_of(handle)
        memory, cpu = cg.memory_bytes(), cg.cpu_seconds()
        if memory is None or cpu is None:
            pids = {p for p in cg.pids() if procfs.is_alive(p)} or self._task_pids(handle)
            if memory is None:
                memory = sum(procfs.rss_bytes(p) for p in pids)
            if cpu is None:
                cpu = sum(procfs.cpu_seconds(p) for p in pids)
        return TaskStats(memory_bytes=memory, cpu_seconds=cpu, memory_limit_bytes=cg.memory_limit_bytes())

    def kill_strays(self, name: str, data_dir: Path) -> int:
        """Kill what runs in the task's cgroups or serves its data directory, though no handle says so."""
        strays = set(self.cgroups.task(name).pids()) if self.cgroups.usable() else set()
        flag = data_path_flag(str(data_dir))
        strays |= {pid for pid in procfs.all_pids() if flag in procfs.cmdline(pid)}
        strays.discard(os.getpid())
        for pid in strays:
            send_signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(procfs.is_alive(p) for p in strays):
            time.sleep(0.01)
        # A forwarder outlives its sandbox; it is found by its API socket, which is per instance.
        forwarders = self.networks.running(name)
        for forwarder in forwarders:
            self.networks.stop(forwarder)
        self.networks.sweep(name)
        return len(strays) + len(forwarders)

    def _destroy(self, handle: LocalTask) -> None:
        self._kill_everything_now(handle)
        forwarder = handle.forwarder()
        if forwarder is not None and handle.same_boot():
            self.networks.stop(forwarder)  # its socket file too, also when it died by itself
        self._collect_exit(handle)
        self._exits.pop(handle.key, None)
        cg = self._cgroups_of(handle)
        # Members that are not this task's belong to a newer task of the same name: leave them be.
        if not cg.pids():
            cg.remove()

    # ------------------------------------------------------------------ finding the task's processes

    def _cgroups_of(self, handle: LocalTask) -> TaskCgroups:
        return self.cgroups.task(handle.name)

    def _task_pids(self, handle: LocalTask) -> set[int]:
        """Live processes of the task (the leader included while it lives).

        While the leader lives, its process group, its descendants and its cgroups hold the task.
        Once it is gone, only processes that still carry its process group and started after it
        count: the kernel does not hand out the group's number again while any member is left, so
        a live process *owning* that pid with another start time means the group is extinct.
        """
        if not handle.same_boot():
            return set()
        cgroup_members = self._cgroups_of(handle).pids()
        if handle.leader_alive():
            pids = set(procfs.group_members(handle.pgid, not_before=handle.leader_start))
            pids |= {p for p in cgroup_members if procfs.is_alive(p)}
            todo = [handle.leader_pid]
            while todo:
                for child in procfs.children(todo.pop()):
                    if child not in pids and procfs.is_alive(child):
                        pids.add(child)
                        todo.append(child)
            return pids
        owner = procfs.stat(handle.pgid)
        if owner is not None and owner.start_time != handle.leader_start and owner.state not in ("Z", "X", "x"):
            return set()
        members = set(procfs.group_members(handle.pgid, not_before=handle.leader_start))
        if cgroup_members:
            # With cgroups, a straggler must also still sit in the task's groups.
            members &= cgroup_members
        return members

    def _sandbox_pids(self, handle: LocalTask) -> set[int]:
        """bwrap and the sandbox's init: they exit on their own once the server has."""
        if handle.pid == handle.leader_pid:
            return set()
        found = {handle.leader_pid}
        for pid in self._task_pids(handle):
            st = procfs.stat(pid)
            if st is not None and st.comm == "bwrap":
                found.add(pid)
        return found

    @staticmethod
    def _is_server(handle: LocalTask, pid: int) -> bool:
        st = procfs.stat(pid)
        return (
            st is not None
            and st.state not in ("Z", "X", "x")
            and st.pgid == handle.pgid
            and st.start_time >= handle.leader_start
        )

    @staticmethod
    def _server_below(leader: int) -> int | None:
        """The first process under `leader` that is not bwrap itself (the sandbox's init is)."""
        todo = [leader]
        while todo:
            pid = todo.pop(0)
            st = procfs.stat(pid)
            if st is None:
                continue
            if st.comm != "bwrap":
                return pid
            todo.extend(procfs.children(pid))
        return None
