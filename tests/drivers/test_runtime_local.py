"""The local runtime against real processes: node, bubblewrap, cgroups v1, iptables, network namespaces.

Every test starts real node servers from a tiny inline script and cleans up every process, cgroup
and iptables rule it made. Directories live under a 0755 temporary root (pytest's own tmp_path is
0700, which an instance running as another uid could not enter).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput
from foundry_fleet.runtime import logs, procfs
from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, TaskExit, TaskHandle, TaskSpec
from foundry_fleet.runtime.local import LocalRuntime
from foundry_fleet.runtime.local_task import LocalTask
from tests.support.cgroups import describe, remove_groups
from tests.support.foundry_standin import free_port
from tests.support.harness import wait_until, wait_until_async
from tests.support.ports import port_block, port_is_free

IS_ROOT = os.geteuid() == 0
NODE = shutil.which("node")
TENANT_UID = 200123
SRC = str(Path(__file__).resolve().parents[2] / "src")

needs_node = pytest.mark.skipif(NODE is None, reason="needs node on PATH")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (uids, cgroups, iptables)")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (apt bubblewrap)")
needs_cgroup_v1_memory = pytest.mark.skipif(
    not os.access("/sys/fs/cgroup/memory/cgroup.procs", os.W_OK), reason="needs a writable cgroup v1 memory controller"
)
needs_cgroup_v1_pids = pytest.mark.skipif(
    not os.access("/sys/fs/cgroup/pids/cgroup.procs", os.W_OK), reason="needs a writable cgroup v1 pids controller"
)
needs_netns = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 for a network namespace")

pytestmark = [needs_node, pytest.mark.timeout(120)]

SERVER_JS = textwrap.dedent(
    r"""
    const http = require('http');
    const fs = require('fs');
    const cp = require('child_process');
    const arg = (name) => { const a = process.argv.find(x => x.startsWith('--' + name + '=')); return a && a.slice(name.length + 3); };
    const port = parseInt(arg('port'));
    if (process.env.IGNORE_TERM) process.on('SIGTERM', () => console.log('ignoring SIGTERM'));
    fs.readFileSync('/proc/self/stat');
    fs.readFile('/proc/self/stat', () => {});  // start libuv's thread pool before any limit bites
    const kept = [];
    const routes = {
      '/': (q, done) => done({pid: process.pid, uid: process.getuid(), gid: process.getgid(), cwd: process.cwd(), home: process.env.HOME, env: Object.keys(process.env).sort()}),
      '/read': (q, done) => { try { done({ok: true, text: fs.readFileSync(q.get('path'), 'utf8')}); } catch (e) { done({ok: false, code: e.code}); } },
      '/write': (q, done) => { try { fs.writeFileSync(q.get('path'), 'x'); done({ok: true}); } catch (e) { done({ok: false, code: e.code}); } },
      '/exists': (q, done) => done({exists: fs.existsSync(q.get('path'))}),
      '/log': (q, done) => { for (let i = 0; i < parseInt(q.get('n')); i++) console.log(q.get('text') + ' ' + i); done({ok: true}); },
      '/exit': (q, done) => { done({ok: true}); setTimeout(() => process.exit(parseInt(q.get('code'))), 20); },
      '/burn': (q, done) => { const end = Date.now() + parseInt(q.get('ms')); while (Date.now() < end) {} done({ok: true}); },
      '/alloc': (q, done) => { done({ok: true}); setInterval(() => { const b = Buffer.alloc(8 * 1024 * 1024); b.fill(1); kept.push(b); }, 5); },
      '/spawn': (q, done) => {
        const n = parseInt(q.get('n')); let ok = 0, failed = 0, settled = 0; const kids = [];
        const settle = () => { if (++settled === n) { kids.forEach(k => { try { k.kill('SIGKILL'); } catch (e) {} }); done({ok, failed}); } };
        for (let i = 0; i < n; i++) {
          try {
            const k = cp.spawn('/bin/sleep', ['30'], {stdio: 'ignore'});
            kids.push(k);
            k.on('spawn', () => { ok++; settle(); });
            k.on('error', () => { failed++; settle(); });
          } catch (e) { failed++; settle(); }
        }
      },
    };
    http.createServer((req, res) => {
      const url = new URL(req.url, 'http://x');
      const route = routes[url.pathname];
      if (!route) { res.statusCode = 404; return res.end('{}'); }
      route(url.searchParams, (body) => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify(body)); });
    }).listen(port, '0.0.0.0', () => console.log('listening on ' + port));
    """
)


def get(port: int, path: str = "/", timeout: float = 5.0) -> dict:
    """GET a JSON answer from the server, waiting until it listens (or `timeout`)."""

    def answer() -> tuple[dict] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                return (json.loads(r.read()),)
        except (urllib.error.URLError, ConnectionError):
            return None  # not listening yet

    return wait_until(answer, timeout, f"an answer to GET {path} on port {port}", interval=0.02)[0]


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def follower_at_end(log: Path) -> bool:
    """Does this process hold `log` open with its offset at the file's end (a follower waiting)?"""
    size = log.stat().st_size
    for fd in Path("/proc/self/fd").iterdir():
        if _link(fd) == str(log):
            try:
                info = Path(f"/proc/self/fdinfo/{fd.name}").read_text()
            except OSError:
                continue  # closed meanwhile
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            if int(fields["pos"]) == size:
                return True
    return False


def pidfds() -> int:
    """How many pidfds this process holds: wait_task holds one per process it watches."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        if _link(fd) == "anon_inode:[pidfd]":
            count += 1
    return count


async def watching(waiter: asyncio.Task, handle: TaskHandle, before: int) -> None:
    """Return once `waiter` (a wait_task) has taken a pidfd on each process of the task, so it sees
    whatever happens next; it must still be waiting then."""
    task = LocalTask.of(handle)
    expected = 1 + (task.pid != task.leader_pid) + (task.net_pid is not None)
    await wait_until_async(lambda: waiter.done() or pidfds() >= before + expected, 5,
                           f"wait_task to watch the {expected} processes of {handle.name}", interval=0.01)
    assert not waiter.done(), waiter.result()


class World:
    """A 0755 tree holding the release, shared assets and tenants' data dirs, plus started tasks."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ff-runtime-", dir="/tmp"))
        self.root.chmod(0o755)
        self.install = self.root / "install"
        self.install.mkdir()
        (self.install / "server.js").write_text(SERVER_JS)
        self.shared = self.root / "shared"
        self.shared.mkdir()
        (self.shared / "map.txt").write_text("shared map")
        self.tag = f"{os.getpid()}-{id(self) % 10000}"
        self.run_dir = self.root / "run"  # the forwarders' API sockets, as under a fleet's run/
        self.runtime = LocalRuntime(cgroup_parent=f"ff-test-{self.tag}", firewall_chain=f"FFT-{os.getpid()}",
                                    run_dir=self.run_dir, node=node_for)
        self.handles: list[TaskHandle] = []

    def spec(self, name: str, uid: int | None = TENANT_UID, **fields) -> TaskSpec:
        data = self.root / "tenants" / name / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data.parent).chmod(0o755)
        (self.root / "tenants").chmod(0o755)
        if uid is not None and IS_ROOT:
            os.chown(data, uid, uid)
        port = fields.pop("port", None) or free_port()
        return TaskSpec(
            name=name,
            release=ReleaseToRun(version="test", generation=13, install_dir=self.install, entry="server.js"),
            data_dir=data,
            shared_dir=self.shared,
            log_dir=self.root / "tenants" / name / "logs",
            port=port,
            uid=uid if IS_ROOT else None,
            gid=uid if IS_ROOT else None,
            **fields,
        )

    def start(self, spec: TaskSpec) -> TaskHandle:
        handle = asyncio.run(self.runtime.start_task(spec))
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        try:
            for handle in self.handles:
                run(self.runtime.destroy_task(handle))
            self.runtime.unprotect_ports()  # also the egress filter and the forwarders' group
            # Every group under the parent, in every hierarchy: a test that ended a task by other
            # means than destroy_task (kill_strays, a failed start) leaves the task's groups behind.
            left = remove_groups(self.runtime.cgroups.parent)
            assert not left, f"cgroups still hold processes after the test: {describe(left)}"
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.close()


