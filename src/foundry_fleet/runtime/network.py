"""Each instance's own network namespace, with outbound NAT and exactly one way in.

bubblewrap gives the sandbox a network namespace of its own (`--unshare-net`): inside there is
only a loopback interface, so the instance sees none of the host's sockets (`ss`, /proc/net) and
can reach neither host loopback services (the fleet's web and auth port, Caddy) nor other
instances. slirp4netns, started by the runtime once the sandbox runs the server, adds a `tap0`
interface with user-mode NAT to the outside (Foundry fetches licences and packages from
foundryvtt.com) and, through its API socket, one port forward: 127.0.0.1:<instance port> on the
host to the same port inside. That host port is held by the forwarder, a process of the fleet, not
by tenant code: a tenant can listen on any port inside its own namespace without touching the
host's, so it can neither squat another instance's port nor answer in its place. The edge and the
health checks keep dialling 127.0.0.1:<port>.

The forwarder runs as root (it joins the namespace and opens a tap device there) and handles
traffic a tenant controls, so it runs with slirp4netns' own sandbox (an empty mount namespace, all
capabilities dropped but binding ports) and its seccomp filter, and with `--disable-host-loopback`
so 10.0.2.2 does not lead to the host's 127.0.0.1. What an instance dials, its forwarder dials from
the host: so forwarders start in a cgroup of the fleet's (`cgroup_procs`), whose new connections
to the host's own addresses and to link-local ones an iptables chain refuses (firewall.py,
`EgressFilter`; cgroups.py, `ForwarderCgroup`). It is detached like the task (own session, no
pipe back to the control plane), so it survives a control plane that dies; its API socket lives
under the fleet's run directory (root-only), never in tenant data.

Inside, the instance is 10.0.2.100 and resolves names through slirp4netns' DNS forwarder
(10.0.2.3), so the sandbox gets its own resolv.conf: the host's may name a loopback resolver the
namespace cannot reach.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.base import Capability

DNS_ADDRESS = "10.0.2.3"  # slirp4netns' DNS forwarder in its default 10.0.2.0/24
MTU = 65520  # loopback-like frames: far fewer packets through user-mode TCP than with 1500
READY_FD = 3  # the descriptor number slirp4netns writes "1" to once tap0 is configured
START_TIMEOUT = 10.0
LOG_CAP = 1 << 20  # bytes of slirp4netns output kept per start
# libslirp listens with a backlog of 1: of 64 connections opened at once (a world loading, the edge
# opening upstream connections in parallel) 15 then waited for a SYN retransmit, over 1 s each.
LISTEN_BACKLOG = 512
SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 alike (syscalls from 5.x on share one numbering)
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last one NUL


@dataclass(frozen=True)
class Forwarder:
    """One running slirp4netns, identified like a task's leader: pid and start time."""

    pid: int
    start: int
    api_socket: str

    def alive(self) -> bool:
        return procfs.is_alive(self.pid, self.start)