def run(coro):
    return asyncio.run(coro)


def node_for(generation: int) -> str:
    return NODE or "node"


def lt(handle: TaskHandle) -> LocalTask:
    """The local driver's own view of a handle: which processes make up the task."""
    return LocalTask.of(handle)


def running(runtime: LocalRuntime, handle: TaskHandle) -> bool:
    return run(runtime.inspect_task(handle)).running


def gone(handle: TaskHandle) -> bool:
    return not procfs.is_alive(lt(handle).pid) and not procfs.group_members(lt(handle).pgid, lt(handle).leader_start)


# ----------------------------------------------------------------------------- start, identity


@needs_root
@needs_bwrap
def test_start_runs_node_as_the_tenant_uid_in_the_sandbox(world: World) -> None:
    spec = world.spec("alpha")
    handle = world.start(spec)
    answer = get(spec.port)
    # The handle's pid is node itself, seen from the host; the leader is bwrap.
    words = procfs.cmdline(lt(handle).pid)
    assert words[0] == NODE and words[1].endswith("server.js"), words
    assert os.path.basename(procfs.cmdline(lt(handle).leader_pid)[0]) == "bwrap"
    assert lt(handle).pid != lt(handle).leader_pid and lt(handle).pgid == lt(handle).leader_pid
    assert procfs.stat(lt(handle).pid).pgid == lt(handle).pgid
    # In its own pid namespace node is not pid 1 (bwrap's init is), and it runs as the tenant.
    assert answer["pid"] == 2
    assert (answer["uid"], answer["gid"]) == (TENANT_UID, TENANT_UID)
    assert procfs.status_ids(lt(handle).pid) == (TENANT_UID, TENANT_UID)
    assert answer["cwd"] == str(spec.data_dir) and answer["home"] == str(spec.data_dir)
    # Nothing of the control plane's environment leaks in.
    assert set(answer["env"]) <= {"PATH", "LANG", "HOME", "PWD"}
    # Detached: own session, no terminal, stdin is /dev/null, output goes to a pipe whose other end
    # only the log writer holds (not this process: the control plane holds neither end).
    st = procfs.stat(lt(handle).leader_pid)
    assert st.session == lt(handle).leader_pid
    assert os.readlink(f"/proc/{lt(handle).pid}/fd/0") == "/dev/null"
    pipe = os.readlink(f"/proc/{lt(handle).pid}/fd/1")
    assert pipe.startswith("pipe:") and os.readlink(f"/proc/{lt(handle).pid}/fd/2") == pipe
    holders = {int(fd.parts[2]) for fd in Path("/proc").glob("[0-9]*/fd/*") if _link(fd) == pipe}
    writers = {pid for pid in holders if str(spec.log_dir / "foundry.log") in procfs.cmdline(pid)}
    assert len(writers) == 1 and os.getpid() not in holders
    assert procfs.stat(next(iter(writers))).session != st.session
    wait_until(lambda: "listening on" in (spec.log_dir / "foundry.log").read_text(), 5, "the server's first line in its log")
    assert running(world.runtime, handle)
    stats = run(world.runtime.task_stats(handle))
    assert stats is not None and stats.memory_bytes > 4 * 1024 * 1024  # charged to its group: not libraries read in first elsewhere


@needs_root
@needs_bwrap
def test_shared_assets_read_only_and_other_tenants_invisible(world: World) -> None:
    other = world.spec("other-tenant")
    (other.data_dir / "secret.txt").write_text("not yours")
    spec = world.spec("beta")
    world.start(spec)
    shared_in = spec.data_dir / "Data" / "shared"
    assert get(spec.port, f"/read?path={shared_in}/map.txt") == {"ok": True, "text": "shared map"}
    assert get(spec.port, f"/write?path={shared_in}/map.txt") == {"ok": False, "code": "EROFS"}
    assert get(spec.port, f"/write?path={shared_in}/new.txt") == {"ok": False, "code": "EROFS"}
    assert (world.shared / "map.txt").read_text() == "shared map"
    assert not (world.shared / "new.txt").exists()
    # Its own data is writable; the release is not.
    assert get(spec.port, f"/write?path={spec.data_dir}/Data/world.db") == {"ok": True}
    assert get(spec.port, f"/write?path={world.install}/server.js")["code"] == "EROFS"
    # Another tenant's directory, the shared tree's host path and the host's private dirs don't exist.
    for hidden in (other.data_dir / "secret.txt", other.data_dir, world.shared, "/root", "/var/lib", "/home"):
        assert get(spec.port, f"/exists?path={hidden}") == {"exists": False}, hidden
    assert get(spec.port, f"/read?path={other.data_dir}/secret.txt")["ok"] is False


@needs_root
@needs_bwrap
def test_start_failure_reports_the_log(world: World) -> None:
    spec = world.spec("broken")
    world.runtime.node = lambda generation: "/usr/bin/node-does-not-exist"
    with pytest.raises(ExternalFailure) as info:
        run(world.runtime.start_task(spec))
    assert "did not start" in info.value.message and "node-does-not-exist" in info.value.message
    assert not world.runtime.cgroups.task("broken").exists()


# ----------------------------------------------------------------------------- stop and wait


@needs_root
def test_stop_kills_a_server_that_ignores_sigterm_after_the_timeout(world: World) -> None:
    spec = world.spec("stubborn", env={"IGNORE_TERM": "1"})
    handle = world.start(spec)
    get(spec.port)

    async def scenario():
        waiter = asyncio.create_task(world.runtime.wait_task(handle))
        began = time.monotonic()
        await world.runtime.stop_task(handle, timeout=1.0)
        took = time.monotonic() - began
        return took, await asyncio.wait_for(waiter, 5)

    took, exit_ = run(scenario())
    # SIGTERM had its full timeout before SIGKILL (a lower bound, which no load can break; how soon
    # after the timeout the stop returns is measured in bench/runtime_local_timings.py).
    assert took >= 1.0
    assert exit_.signal == signal.SIGKILL and exit_.exit_code is None
    assert "ignoring SIGTERM" in (spec.log_dir / "foundry.log").read_text()
    assert gone(handle) and port_is_free(spec.port)
    assert not running(world.runtime, handle)


@needs_root
def test_stop_lets_a_cooperative_server_exit_on_sigterm(world: World) -> None:
    spec = world.spec("polite")
    handle = world.start(spec)
    get(spec.port)

    async def scenario():
        await world.runtime.stop_task(handle, timeout=10.0)
        return await world.runtime.wait_task(handle)

    # SIGTERM alone ended it (had the 10 s timeout run out, SIGKILL would have); how long the stop
    # takes is measured in bench/runtime_local_timings.py.
    exit_ = run(scenario())
    assert exit_.signal == signal.SIGTERM
    assert gone(handle) and port_is_free(spec.port)


@needs_root
def test_wait_returns_the_exit_code_when_the_server_exits_by_itself(world: World) -> None:
    spec = world.spec("quitter")
    handle = world.start(spec)
    get(spec.port)

    async def scenario():
        before = pidfds()
        waiter = asyncio.create_task(world.runtime.wait_task(handle))
        await watching(waiter, handle, before)
        await asyncio.to_thread(get, spec.port, "/exit?code=7")
        return await asyncio.wait_for(waiter, 5)

    exit_ = run(scenario())
    assert exit_.exit_code == 7 and exit_.signal is None and not exit_.oom_killed
    assert gone(handle)


async def kill_while_waiting(world: World, handle: TaskHandle, pid: int) -> TaskExit:
    """SIGKILL `pid` while wait_task watches the task; what wait_task said."""
    before = pidfds()
    waiter = asyncio.create_task(world.runtime.wait_task(handle))
    await watching(waiter, handle, before)
    os.kill(pid, signal.SIGKILL)
    return await asyncio.wait_for(waiter, 5)


@needs_root
def test_kill_9_of_the_node_pid_ends_wait(world: World) -> None:
    spec = world.spec("victim")
    handle = world.start(spec)
    get(spec.port)

    # How soon wait_task returns after the kill is measured in bench/runtime_local_timings.py.
    exit_ = run(kill_while_waiting(world, handle, lt(handle).pid))
    assert exit_.signal == signal.SIGKILL
    assert gone(handle) and port_is_free(spec.port)


@needs_root
@needs_bwrap
def test_killing_bwrap_alone_does_not_leave_node_holding_the_port(world: World) -> None:
    spec = world.spec("orphan")
    handle = world.start(spec)
    get(spec.port)

    exit_ = run(kill_while_waiting(world, handle, lt(handle).leader_pid))
    assert exit_.signal == signal.SIGKILL
    assert gone(handle)
    wait_until(lambda: port_is_free(spec.port), 5, "the port to be free")


# ----------------------------------------------------------------------------- control plane restart

CONTROL_PLANE = textwrap.dedent(
    """
    import asyncio, json, sys
    from foundry_fleet.runtime.base import ReleaseToRun, TaskSpec
    from foundry_fleet.runtime.local import LocalRuntime
    from pathlib import Path
    spec = json.loads(sys.argv[1])
    for key in ("data_dir", "shared_dir", "log_dir"):
        spec[key] = Path(spec[key])
    spec["release"] = ReleaseToRun(**{**spec["release"], "install_dir": Path(spec["release"]["install_dir"])})
    runtime = LocalRuntime(cgroup_parent=sys.argv[2], run_dir=Path(sys.argv[3]), firewall_chain=sys.argv[4],
                           node=lambda generation: sys.argv[5])
    handle = asyncio.run(runtime.start_task(TaskSpec(**spec)))
    print(json.dumps(handle.to_dict()), flush=True)
    import time
    time.sleep(3600)
    """
)


def start_from_another_control_plane(world: World, spec: TaskSpec) -> tuple[subprocess.Popen, TaskHandle]:
    fields = {
        "name": spec.name, "release": {**asdict(spec.release), "install_dir": str(spec.install_dir)},
        "data_dir": str(spec.data_dir), "shared_dir": str(spec.shared_dir), "log_dir": str(spec.log_dir),
        "port": spec.port, "uid": spec.uid, "gid": spec.gid,
    }
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", CONTROL_PLANE, json.dumps(fields), world.runtime.cgroups.parent, str(world.run_dir),
         world.runtime.firewall.chain, node_for(13)],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    line = proc.stdout.readline()
    assert line, "the other control plane printed no handle"
    handle = TaskHandle.from_dict(json.loads(line))
    world.handles.append(handle)
    return proc, handle


@needs_root
def test_recover_after_the_control_plane_is_sigkilled(world: World) -> None:
    spec = world.spec("survivor")
    proc, handle = start_from_another_control_plane(world, spec)
    first = get(spec.port)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    # Deliberately let time pass: a task tied to its control plane (a parent-death signal, a hang-up
    # of its session) would be dying now; give it that moment, so the next checks see the outcome.
    time.sleep(0.2)
    # The task outlived its control plane and still serves, and its output still reaches its log.
    assert get(spec.port) == first
    get(spec.port, "/log?n=1&text=orphaned")
    wait_until(lambda: "orphaned 0" in (spec.log_dir / "foundry.log").read_text(), 5, "the orphan's line in its log")
    recovered = run(world.runtime.recover_task(handle))
    assert recovered == handle and lt(handle).boot_id == procfs.boot_id()
    assert running(world.runtime, recovered)

    async def scenario():
        before = pidfds()
        waiter = asyncio.create_task(world.runtime.wait_task(recovered))
        await watching(waiter, recovered, before)
        os.kill(lt(recovered).pid, signal.SIGKILL)
        return await asyncio.wait_for(waiter, 5)

    exit_ = run(scenario())
    # Not our child: the exit status belongs to whoever reaps it.
    assert exit_.exit_code is None
    assert gone(recovered) and port_is_free(spec.port)
    assert run(world.runtime.recover_task(handle)) is None


@needs_root
@needs_bwrap
def test_recover_kills_a_node_left_behind_by_a_dead_leader(world: World) -> None:
    spec = world.spec("leftover")
    proc, handle = start_from_another_control_plane(world, spec)
    get(spec.port)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    os.kill(lt(handle).leader_pid, signal.SIGKILL)
    wait_until(lambda: not procfs.is_alive(lt(handle).leader_pid, lt(handle).leader_start), 5, "bwrap to die")
    assert procfs.is_alive(lt(handle).pid)  # node lives on without its bwrap
    assert run(world.runtime.recover_task(handle)) is None
    assert gone(handle)
    wait_until(lambda: port_is_free(spec.port), 5, "the port to be free")


def forwarder_pids(world: World, name: str) -> list[int]:
    return [forwarder.pid for forwarder in world.runtime.networks.running(name)]


@needs_root
@needs_bwrap
def test_kill_strays_also_stops_a_forwarder_no_handle_knows(world: World) -> None:
    # The control plane died between spawning the task and recording its handle: the next one finds
    # the server by its data path and the forwarder, which holds the port, by its API socket.
    spec = world.spec("unrecorded")
    proc, handle = start_from_another_control_plane(world, spec)
    world.handles.remove(handle)
    get(spec.port)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert forwarder_pids(world, "unrecorded") == [lt(handle).net_pid]
    stale = world.run_dir / "unrecorded.0badf00d.sock"  # as a forwarder before a reboot left it
    stale.touch()
    assert world.runtime.kill_strays("unrecorded", spec.data_dir) >= 2
    assert not stale.exists()
    assert forwarder_pids(world, "unrecorded") == [] and not procfs.is_alive(lt(handle).pid)
    wait_until(lambda: port_is_free(spec.port), 5, "the port to be free")
    assert not Path(lt(handle).net_socket or "").exists()