def _high_cloexec(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class PrivateNetworks:
    """Starts, finds and stops the forwarders of one fleet's instances."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.slirp = shutil.which("slirp4netns")
        self.unshare = shutil.which("unshare")
        self._probe: Capability | None = None
        # The cgroup.procs file of the group forwarders run in, for the egress filter (firewall.py);
        # None: they run where the fleet does, unfiltered.
        self.cgroup_procs: Path | None = None

    # ------------------------------------------------------------------ places

    def _ensure_dir(self) -> None:
        """The directory of the API sockets: ours alone, since a socket accepts anyone who reaches it."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(self.run_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ExternalFailure(f"{self.run_dir} is not a directory of this user's",
                                  "remove it; the fleet makes it again")
        os.chmod(self.run_dir, 0o700)

    def _stem(self, name: str) -> str:
        """The instance's name, or a digest of it when a socket path would not fit in sun_path."""
        if len(os.fsencode(self.run_dir / f"{name}.{'0' * 8}.sock")) > _SUN_PATH_MAX:
            return hashlib.sha256(name.encode()).hexdigest()[:12]
        return name

    def socket_prefix(self, name: str) -> str:
        """Every API socket of `name` starts so (instance names are DNS labels: no dots in them)."""
        return f"{self.run_dir / self._stem(name)}."

    def _new_api_socket(self, name: str) -> Path:
        """`<run>/<name>.<random>.sock`: one per forwarder, so removing a dead one's socket never
        removes that of a newer forwarder of the same instance."""
        return Path(f"{self.socket_prefix(name)}{os.urandom(4).hex()}.sock")

    def _log_path(self, name: str) -> Path:
        return self.run_dir / f"{self._stem(name)}.log"

    def resolv_conf(self) -> Path:
        path = self.run_dir / "resolv.conf"
        text = f"nameserver {DNS_ADDRESS}\n"
        if not path.is_file() or path.read_text() != text:
            self._ensure_dir()
            write_atomic(path, text, 0o644)
        return path

    # ------------------------------------------------------------------ start

    async def start(self, name: str, sandbox_pid: int, port: int, host_addr: str = "127.0.0.1") -> Forwarder:
        """Give the namespace of `sandbox_pid` outbound NAT and forward host_addr:port to it (another
        loopback address than 127.0.0.1 stands for another machine's address in multi-node tests)."""
        if self.slirp is None:
            raise ExternalFailure("slirp4netns is not installed", "apt install slirp4netns")
        self._ensure_dir()
        sock = self._new_api_socket(name)
        if len(os.fsencode(sock)) > _SUN_PATH_MAX:  # even with the name's digest: the root itself is too deep
            raise ExternalFailure(
                f"the forwarders' sockets under {self.run_dir} would be {len(os.fsencode(sock))} bytes long, and a "
                f"unix socket's path may have {_SUN_PATH_MAX}",
                f"give the fleet a root with a path at least {len(os.fsencode(sock)) - _SUN_PATH_MAX} bytes shorter")
        argv = [
            self.slirp, "--configure", f"--mtu={MTU}", "--disable-host-loopback",
            "--enable-sandbox", "--enable-seccomp",
            f"--api-socket={sock}", f"--ready-fd={READY_FD}", str(sandbox_pid), "tap0",
        ]
        executable = self.slirp
        if self.unshare is not None:
            # slirp4netns' sandbox makes a mount namespace whose "/" is private but not its submounts,
            # then detaches the old root: on a shared mount such as /run/netns that unmount reaches the
            # host, and Podman's network namespace mounts there were lost (seen here). Started from a
            # namespace of its own whose mounts are all slaves of the host's, nothing goes back.
            argv = [self.unshare, "--mount", "--propagation", "slave", "--", *argv]
            executable = self.unshare
        if self.cgroup_procs is not None:
            # The forwarder joins its group before slirp4netns exists: the shell writes its own pid
            # and only then execs it (same pid), and nothing runs if the write fails. A socket keeps
            # the cgroup of the process that created it, and the shell creates none (its descriptors
            # are /dev/null, the log file and the readiness pipe): so every socket slirp4netns opens,
            # its API socket, the host port and each outbound connection, is the group's.
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup_procs), *argv]
            executable = "/bin/sh"
        log = self._log_path(name)
        log_fd = _high_cloexec(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        ready_r, ready_w = (_high_cloexec(fd) for fd in os.pipe())
        try:
            pid = os.posix_spawn(
                executable, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                    (os.POSIX_SPAWN_DUP2, ready_w, READY_FD),
                ],
                setsid=True,  # detached: it must outlive the control plane, like the task
                setsigmask=(),
                setsigdef=(signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
            )
        except OSError as exc:
            os.close(ready_r)
            raise ExternalFailure(f"could not start slirp4netns for {name}: {exc}") from exc
        finally:
            os.close(log_fd)
            os.close(ready_w)
        forwarder = Forwarder(pid=pid, start=procfs.start_time(pid) or 0, api_socket=str(sock))
        try:
            # Its log is root's file, written on behalf of tenant traffic: capped. (The fleet's Python
            # ignores SIGXFSZ and exec keeps that, so past the cap writes fail and it carries on.)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (LOG_CAP, LOG_CAP))
        except (ProcessLookupError, PermissionError):
            pass  # already gone: the readiness wait below reports why
        try:
            try:
                ready = await _read_until_closed_or(ready_r, b"1", START_TIMEOUT)
            finally:
                os.close(ready_r)
            if not ready:
                raise self._failure(name, "its network did not come up")
            await self._add_port_forward(name, sock, port, host_addr)
            _widen_backlog(pid, port, host_addr)
        except BaseException:
            self.stop(forwarder)
            raise
        return forwarder

    async def _add_port_forward(self, name: str, sock: Path, port: int, host_addr: str) -> None:
        request = {"execute": "add_hostfwd",
                   "arguments": {"proto": "tcp", "host_addr": host_addr, "host_port": port, "guest_port": port}}
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(sock)), START_TIMEOUT)
            try:
                writer.write(json.dumps(request).encode())
                writer.write_eof()
                raw = await asyncio.wait_for(reader.read(), START_TIMEOUT)
            finally:
                writer.close()
        except (OSError, TimeoutError) as exc:
            raise self._failure(name, f"its API socket did not answer ({exc})") from exc
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"error": {"desc": raw.decode(errors="replace")}}
        if "return" not in answer:
            desc = answer.get("error", {}).get("desc", answer)
            raise ExternalFailure(
                f"instance {name} cannot take its port: forwarding {host_addr}:{port} failed ({desc})",
                f"is another program listening on {host_addr}:{port}? (ss -tlnp 'sport = :{port}')",
            )

    def _failure(self, name: str, what: str) -> ExternalFailure:
        try:
            lines = self._log_path(name).read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            lines = []
        detail = " | ".join(lines) if lines else "nothing in its log"
        return ExternalFailure(f"the network forwarder (slirp4netns) of {name} failed: {what}; {detail}",
                               f"see {self._log_path(name)}")

    # ------------------------------------------------------------------ stop and find

    def stop(self, forwarder: Forwarder) -> None:
        """SIGKILL it (it holds no state worth a goodbye), reap it if it is ours, drop its socket."""
        if forwarder.alive():
            try:
                os.kill(forwarder.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 2
        while forwarder.alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        _reap(forwarder)
        if forwarder.api_socket:
            Path(forwarder.api_socket).unlink(missing_ok=True)

    def sweep(self, name: str) -> None:
        """Remove API sockets of `name` that no forwarder serves (left by a reboot, say)."""
        served = {f.api_socket for f in self.running(name)}
        prefix = os.path.basename(self.socket_prefix(name))
        try:
            entries = os.listdir(self.run_dir)
        except FileNotFoundError:
            return
        for entry in entries:
            path = str(self.run_dir / entry)
            if entry.startswith(prefix) and entry.endswith(".sock") and path not in served:
                Path(path).unlink(missing_ok=True)

    def running(self, name: str) -> list[Forwarder]:
        """Live forwarders of `name`, found by their API socket argument (for strays no handle knows)."""
        flag = f"--api-socket={self.socket_prefix(name)}"
        found = []
        for pid in procfs.all_pids():
            sockets = [a.split("=", 1)[1] for a in procfs.cmdline(pid) if a.startswith(flag)]
            st = procfs.stat(pid)
            if sockets and st is not None and procfs.is_alive(pid, st.start_time):
                found.append(Forwarder(pid, st.start_time, sockets[0]))
        return found

    # ------------------------------------------------------------------ capability

    def capability(self, bwrap: str | None) -> Capability:
        """Try it for real once: a namespace, a forwarder, a port forward."""
        if self._probe is None:
            self._probe = self._check(bwrap)
        return self._probe

    def _check(self, bwrap: str | None) -> Capability:
        unavailable = "instances share the host's network: they see its sockets, reach its loopback " \
                      "services and each other, and one could listen on another's port while it is stopped"
        if os.geteuid() != 0:
            return Capability("network", False, f"not root (slirp4netns joins each sandbox as root): {unavailable}")
        if bwrap is None:
            return Capability("network", False, f"no sandbox: {unavailable}")
        if self.slirp is None:
            return Capability("network", False, f"slirp4netns is not installed (apt install slirp4netns): {unavailable}")
        # fingerprint() may be called from a running event loop (the daemon's start-up): the probe
        # gets a loop of its own in a worker thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            problem = pool.submit(asyncio.run, self._try(bwrap)).result()
        if problem:
            return Capability("network", False, f"slirp4netns fails here ({problem}): {unavailable}")
        return Capability(
            "network", True,
            "each instance has its own network namespace: outbound NAT through slirp4netns, reached "
            "only on 127.0.0.1:<its port> through a forwarder the fleet holds; host sockets, host "
            "loopback services and other instances are out of its reach",
        )

    async def _try(self, bwrap: str) -> str | None:
        info_r, info_w = os.pipe()
        try:
            box = subprocess.Popen(
                [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-net", "--die-with-parent",
                 "--info-fd", str(info_w), "--", "sleep", "30"],
                pass_fds=(info_w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, cwd="/",
            )
        except OSError as exc:
            os.close(info_r)
            os.close(info_w)
            return str(exc)
        os.close(info_w)
        forwarder = None
        try:
            with os.fdopen(info_r, "rb") as info:
                raw = info.read()
            try:
                child = int(json.loads(raw)["child-pid"])
            except (ValueError, KeyError):
                box.kill()
                return f"bwrap --unshare-net: {box.communicate()[1].decode(errors='replace').strip()}"
            # As for an instance: not before bwrap is done setting up the namespace (it execs then).
            deadline = time.monotonic() + START_TIMEOUT
            while procfs.cmdline(child)[:1] != ["sleep"]:
                if box.poll() is not None or time.monotonic() > deadline:
                    return "the probe's sandbox did not start"
                await asyncio.sleep(0.002)
            with socket.socket() as s:  # a port that was free a moment ago
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            forwarder = await self.start(f"probe-{os.getpid()}", child, port)
            self._log_path(f"probe-{os.getpid()}").unlink(missing_ok=True)
            return None
        except ExternalFailure as exc:
            return exc.message
        finally:
            if forwarder is not None:
                self.stop(forwarder)
            box.kill()
            box.wait()
            if box.stderr:
                box.stderr.close()


def _widen_backlog(pid: int, port: int, host_addr: str = "127.0.0.1") -> None:
    """Give the forwarder's listening socket on host_addr:port a real backlog.

    listen() on a socket that already listens only changes its backlog, and a socket is the same
    socket in every process holding it: so the fleet takes a copy of the forwarder's descriptor
    (pidfd_getfd, root may) and calls listen() on that.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for entry in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(entry), 0)
            if fd < 0:
                err = ctypes.get_errno()
                if err == errno.EBADF:
                    continue  # closed since the listing (slirp4netns closes its set-up sockets): not the one
                raise ExternalFailure(f"cannot reach the forwarder's socket (pidfd_getfd: {os.strerror(err)})")
            with socket.socket(fileno=fd) as copy:
                listening = copy.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                if copy.family == socket.AF_INET and listening and copy.getsockname() == (host_addr, port):
                    copy.listen(LISTEN_BACKLOG)
                    return
    finally:
        os.close(pidfd)
    raise ExternalFailure(f"the forwarder does not listen on {host_addr}:{port}")


def _reap(forwarder: Forwarder) -> None:
    """Collect the exit of a forwarder this process spawned; others (and reused pids) are not ours."""
    st = procfs.stat(forwarder.pid)
    if st is None or st.start_time != forwarder.start or st.ppid != os.getpid():
        return
    try:
        os.waitpid(forwarder.pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _read_until_closed_or(fd: int, wanted: bytes, timeout: float) -> bool:
    """Read `fd` until `wanted` appears (True) or the writer closes it or time runs out (False)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    seen = b""
    deadline = loop.time() + timeout
    while wanted not in seen:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _settle, readable)
        try:
            await asyncio.wait_for(readable, max(deadline - loop.time(), 0))
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 64)
        except BlockingIOError:
            continue
        if not chunk:
            return False
        seen += chunk
    return True