@needs_root
@needs_bwrap
def test_a_task_whose_forwarder_died_while_the_control_plane_was_down_is_not_reattached(world: World) -> None:
    # Re-attaching would leave an instance nobody can reach: it is ended, so it can start afresh.
    spec = world.spec("cutoff")
    proc, handle = start_from_another_control_plane(world, spec)
    get(spec.port)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    os.kill(lt(handle).net_pid, signal.SIGKILL)
    wait_until(lambda: not procfs.is_alive(lt(handle).net_pid, lt(handle).net_start), 5, "the forwarder to die")
    assert not running(world.runtime, handle)
    assert run(world.runtime.recover_task(handle)) is None
    assert gone(handle)
    wait_until(lambda: port_is_free(spec.port), 5, "the port to be free")


@needs_root
@needs_bwrap
def test_a_port_held_on_the_host_fails_the_start_and_names_it(world: World) -> None:
    spec = world.spec("blocked")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", spec.port))
        holder.listen(1)
        with pytest.raises(ExternalFailure) as info:
            run(world.runtime.start_task(spec))
    assert f"127.0.0.1:{spec.port}" in info.value.message and "cannot take its port" in info.value.message
    assert forwarder_pids(world, "blocked") == [] and not world.runtime.cgroups.task("blocked").exists()
    assert not [p for p in procfs.all_pids() if f"--port={spec.port}" in procfs.cmdline(p)]


def test_a_handle_recorded_before_network_namespaces_loads(world: World) -> None:
    me = procfs.stat(os.getpid())
    old = {"name": "old", "pid": os.getpid(), "leader_pid": os.getpid(), "leader_start": me.start_time,
           "pgid": me.pgid, "started_at": 1.0, "driver": "local", "boot_id": procfs.boot_id()}
    handle = TaskHandle.from_dict(old)
    assert (lt(handle).net_pid, lt(handle).net_start, lt(handle).net_socket) == (None, None, None)
    # A task on the host network has no forwarder to lose: it is alive as long as its leader is.
    assert running(world.runtime, handle)
    assert TaskHandle.from_dict({**handle.to_dict(), "from_a_newer_version": 1}) == handle


def test_recover_of_a_reused_pid_is_none(world: World) -> None:
    me = procfs.stat(os.getpid())
    dead = subprocess.Popen(["true"])
    dead.wait()
    fake = LocalTask(name="ghost", pid=os.getpid(), leader_pid=os.getpid(), leader_start=me.start_time + 1,
                     pgid=dead.pid, started_at=0.0).handle()
    assert not running(world.runtime, fake)
    # A dead leader: recover kills only what started after it, so this test process must survive.
    assert run(world.runtime.recover_task(fake)) is None
    assert procfs.is_alive(os.getpid())


def test_a_handle_from_before_a_reboot_matches_nothing(world: World) -> None:
    # After a reboot the same pid and start time can come back (boots are repetitive): the boot id
    # tells them apart, so this live process is neither recovered nor killed.
    me = procfs.stat(os.getpid())
    before = LocalTask(name="ghost", pid=os.getpid(), leader_pid=os.getpid(), leader_start=me.start_time,
                       pgid=me.pgid, started_at=0.0, boot_id="00000000-0000-0000-0000-000000000000")
    old = before.handle()
    assert run(world.runtime.recover_task(old)) is None
    assert not running(world.runtime, old)
    assert run(world.runtime.task_stats(old)) is None
    assert run(world.runtime.wait_task(old)).exit_code is None
    assert procfs.is_alive(os.getpid())
    same_boot = replace(before, boot_id=procfs.boot_id()).handle()
    assert running(world.runtime, same_boot)


# ----------------------------------------------------------------------------- limits


@needs_root
@needs_cgroup_v1_memory
def test_memory_limit_oom_kills_and_is_reported(world: World) -> None:
    spec = world.spec("hungry", limits=ResourceLimits(memory_mb=64))
    handle = world.start(spec)
    group = world.runtime.cgroups.task("hungry").dirs["memory"]
    assert (group / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
    assert lt(handle).pid in world.runtime.cgroups.task("hungry").pids()
    get(spec.port)  # it runs fine under the limit until it allocates

    async def scenario():
        waiter = asyncio.create_task(world.runtime.wait_task(handle))
        await asyncio.to_thread(get, spec.port, "/alloc")
        return await asyncio.wait_for(waiter, 20)

    exit_ = run(scenario())
    assert exit_.oom_killed and exit_.describe() == "killed: out of memory"
    assert gone(handle)


@needs_root
@needs_cgroup_v1_pids
def test_pids_limit_stops_fork_bombs(world: World) -> None:
    spec = world.spec("forky", limits=ResourceLimits(pids=24, cpu_percent=50))
    world.start(spec)
    cg = world.runtime.cgroups.task("forky")
    assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "24"
    assert (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    get(spec.port)
    result = get(spec.port, "/spawn?n=40", timeout=20)
    assert result["failed"] > 0 and 0 < result["ok"] < 40, result
    assert get(spec.port)["uid"] == TENANT_UID  # the server itself survives hitting the limit


@needs_root
@needs_cgroup_v1_memory
def test_stats_come_from_the_tasks_cgroups_and_cpu_rises_as_it_works(world: World) -> None:
    spec = world.spec("busy", limits=ResourceLimits(memory_mb=256))
    handle = world.start(spec)
    get(spec.port)
    cg = world.runtime.cgroups.task("busy")
    before = run(world.runtime.task_stats(handle))
    assert before is not None and before.cpu_percent is None and before.cpu_seconds is not None
    # What counts against the limit is the group's usage (page cache included), not the processes' RSS.
    in_group = cg.memory_bytes()
    assert in_group is not None and abs(before.memory_bytes - in_group) < 16 * 1024 * 1024
    assert before.memory_bytes > 4 * 1024 * 1024 and before.memory_limit_bytes == 256 * 1024 * 1024
    get(spec.port, "/burn?ms=600", timeout=10)
    after = run(world.runtime.task_stats(handle))
    assert after is not None and after.cpu_seconds is not None
    assert after.cpu_seconds - before.cpu_seconds >= 0.4, (before, after)
    # Where cpuacct shares the cpu mount the group keeps the total; here it may not, and the members' counts stand in.
    assert (cg.cpu_seconds() is None) == (not (cg.dirs["cpu"] / "cpuacct.usage").exists())
    run(world.runtime.stop_task(handle, timeout=5))
    assert run(world.runtime.task_stats(handle)) is None


@needs_root
def test_destroy_removes_the_cgroups(world: World) -> None:
    spec = world.spec("short", limits=ResourceLimits(memory_mb=256, pids=64, cpu_percent=100))
    handle = world.start(spec)
    cg = world.runtime.cgroups.task("short")
    assert cg.exists() and lt(handle).pid in cg.pids()
    run(world.runtime.stop_task(handle, timeout=5))
    run(world.runtime.destroy_task(handle))
    assert not cg.exists()


# ----------------------------------------------------------------------------- logs


@needs_root
def test_the_log_writer_rotates_by_rename_and_the_server_keeps_writing(world: World) -> None:
    from foundry_fleet.runtime import logs

    spec = world.spec("chatty", log_max_bytes=500, log_keep=2)
    handle = world.start(spec)
    get(spec.port)
    log = spec.log_dir / "foundry.log"
    for round_ in range(4):
        before = log.stat().st_ino
        get(spec.port, f"/log?n=100&text=round{round_}")
        wait_until(lambda r=round_: logs.tail(log, 1) == [f"round{r} 99"], 5, f"round {round_}'s last line")
        # Renamed, not copied: the file the writer filled is now .1 (or older).
        assert before in {p.stat().st_ino for p in spec.log_dir.glob("foundry.log.*")}
    assert sorted(p.name for p in spec.log_dir.iterdir()) == ["foundry.log", "foundry.log.1", "foundry.log.2"]
    assert all(p.stat().st_size <= 500 for p in spec.log_dir.iterdir())
    text = "".join((spec.log_dir / n).read_text() for n in ("foundry.log.2", "foundry.log.1", "foundry.log"))
    # Whole lines in each file, in order, ending with the last round.
    assert "\0" not in text and text.splitlines()[-100:] == [f"round3 {i}" for i in range(100)]
    assert all(re.fullmatch(r"round[0-3] \d+", line) for line in text.splitlines())
    # The writer is no part of the task: stopping it leaves the writer to write the last lines, then go.
    writers = [pid for pid in procfs.all_pids() if str(log) in procfs.cmdline(pid)]
    assert len(writers) == 1 and writers[0] not in world.runtime._task_pids(lt(handle))
    # Signals meant for a terminal or a session do not end it: only the end of the task's output does.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        os.kill(writers[0], sig)
    get(spec.port, "/log?n=1&text=still")
    wait_until(lambda: logs.tail(log, 1) == ["still 0"], 5, "the line after the signals")
    run(world.runtime.stop_task(handle, timeout=5))
    wait_until(lambda: not procfs.is_alive(writers[0]), 5, "the log writer to end")


def test_the_writer_caps_a_flood_and_follow_keeps_up_across_rotation(tmp_path: Path) -> None:
    from foundry_fleet.runtime import logs

    log = tmp_path / "foundry.log"
    fd = logs.open_for_task(tmp_path, max_bytes=1000, keep=3, rate=2000, burst=5000)
    stop = threading.Event()
    seen: list[str] = []

    def reader():
        for line in logs.follow(log, from_start=True, poll_interval=0.01, stop=stop.is_set):
            seen.append(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    expected = []
    for n in range(50):  # 50 lines of 72 bytes: within the burst, three rotations
        line = f"line {n:03d} " + "x" * 62
        os.write(fd, (line + "\n").encode())
        expected.append(line)
        if n % 10 == 9:
            wait_until(lambda: len(seen) == len(expected), 5, f"the follower to read {len(expected)} lines")
    assert seen == expected
    assert logs.tail(log, 20) == expected[-20:]  # across the newest rotation
    # A flood: far beyond the rate, dropped, and said so once the rate allows again.
    os.write(fd, b"flood\n" * 20000)
    # Deliberately let time pass: the writer says what it dropped only once the bucket has refilled
    # to a second's worth (2000 bytes at 2000 bytes/s), and the next line arrives.
    time.sleep(1.6)
    os.write(fd, b"after the flood\n")
    os.close(fd)
    assert logs.wait_drained(tmp_path, 5)
    wait_until(lambda: seen[-1:] == ["after the flood"], 5, "the line after the flood")
    stop.set()
    thread.join(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foundry.log", "foundry.log.1", "foundry.log.2", "foundry.log.3"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    notes = [line for line in seen if line.startswith("[foundry-fleet]")]
    assert len(notes) == 1 and "of output dropped" in notes[0], notes
    # Most of the flood was dropped (how many bytes a second get through, against the bucket's rate,
    # is measured in bench/runtime_local_timings.py).
    flood = seen.count("flood")
    assert 0 < flood < 20000 // 2, flood


def test_a_server_writing_a_byte_at_a_time_wakes_the_writer_in_batches(tmp_path: Path) -> None:
    from foundry_fleet.runtime import logs

    fd = logs.open_for_task(tmp_path, max_bytes=10**6, keep=1)
    os.write(fd, b"start\n")
    wait_until(lambda: logs.tail(tmp_path / "foundry.log", 1) == ["start"], 5, "the first line")
    writer = logs._writers[tmp_path]

    def reads() -> int:
        io = dict(line.split(": ") for line in Path(f"/proc/{writer}/io").read_text().splitlines())
        return int(io["syscr"])

    before, began, sent = reads(), time.monotonic(), 0
    while time.monotonic() - began < 2:
        os.write(fd, b"x")  # a few hundred thousand one-byte writes
        sent += 1
    os.write(fd, b"\n")
    wait_until(lambda: logs.tail(tmp_path / "foundry.log", 1)[0].startswith("x"), 5, "the line of single bytes")
    woke = reads() - before
    os.close(fd)
    assert logs.wait_drained(tmp_path, 5)
    # Many writes a read, not one read a write (the reads a second are measured in
    # bench/runtime_local_timings.py).
    assert sent > 10 * woke, (woke, sent)


def test_follow_catches_lines_written_just_before_a_rotation(tmp_path: Path) -> None:
    from foundry_fleet.runtime import log_writer, logs

    log = tmp_path / "foundry.log"
    log.write_text("old\n")
    lines = logs.follow(log, from_start=True, poll_interval=0.01)
    assert next(lines) == "old"
    with open(log, "a") as f:
        f.write("first\n")
    assert next(lines) == "first"
    with open(log, "a") as f:
        f.write("second\nthird\n")
    # Rotated twice before the follower looked: the lines are in foundry.log.2 and .1 now.
    log_writer.shift(str(log), keep=3)
    log.write_text("fourth\n")
    log_writer.shift(str(log), keep=3)
    log.write_text("fifth\n")
    assert [next(lines) for _ in range(4)] == ["second", "third", "fourth", "fifth"]
    lines.close()
    assert logs.tail(log.with_name("foundry.log.2"), 10) == ["old", "first", "second", "third"]
    assert logs.tail(log, 3) == ["fourth", "fifth"]  # the current file and the newest rotated one


# ----------------------------------------------------------------------------- firewall


# The process holding each namespace veth_namespace made, by the namespace's name.
_HOLDERS: dict[str, subprocess.Popen] = {}


def enter(namespace: str) -> list[str]:
    """The command prefix that runs a program in `namespace`, through the process holding it rather
    than its name under /run/netns: on a shared machine another program's mount changes can take that
    name's mount away, and `ip netns exec` then fails (and a check that it cannot connect would pass)."""
    return ["nsenter", f"--net=/proc/{_HOLDERS[namespace].pid}/ns/net", "--"]


@contextlib.contextmanager
def veth_namespace(tag: str, host_ip: str, peer_ip: str, prefix: int = 30) -> Iterator[str]:
    """A network namespace joined to the host by a veth pair, host_ip on the host's end and peer_ip
    on the other (so it stands for another machine); removed again on leaving. Yields its name (also
    under /run/netns, for `ip -n`); `enter(name)` runs a program in it."""
    name = f"{tag}{os.getpid() % 100000}"
    host_if, peer_if = f"{tag}h{os.getpid() % 100000}", f"{tag}p{os.getpid() % 100000}"
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
    _HOLDERS[name] = holder
    try:
        ours = os.readlink("/proc/self/ns/net")
        wait_until(lambda: _link(Path(f"/proc/{holder.pid}/ns/net")) not in (ours, None), 5,
                   "the namespace's holder to leave the host's network namespace", interval=0.01)
        inside = enter(name)
        steps = [
            ["ip", "netns", "attach", name, str(holder.pid)],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", str(holder.pid)],
            ["ip", "addr", "add", f"{host_ip}/{prefix}", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            [*inside, "ip", "addr", "add", f"{peer_ip}/{prefix}", "dev", peer_if],
            [*inside, "ip", "link", "set", peer_if, "up"],
            [*inside, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        holder.kill()
        holder.wait()
        del _HOLDERS[name]


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    """A network namespace joined to the host by a veth pair: (namespace, host address)."""
    octet = 16 + os.getpid() % 200
    host_ip, peer_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    with veth_namespace("fft", host_ip, peer_ip) as name:
        yield name, host_ip


def connects_from(namespace: str, host: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1.5)"
    return subprocess.run([*enter(namespace), sys.executable, "-c", code],
                          capture_output=True).returncode == 0


@needs_root
@needs_netns
def test_firewall_keeps_other_machines_off_instance_ports(world: World, netns: tuple[str, str]) -> None:
    namespace, host_ip = netns
    fw = world.runtime.firewall
    listeners: list[socket.socket] = []
    try:
        # A block of this run's own: no outgoing connection holds it, nor another fleet's firewall.
        low = port_block()
        inside, outside = low + 3, low + 20
        for port in (inside, outside):
            s = socket.socket()
            listeners.append(s)
            s.bind(("0.0.0.0", port))
            s.listen(8)
        assert connects_from(namespace, host_ip, inside)  # open before
        cap = world.runtime.protect_ports(low, low + 9)
        assert cap.available, cap.detail
        again = world.runtime.protect_ports(low, low + 9)  # idempotent
        assert again.available
        rules = fw.rules()
        for family in ("IPv4", "IPv6"):
            drops = [r for r in rules[family] if r.endswith("-j DROP")]
            jumps = [r for r in rules[family] if r.startswith("-A INPUT")]
            assert len(drops) == 1 and f"--dport {low}:{low + 9}" in drops[0] and "! -i lo" in drops[0], rules
            assert len(jumps) == 1, rules
        assert not connects_from(namespace, host_ip, inside)
        assert connects_from(namespace, host_ip, outside)
        with socket.create_connection(("127.0.0.1", inside), timeout=2):
            pass  # the edge, on this host, still gets through
        # A new range replaces the old one.
        world.runtime.protect_ports(low + 10, low + 29)
        assert connects_from(namespace, host_ip, inside)
        assert not connects_from(namespace, host_ip, outside)
        world.runtime.unprotect_ports()
        assert fw.rules() == {"IPv4": [], "IPv6": []}
        assert connects_from(namespace, host_ip, outside)
    finally:
        fw.remove()
        for s in listeners:
            s.close()


def test_firewall_disabled_says_ports_are_reachable() -> None:
    runtime = LocalRuntime(firewall=False)
    cap = runtime.protect_ports(30000, 30999)
    assert not cap.available and "reachable from other machines" in cap.detail


# ----------------------------------------------------------------------------- fingerprint and procfs


def test_fingerprint_reports_every_capability(world: World) -> None:
    caps = {c.name: c for c in run(world.runtime.fingerprint())}
    assert set(caps) == {"sandbox", "users", "network", "seccomp", "cgroup-memory", "cgroup-cpu", "cgroup-pids", "firewall",
                         "pidfd"}
    assert all(c.detail for c in caps.values())
    if IS_ROOT and shutil.which("bwrap"):
        # On the hosts this project targets, everything is there.
        assert all(c.available for c in caps.values()), [c for c in caps.values() if not c.available]


@needs_root
@needs_bwrap
def test_without_slirp4netns_instances_share_the_host_network_and_say_so(world: World) -> None:
    runtime = LocalRuntime(cgroup_parent=world.runtime.cgroups.parent, run_dir=world.run_dir,
                           firewall_chain=world.runtime.firewall.chain)
    runtime.networks.slirp = None  # as on a host without the package
    caps = {c.name: c for c in run(runtime.fingerprint())}
    assert not caps["network"].available and "apt install slirp4netns" in caps["network"].detail
    assert "share the host's network" in caps["network"].detail
    assert caps["seccomp"].available and caps["sandbox"].available
    spec = world.spec("hostnet")
    handle = run(runtime.start_task(spec))
    world.handles.append(handle)
    assert lt(handle).net_pid is None
    assert get(spec.port)["uid"] == TENANT_UID
    # node itself holds the host's port, as before network namespaces.
    assert os.readlink(f"/proc/{lt(handle).pid}/ns/net") == os.readlink("/proc/self/ns/net")
    run(runtime.stop_task(handle, 5))
    assert gone(handle) and port_is_free(spec.port)


@needs_root
@needs_bwrap
def test_forwarders_run_in_the_fleets_cgroup_whose_egress_chain_goes_with_the_last_of_them(world: World) -> None:
    runtime = world.runtime
    spec = world.spec("filtered")
    handle = world.start(spec)
    net = runtime.network_capability()
    assert net.available and "no address of the host's own" in net.detail, net.detail
    group = runtime.forwarder_cgroup
    assert lt(handle).net_pid in group.pids()
    # The slirp4netns process itself (its cgroup since before its exec), not just its pid.
    assert procfs.cmdline(lt(handle).net_pid)[0].endswith("slirp4netns")
    unified = [line for line in Path(f"/proc/{lt(handle).net_pid}/cgroup").read_text().splitlines()
               if line.startswith("0::")]
    assert unified == [f"0::/{group.match_path()}"]
    rules = runtime.egress.rules()["IPv4"]
    assert f"-A OUTPUT -j {runtime.egress.chain}" in rules
    assert any(f'--path "{group.match_path()}"' in r or f"--path {group.match_path()}" in r for r in rules), rules
    # Re-installed (as by the next daemon): rewritten in place, never duplicated.
    runtime._egress_probe = None
    assert runtime.network_capability().available
    assert runtime.egress.rules()["IPv4"] == rules
    # While a forwarder runs, a shutdown leaves its filter in place ...
    runtime.unprotect_ports()
    assert runtime.egress.rules()["IPv4"] == rules
    run(runtime.stop_task(handle, 5))
    # ... and takes it, and the group, away once none is left.
    runtime.unprotect_ports()
    assert runtime.egress.rules()["IPv4"] == []
    assert group.directory is not None and not group.directory.exists()


@needs_root
def test_the_log_writer_leaves_the_control_planes_cgroup_for_the_fleets_own(world: World) -> None:
    # Under systemd the control plane's group is the service's: `systemctl stop` ends every process in
    # it, and a writer that died with it would take a server meant to be left running down by SIGPIPE.
    runtime = world.runtime
    spec = world.spec("logged")
    handle = world.start(spec)
    writer = logs._writers[spec.log_dir]
    group = runtime.log_writer_cgroup
    wait_until(lambda: writer in group.pids(), 5, "the writer to join its group")
    unified = [line for line in Path(f"/proc/{writer}/cgroup").read_text().splitlines() if line.startswith("0::")]
    assert unified == [f"0::/{group.match_path()}"]
    own = [line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")]
    assert own != unified
    run(runtime.stop_task(handle, 5))
    wait_until(lambda: not procfs.is_alive(writer), 5, "the log writer to end")
    run(runtime.close(instances_left_running=False))
    assert group.directory is not None and not group.directory.exists()


@needs_root
@needs_bwrap
def test_without_cgroup_v2_instances_get_their_namespace_and_the_status_says_what_stays_reachable(
    world: World,
) -> None:
    runtime = LocalRuntime(cgroup_parent=world.runtime.cgroups.parent, firewall_chain=f"FFN-{os.getpid()}",
                           run_dir=world.run_dir)
    runtime.forwarder_cgroup.mount = None  # as on a host without a cgroup2 mount
    net = runtime.network_capability()
    assert net.available
    assert "still reaches host services" in net.detail and "cloud metadata" in net.detail, net.detail
    spec = world.spec("unfiltered")
    handle = run(runtime.start_task(spec))
    world.handles.append(handle)
    assert get(spec.port)["uid"] == TENANT_UID
    assert runtime.egress.rules()["IPv4"] == []
    run(runtime.stop_task(handle, 5))
    assert gone(handle)


@needs_root
@needs_bwrap
def test_an_instance_gets_its_own_network_namespace_and_dns_through_the_forwarder(world: World) -> None:
    spec = world.spec("private")
    handle = world.start(spec)
    assert get(spec.port)["uid"] == TENANT_UID
    assert os.readlink(f"/proc/{lt(handle).pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert lt(handle).net_pid is not None and forwarder_pids(world, "private") == [lt(handle).net_pid]
    # The forwarder, not tenant code, holds the host port; the server's socket is in its namespace.
    assert not port_is_free(spec.port)
    listening = subprocess.run(["ss", "-Htlnp", f"sport = :{spec.port}"], capture_output=True, text=True).stdout
    fields = listening.split()
    assert f"pid={lt(handle).net_pid}," in listening and fields[3] == f"127.0.0.1:{spec.port}", listening
    # With a real backlog (libslirp's own is 1: a burst of connections would wait for SYN retries).
    assert int(fields[2]) >= 128, listening
    assert get(spec.port, "/read?path=/etc/resolv.conf") == {"ok": True, "text": "nameserver 10.0.2.3\n"}
    assert running(world.runtime, handle)
    run(world.runtime.stop_task(handle, 5))
    run(world.runtime.destroy_task(handle))
    assert forwarder_pids(world, "private") == [] and port_is_free(spec.port)
    assert not running(world.runtime, handle)


def test_sandbox_off_is_reported_and_still_runs(world: World) -> None:
    plain = LocalRuntime(cgroup_parent=world.runtime.cgroups.parent, use_sandbox=False)
    assert not {c.name: c for c in run(plain.fingerprint())}["sandbox"].available
    spec = world.spec("plain")
    handle = run(plain.start_task(spec))
    world.handles.append(handle)
    assert lt(handle).pid == lt(handle).leader_pid
    answer = get(spec.port)
    assert answer["pid"] == lt(handle).pid
    # Without the sandbox the shared assets are linked into Data/ (protected by permissions only).
    assert os.readlink(spec.data_dir / "Data" / "shared") == str(world.shared)
    if IS_ROOT:
        assert answer["uid"] == TENANT_UID
    run(plain.stop_task(handle, 5))
    assert gone(handle)


def test_parse_stat_copes_with_spaces_and_parentheses_in_comm() -> None:
    line = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 0 0 0 0 7 3 1 2 20 0 1 0 987654 1000 50 18446744073709551615"
    st = procfs.parse_stat(line)
    assert (st.pid, st.comm, st.state, st.ppid, st.pgid) == (4242, "we ird) (name)", "S", 1, 4242)
    assert (st.utime, st.stime, st.cutime, st.cstime, st.start_time, st.rss_pages) == (7, 3, 1, 2, 987654, 50)
    assert procfs.start_time(os.getpid()) == procfs.stat(os.getpid()).start_time
    assert procfs.is_alive(os.getpid()) and not procfs.is_alive(os.getpid(), start=1)


@needs_root
@needs_bwrap
def test_a_private_parent_directory_does_not_block_a_sandboxed_instance(world: World) -> None:
    # Like a fleet under /root: the sandbox is built as root and the uid is dropped inside it, so
    # the instance never walks the host's 0700 parents.
    private = world.root / "private"
    private.mkdir(mode=0o700)
    data = private / "data"
    data.mkdir()
    os.chown(data, TENANT_UID, TENANT_UID)
    spec = replace(world.spec("locked"), data_dir=data)
    handle = run(world.runtime.start_task(spec))
    world.handles.append(handle)
    assert get(spec.port)["uid"] == TENANT_UID
    assert get(spec.port, f"/write?path={data}/note.txt")["ok"]
    assert (data / "note.txt").read_text() == "x"
    # System files bwrap mounts below parents it had to create stay readable for the uid.
    assert get(spec.port, "/read?path=/etc/ssl/openssl.cnf")["ok"]


@needs_root
def test_an_unreachable_directory_is_named_before_starting_without_a_sandbox(world: World) -> None:
    plain = LocalRuntime(cgroup_parent=world.runtime.cgroups.parent, use_sandbox=False)
    private = world.root / "private"
    private.mkdir(mode=0o700)
    data = private / "data"
    data.mkdir()
    os.chown(data, TENANT_UID, TENANT_UID)
    spec = replace(world.spec("locked"), data_dir=data)
    with pytest.raises(InvalidInput) as info:
        run(plain.start_task(spec))
    assert str(private) in info.value.message and "chmod o+x" in (info.value.hint or "")
    assert not plain.cgroups.task("locked").exists()


def test_sandbox_probe_and_command_line(world: World) -> None:
    from foundry_fleet.runtime import sandbox

    assert not sandbox.probe(None).available and "apt install bubblewrap" in sandbox.probe(None).detail
    assert not sandbox.probe("/bin/false").available
    spec = world.spec("argv-check")
    command = world.runtime.server_command(spec)
    assert command == [NODE, str(world.install / "server.js"), f"--port={spec.port}", f"--dataPath={spec.data_dir}",
                       "--noupdate", "--noupnp", "--noipdiscovery"]
    argv = sandbox.bwrap_argv(spec, command, "/usr/bin/bwrap", info_fd=3, privileged=False)
    # The sandbox must survive the control plane and stay in the task's process group.
    assert "--die-with-parent" not in argv and "--new-session" not in argv
    assert argv[argv.index("--") + 1 :] == command
    options = argv[: argv.index("--")]
    triples = {tuple(options[i : i + 3]) for i in range(len(options) - 2)}
    assert ("--ro-bind", str(world.shared), str(spec.data_dir / "Data" / "shared")) in triples
    assert ("--bind", str(spec.data_dir), str(spec.data_dir)) in triples
    assert ("--ro-bind", str(world.install), str(world.install)) in triples
    assert ("--info-fd", "3") == tuple(options[-2:])
    assert "--clearenv" in options and "--cap-drop" not in options
    assert "--cap-drop" in sandbox.bwrap_argv(spec, command, "/usr/bin/bwrap", privileged=True)
    assert "--unshare-net" not in options and "--seccomp" not in options
    private = sandbox.bwrap_argv(spec, command, "/usr/bin/bwrap", resolv_conf=Path("/run/x/resolv.conf"), seccomp_fd=4)
    options = private[: private.index("--")]
    triples = {tuple(options[i : i + 3]) for i in range(len(options) - 2)}
    assert "--unshare-net" in options and ("--seccomp", "4") in set(zip(options, options[1:], strict=False))
    assert ("--ro-bind", "/run/x/resolv.conf", "/etc/resolv.conf") in triples


@needs_root
@needs_bwrap
def test_a_release_linked_into_place_runs(world: World) -> None:
    # Storage may make install/ a symbolic link to a cached release; node resolves the entry script's
    # real path, so the sandbox must hold both.
    linked = world.root / "tenants" / "linked-install"
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.symlink_to(world.install)
    spec = world.spec("linked")
    spec = replace(spec, release=replace(spec.release, install_dir=linked))
    world.start(spec)
    assert get(spec.port)["uid"] == TENANT_UID


# ----------------------------------------------------------------------------- the verbs behind the shared port


@needs_root
@needs_bwrap
def test_address_status_and_logs_come_through_the_handle(world: World) -> None:
    world.runtime.log_dir_of = lambda name: world.root / "tenants" / name / "logs"
    spec = world.spec("verbs")
    handle = world.start(spec)
    address = run(world.runtime.address(handle))
    # The forwarder holds the port on the host's loopback; the edge and health checks dial it.
    assert (address.host, address.port, str(address)) == ("127.0.0.1", spec.port, f"127.0.0.1:{spec.port}")
    assert get(address.port)["uid"] == TENANT_UID
    status = run(world.runtime.inspect_task(handle))
    assert status.running and status.pid == lt(handle).pid

    async def read(task: TaskHandle | str, lines: int) -> list[str]:
        return [line async for line in world.runtime.logs(task, lines)]

    wait_until(lambda: run(read(handle, 5)) == [f"listening on {spec.port}"], 5, "the first line through logs()")
    get(spec.port, "/log?n=3&text=hello")
    # By name, as for a stopped instance; the log writer passes lines on in batches.
    wait_until(lambda: run(read("verbs", 2)) == ["hello 1", "hello 2"], 5, "the new lines through logs() by name")

    async def follow_one() -> str:
        follower = world.runtime.logs(handle, 0, follow=True)
        reader = asyncio.ensure_future(anext(follower))
        await wait_until_async(lambda: follower_at_end(spec.log_dir / "foundry.log"), 5,
                               "the follower to open the log at its end", interval=0.01)
        await asyncio.to_thread(get, spec.port, "/log?n=1&text=later")
        try:
            return await asyncio.wait_for(reader, 5)
        finally:
            await follower.aclose()

    assert run(follow_one()) == "later 0"


@needs_root
@needs_bwrap
def test_a_flat_handle_recorded_by_the_old_code_is_recovered_with_its_port(world: World) -> None:
    spec = world.spec("upgraded")
    handle = world.start(spec)
    task = lt(handle)
    # As the control plane before the opaque handle stored it: pids at top level, no port.
    flat = {"name": task.name, "pid": task.pid, "leader_pid": task.leader_pid, "leader_start": task.leader_start,
            "pgid": task.pgid, "started_at": task.started_at, "driver": "local", "boot_id": task.boot_id,
            "net_pid": task.net_pid, "net_start": task.net_start, "net_socket": task.net_socket}
    old = TaskHandle.from_dict(json.loads(json.dumps(flat)))
    assert lt(old).port is None
    recovered = run(world.runtime.recover_task(old))
    assert recovered is not None and lt(recovered).pid == task.pid
    assert run(world.runtime.address(recovered)).port == spec.port
    assert TaskHandle.from_dict(json.loads(json.dumps(recovered.to_dict()))) == recovered
    assert run(world.runtime.recover_task(TaskHandle("fake", "upgraded", 0.0, {"id": 1}))) is None


@needs_root
@needs_bwrap
def test_start_clears_a_task_nobody_recorded_and_says_so(world: World) -> None:
    spec = world.spec("twice")
    first = world.start(spec)
    get(spec.port)
    assert world.runtime.take_events() == []
    # The handle was never recorded (the control plane died): the next start clears the old task.
    second = world.start(spec)
    assert gone(first) and get(spec.port)["pid"] == 2
    assert lt(second).pid != lt(first).pid
    events = world.runtime.take_events()
    assert [(e.name, e.action) for e in events] == [("twice", "strays")] and "stopped" in events[0].message
    assert world.runtime.take_events() == []


@needs_root
def test_open_firewalls_the_port_range_and_close_keeps_it_for_instances_left_running(world: World) -> None:
    low = port_block()
    world.runtime.port_range = (low, low + 9)
    caps = {c.name: c for c in run(world.runtime.open())}
    assert caps["firewall"].available, caps["firewall"].detail
    assert {"sandbox", "users", "network", "seccomp"} <= set(caps)
    drops = [r for r in world.runtime.firewall.rules()["IPv4"] if r.endswith("-j DROP")]
    assert len(drops) == 1 and f"--dport {low}:{low + 9}" in drops[0]
    run(world.runtime.close(instances_left_running=True))
    assert world.runtime.firewall.rules()["IPv4"] != []
    run(world.runtime.close(instances_left_running=False))
    assert world.runtime.firewall.rules() == {"IPv4": [], "IPv6": []}
    assert world.runtime.capabilities.isolation == "bubblewrap" and not world.runtime.capabilities.multi_node


@pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns (the forwarder)")
def test_a_fleet_root_too_deep_for_a_forwarders_socket_is_refused_saying_by_how_much(tmp_path: Path) -> None:
    """slirp4netns alone would only log that its API socket path is too long, and fail to come up."""
    from foundry_fleet.runtime.network import PrivateNetworks

    deep = tmp_path / ("d" * 60) / ("e" * 60) / "run" / "net"
    networks = PrivateNetworks(deep)
    with pytest.raises(ExternalFailure) as refused:
        asyncio.run(networks.start("alice", os.getpid(), 1))
    assert "a unix socket's path may have 107" in refused.value.message
    assert re.search(r"a path at least \d+ bytes shorter", refused.value.hint or "")
    assert not list(deep.glob("*.sock")), "nothing started"
