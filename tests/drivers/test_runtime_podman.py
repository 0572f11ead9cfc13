"""The podman runtime against real Podman (rootful, runc, catatonit, netavark) and the stand-in Foundry.

The Node.js image is the fleet's own (images.py builds it offline from the host's node once, and
reuses it), one Podman API service (the driver's own, in a 0755 temporary root) serves the module,
with one stand-in release. Each test's containers carry a fleet id of this run's
own and are removed in teardown; nothing of another fleet's (or engineer's) is touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, TaskHandle, TaskSpec
from foundry_fleet.runtime.podman import container_spec
from foundry_fleet.runtime.podman.driver import PodmanRuntime
from foundry_fleet.runtime.podman.fleet_network import FleetNetwork
from foundry_fleet.runtime.podman.images import NodeImages
from foundry_fleet.runtime.podman.service import PodmanService
from tests.support.foundry_standin import build_release_zip, free_port, wait_for_status, write_options
from tests.support.harness import wait_until

IS_ROOT = os.geteuid() == 0
PODMAN = shutil.which("podman")
NODE = shutil.which("node")
TENANT_UID = 200321
STOP_TIMEOUT = 10.0

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root (rootful podman)"),
    pytest.mark.skipif(PODMAN is None or NODE is None, reason="needs podman and node (make test installs them)"),
    pytest.mark.timeout(120),
]


# ----------------------------------------------------------------------------- module fixtures


class CountingImages:
    """The fleet's own image source (images.py: built offline from the host's node, reused), counting
    the generations it is asked for."""

    def __init__(self, api, work_dir: Path) -> None:
        self.images = NodeImages(api.http, node=lambda generation: os.path.realpath(NODE or "node"),
                                 configured=lambda major: None, work_dir=work_dir, pull_timeout=5.0)
        self.asked: list[int] = []

    async def ensure(self, generation: int, progress=None) -> str:
        self.asked.append(generation)
        return await self.images.ensure(generation, progress)


class Place:
    """A 0755 tree: the stand-in release, a SIGTERM-ignoring server, shared assets, tenants' data."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ff-pmdriver-", dir="/tmp"))
        self.root.chmod(0o755)
        self.run = self.root / "run" / "podman"
        zip_path = build_release_zip(self.root / "zips", ReleaseLayout.NODE)
        self.install = self.root / "install"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(self.install)
        for p in [self.install, *self.install.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        self.stubborn = self.root / "stubborn"
        self.stubborn.mkdir(mode=0o755)
        (self.stubborn / "server.js").write_text(textwrap.dedent("""
            const port = parseInt(process.argv.find(a => a.startsWith('--port=')).slice(7));
            process.on('SIGTERM', () => console.log('ignoring SIGTERM'));
            require('http').createServer((q, r) => r.end('{}')).listen(port, () => console.log('listening'));
        """))
        self.probe = self.root / "probe"
        self.probe.mkdir(mode=0o755)
        (self.probe / "probe.js").write_text(PROBE_JS)
        self.shared = self.root / "shared"
        self.shared.mkdir(mode=0o755)
        (self.shared / "map.txt").write_text("shared map")


@pytest.fixture(scope="module")
def place() -> Iterator[Place]:
    p = Place()
    try:
        yield p
    finally:
        asyncio.run(PodmanService(p.run).stop())
        shutil.rmtree(p.root, ignore_errors=True)


class World:
    """One test's fleet: its own fleet id, a runtime per control plane (`fresh()`), its tenants."""

    def __init__(self, place: Place) -> None:
        self.place = place
        self.fleet_id = f"t{os.getpid() % 100000}{int(time.time() * 1000) % 1000}"
        self.network = FleetNetwork(self.fleet_id)

    def fresh(self) -> PodmanRuntime:
        """A runtime as a new control plane builds it (after a restart): nothing remembered."""
        return PodmanRuntime(self.fleet_id, PodmanService(self.place.run),
                             lambda api: CountingImages(api, self.place.root / "images"),
                             log_dir_of=lambda name: self.place.root / "logs" / self.fleet_id / name,
                             network=FleetNetwork(self.fleet_id))

    def spec(self, name: str, install: Path | None = None, entry: str = "main.js", **fields) -> TaskSpec:
        data = self.place.root / "tenants" / self.fleet_id / name
        data.mkdir(parents=True, exist_ok=True)
        data.parent.chmod(0o755)
        (self.place.root / "tenants").chmod(0o755)
        write_options(data)
        (data / "Data").mkdir(exist_ok=True)
        for p in [data, *data.rglob("*")]:
            os.chown(p, TENANT_UID, TENANT_UID)
        return TaskSpec(
            name=name,
            release=ReleaseToRun(version="13.345", generation=13, install_dir=install or self.place.install,
                                 entry=entry),
            data_dir=data, shared_dir=self.place.shared, log_dir=self.place.root / "logs" / self.fleet_id / name,
            port=fields.pop("port", None) or free_port(), uid=TENANT_UID, gid=TENANT_UID,
            limits=fields.pop("limits", ResourceLimits(memory_mb=256, cpu_percent=50, pids=64)), **fields,
        )

    async def cleanup(self) -> None:
        runtime = self.fresh()
        left = await runtime.forget_unknown(set())
        await runtime.network.close(await runtime.service.ensure())
        await runtime.service.api.aclose()
        assert not await PodmanService(self.place.run).api.list(container_spec.fleet_labels(self.fleet_id)), left


@pytest.fixture
def world(place: Place) -> Iterator[World]:
    w = World(place)
    try:
        yield w
    finally:
        asyncio.run(w.cleanup())


def run(scenario: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(scenario())


def probe(port: int, **queries: str) -> dict:
    query = "&".join(f"{k}={v}" for k, v in queries.items())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/__probe?{query}", timeout=5) as r:
        return json.loads(r.read())


def get(port: int, path: str) -> None:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
    except OSError:
        pass  # the server exits while answering


def host_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback and those of bridges (other fleets' networks come
    and go while the tests of others run)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    bridges = {p.parent.name for p in Path("/sys/class/net").glob("*/bridge")}
    return [line.split()[3].split("/")[0] for line in out.splitlines()
            if line.split()[1] != "lo" and line.split()[1] not in bridges]


def bridge_link_local(interface: str) -> str:
    out = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", interface, "scope", "link"],
                         capture_output=True, text=True).stdout
    return out.split()[3].split("/")[0]


def cgroup_file(controller: str, info: dict, name: str) -> str:
    return (Path("/sys/fs/cgroup") / controller / info["State"]["CgroupPath"].lstrip("/") / name).read_text().strip()


# ----------------------------------------------------------------------------- start, identity, mounts


def test_start_serves_on_loopback_only_as_the_tenant_with_the_release_and_shared_read_only(world: World) -> None:
    spec = world.spec("alpha")

    async def scenario() -> None:
        runtime = world.fresh()
        caps = {c.name: c for c in await runtime.open()}
        assert all(c.available for c in caps.values()), caps
        handle = await runtime.start_task(spec)
        # Asked at once, as the supervisor asks for the pid it records: the server's, not its init's.
        at_once = await runtime.inspect_task(handle)
        assert at_once.running and at_once.pid is not None and "/foundry/main.js" in procfs.cmdline(at_once.pid)
        assert runtime.images.asked == [13]
        assert handle.driver == "podman" and handle.state["container_name"] == f"foundry-fleet-{world.fleet_id}-alpha"
        address = await runtime.address(handle)
        assert (address.host, address.port) == ("127.0.0.1", spec.port)
        await asyncio.to_thread(wait_for_status, spec.port, None, 20.0)
        seen = await asyncio.to_thread(probe, spec.port, read="/data/Data/shared/map.txt")
        assert seen["uid"] == TENANT_UID and seen["gid"] == TENANT_UID
        assert seen["dataPath"] == "/data"
        writes = {path: await asyncio.to_thread(probe, spec.port, write=path) for path in
                  ("/foundry/main.js", "/data/Data/shared/map.txt", "/etc/x", "/usr/bin/node", "mine.txt")}
        codes = {path: w["write"][path]["code"] if not w["write"][path]["ok"] else "ok" for path, w in writes.items()}
        assert codes == {"/foundry/main.js": "EROFS", "/data/Data/shared/map.txt": "EROFS", "/etc/x": "EROFS",
                         "/usr/bin/node": "EROFS", "mine.txt": "ok"}, codes
        assert (spec.data_dir / "mine.txt").stat().st_uid == TENANT_UID
        assert seen["read"]["/data/Data/shared/map.txt"]["ok"], seen
        # Published on the host's loopback only: not on any other address of the host.
        for host in host_addresses():
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((host, spec.port)) != 0, host
        info = await runtime.api.inspect(handle.state["container"])
        assert info["HostConfig"]["PortBindings"] == {f"{spec.port}/tcp": [{"HostIp": "127.0.0.1",
                                                                            "HostPort": str(spec.port)}]}
        assert info["HostConfig"]["ReadonlyRootfs"] is True and info["HostConfig"]["CapDrop"]
        assert info["Config"]["Labels"]["foundry-fleet.instance"] == "alpha"
        status = await runtime.inspect_task(handle)
        assert status.running and status.pid is not None
        assert "main.js" in " ".join(open(f"/proc/{status.pid}/cmdline").read().split("\0"))
        assert not runtime.port_is_free(spec.port)
        stats = await runtime.task_stats(handle)
        assert stats is not None and stats.memory_bytes > 1024 * 1024
        assert stats.memory_limit_bytes == 256 * 1024 * 1024  # the spec's default limit
        assert stats.cpu_seconds is not None and stats.cpu_seconds > 0 and stats.cpu_percent is None
        lines = [line async for line in runtime.logs(handle, 50)]
        assert any("listening on port" in line for line in lines), lines
        await runtime.stop_task(handle, STOP_TIMEOUT)
        assert await runtime.task_stats(handle) is None
        await runtime.destroy_task(handle)
        assert await runtime.api.inspect(handle.state["container"]) is None
        assert runtime.port_is_free(spec.port)
        by_name = [line async for line in runtime.logs("alpha", 50)]  # as for an instance not running
        assert any("listening on port" in line for line in by_name), by_name

    run(scenario)


def test_limits_are_in_the_containers_cgroups(world: World) -> None:
    spec = world.spec("limited", limits=ResourceLimits(memory_mb=192, cpu_percent=30, pids=48))

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(spec)
        info = await runtime.api.inspect(handle.state["container"])
        assert int(cgroup_file("memory", info, "memory.limit_in_bytes")) == 192 * 1024 * 1024
        assert cgroup_file("pids", info, "pids.max") == "48"
        assert cgroup_file("cpu", info, "cpu.cfs_quota_us") == "30000"
        assert cgroup_file("cpu", info, "cpu.cfs_period_us") == "100000"
        stats = await runtime.task_stats(handle)
        assert stats is not None and stats.memory_limit_bytes == 192 * 1024 * 1024
        await runtime.destroy_task(handle)
        # Without a limit Podman reports the host's RAM, which is no limit.
        handle = await runtime.start_task(world.spec("unlimited", limits=ResourceLimits()))
        stats = await runtime.task_stats(handle)
        assert stats is not None and stats.memory_bytes > 0 and stats.memory_limit_bytes is None
        await runtime.destroy_task(handle)

    run(scenario)


# ----------------------------------------------------------------------------- wait, stop


def test_wait_returns_the_exit_code_of_a_crash(world: World) -> None:
    spec = world.spec("crashy")

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(spec)
        await asyncio.to_thread(wait_for_status, spec.port, None, 20.0)
        waiter = asyncio.create_task(runtime.wait_task(handle))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await asyncio.to_thread(get, spec.port, "/-/__crash?code=7")
        result = await asyncio.wait_for(waiter, 15)
        assert (result.exit_code, result.signal, result.oom_killed) == (7, None, False)
        assert not (await runtime.inspect_task(handle)).running
        await runtime.destroy_task(handle)

    run(scenario)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_is_graceful_the_signal_reaches_node_through_the_init(world: World, sig: int) -> None:
    spec = world.spec("polite")

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(spec)
        await asyncio.to_thread(wait_for_status, spec.port, None, 20.0)
        waiter = asyncio.create_task(runtime.wait_task(handle))
        started = time.monotonic()
        await runtime.stop_task(handle, STOP_TIMEOUT, sig)
        took = time.monotonic() - started
        result = await asyncio.wait_for(waiter, 5)
        assert took < 3, f"stop took {took:.1f} s: the signal did not reach node"
        assert result.exit_code == 0, result
        lines = [line async for line in runtime.logs(handle, 20)]
        assert any(f"{signal.Signals(sig).name} received, shutting down" in line for line in lines), lines
        await runtime.destroy_task(handle)

    run(scenario)


def test_a_wait_outlives_the_api_service_which_comes_back(world: World) -> None:
    spec = world.spec("patient")

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(spec)
        await asyncio.to_thread(wait_for_status, spec.port, None, 20.0)
        waiter = asyncio.create_task(runtime.wait_task(handle))
        await asyncio.sleep(0.3)
        pid = int((world.place.run / "podman.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await asyncio.to_thread(get, spec.port, "/-/__crash?code=5")
        result = await asyncio.wait_for(waiter, 20)
        assert result.exit_code == 5, result
        assert int((world.place.run / "podman.pid").read_text()) != pid  # started again by the wait
        await runtime.destroy_task(handle)

    run(scenario)


def test_stop_kills_a_server_ignoring_sigterm_after_the_timeout(world: World) -> None:
    spec = world.spec("stubborn", install=world.place.stubborn, entry="server.js")

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(spec)
        await asyncio.to_thread(wait_until, lambda: "listening" in " ".join(
            Path(handle.state["log"]).read_text().splitlines()), 20, "the server to listen")
        started = time.monotonic()
        await runtime.stop_task(handle, 1.0)
        took = time.monotonic() - started
        result = await runtime.wait_task(handle)
        assert 1.0 <= took < 8, took
        assert result.signal == signal.SIGKILL, result
        lines = [line async for line in runtime.logs(handle, 20)]
        assert "ignoring SIGTERM" in lines, lines
        await runtime.destroy_task(handle)

    run(scenario)


def test_the_log_is_capped_and_followed_across_conmons_fresh_starts(world: World) -> None:
    spec = world.spec("chatty", log_max_bytes=4096)

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(spec)
        await asyncio.to_thread(wait_for_status, spec.port, None, 20.0)
        seen: list[str] = []

        async def follow() -> None:
            async for line in runtime.logs(handle, 0, follow=True):
                seen.append(line)

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.3)
        log = Path(handle.state["log"])
        biggest = 0
        for i in range(60):
            await asyncio.to_thread(get, spec.port, f"/-/api/status?n={i:04d}-{'x' * 40}")
            biggest = max(biggest, log.stat().st_size)
        await asyncio.to_thread(wait_until, lambda: any("n=0059-" in line for line in seen), 10,
                                "the last request's line through the follower", 0.05)
        follower.cancel()
        assert biggest <= 4096, biggest  # conmon starts the file afresh instead of growing it
        # In order, none twice, the last one too. (conmon keeps no older file: what a server writes
        # beyond the cap within one poll of the follower is gone, as it is from the disk.)
        numbers = [int(line.split("n=")[1][:4]) for line in seen if "n=" in line]
        assert numbers[-1] == 59 and numbers == sorted(set(numbers)), numbers
        await runtime.destroy_task(handle)

    run(scenario)


# ----------------------------------------------------------------------------- control plane restarts


def test_recover_after_a_control_plane_restart_and_a_dead_api_service(world: World) -> None:
    spec = world.spec("durable")
    gone = world.spec("vanished")

    async def scenario() -> None:
        first = world.fresh()
        handle = await first.start_task(spec)
        other = await first.start_task(gone)
        await asyncio.to_thread(wait_for_status, spec.port, None, 20.0)
        # The API service dies too (kill -9): conmon keeps the containers; the next call starts it again.
        pid = int((world.place.run / "podman.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(wait_until, lambda: not Path(f"/proc/{pid}").exists()
                                or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], 5, "the service to die")
        second = world.fresh()
        recovered = await second.recover_task(TaskHandle.from_dict(json.loads(json.dumps(handle.to_dict()))))
        assert recovered == handle
        assert int((world.place.run / "podman.pid").read_text()) != pid
        assert (await second.inspect_task(recovered)).running
        await asyncio.to_thread(wait_for_status, spec.port, None, 5.0)
        # A container removed while the control plane was down: nothing to recover.
        await second.api.remove(other.state["container"])
        assert await second.recover_task(other) is None
        # One that exited meanwhile is removed and not recovered.
        await asyncio.to_thread(get, spec.port, "/-/__crash?code=4")
        await second.wait_task(recovered)
        assert await second.recover_task(recovered) is None
        assert await second.api.inspect(handle.state["container"]) is None
        # A handle of another driver is none of this one's.
        assert await second.recover_task(TaskHandle("local", "durable", 0.0, {"pid": 1})) is None

    run(scenario)


def test_containers_no_record_claims_are_reported_and_removed(world: World) -> None:
    kept, orphan = world.spec("kept"), world.spec("orphan")

    async def scenario() -> None:
        first = world.fresh()
        kept_handle = await first.start_task(kept)
        orphan_handle = await first.start_task(orphan)
        second = world.fresh()
        assert await second.forget_unknown({"kept"}) == ["orphan"]
        events = second.take_events()
        assert [(e.name, e.action) for e in events] == [("orphan", "strays")]
        assert orphan_handle.state["container_name"] in events[0].message
        assert await second.api.inspect(orphan_handle.state["container"]) is None
        assert (await second.inspect_task(kept_handle)).running
        # A container left by a start that was never recorded goes when the instance starts again.
        again = await second.start_task(kept)
        assert [e.action for e in second.take_events()] == ["strays"]
        assert await second.api.inspect(kept_handle.state["container"]) is None
        assert (await second.inspect_task(again)).running

    run(scenario)


# ----------------------------------------------------------------------------- network isolation

PROBE_JS = textwrap.dedent(r"""
    const net = require('net');
    const targets = JSON.parse(process.env.PROBE_TARGETS);
    const results = {};
    try { results.if_inet6 = require('fs').readFileSync('/proc/net/if_inet6', 'utf8'); } catch (e) { results.if_inet6 = e.code; }
    let left = targets.length;
    for (const [host, port] of targets) {
      const key = host + ':' + port;
      const s = net.connect({host, port, timeout: 1500});
      const done = (what) => { if (key in results) return; results[key] = what; s.destroy();
        if (--left === 0) { console.log('RESULTS ' + JSON.stringify(results)); process.exit(0); } };
      s.on('connect', () => done('connected'));
      s.on('timeout', () => done('timeout'));
      s.on('error', (e) => done(e.code));
    }
""")


class Listener:
    """A TCP server accepting connections, in this process (the host) or in a network namespace."""

    def __init__(self, command_prefix: list[str], host: str, port: int) -> None:
        family = "socket.AF_INET6" if ":" in host else "socket.AF_INET"
        code = (f"import socket; s = socket.socket({family}); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                f"s.bind(({host!r}, {port})); s.listen(64); print('ready', flush=True)\n"
                f"while True: s.accept()[0].close()")
        self.proc = subprocess.Popen([*command_prefix, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class RemoteHost:
    """Another machine: a network namespace joined to the host by a veth pair (no /run/netns name, so
    nothing here touches the mounts Podman keeps its containers' namespaces in), with 169.254.169.254
    too, routed through it, standing for a cloud metadata service."""

    METADATA = "169.254.169.254"

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        octet = 16 + os.getpid() % 200
        self.host_ip, self.ip = f"10.232.{octet}.1", f"10.232.{octet}.2"
        self.host_if, peer_if = f"ffpmh{tag}", f"ffpmp{tag}"
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        ours = os.readlink("/proc/self/ns/net")
        wait_until(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/net") != ours, 5, "the namespace", interval=0.01)
        self.enter = ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--"]
        steps = [
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", peer_if, "netns", str(self.holder.pid)],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "route", "add", f"{self.METADATA}/32", "via", self.ip],
            [*self.enter, "ip", "addr", "add", f"{self.ip}/30", "dev", peer_if],
            [*self.enter, "ip", "addr", "add", f"{self.METADATA}/32", "dev", peer_if],
            [*self.enter, "ip", "link", "set", peer_if, "up"],
            [*self.enter, "ip", "link", "set", "lo", "up"],
            [*self.enter, "ip", "route", "add", "default", "via", self.host_ip],
        ]
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        subprocess.run(["ip", "route", "del", f"{self.METADATA}/32", "via", self.ip], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def remote() -> Iterator[RemoteHost]:
    r = RemoteHost()
    try:
        yield r
    finally:
        r.close()


def test_containers_reach_the_outside_but_not_the_host_metadata_or_each_other(world: World, remote: RemoteHost) -> None:
    port = free_port()
    listeners = [Listener([], "::", port),  # a host service on every address, IPv4 and IPv6
                 Listener(remote.enter, "0.0.0.0", port)]  # the outside world, and "cloud metadata"
    target_spec = world.spec("neighbour")

    async def scenario() -> dict:
        runtime = world.fresh()
        caps = {c.name: c for c in await runtime.open()}
        assert caps["network isolation"].available, caps["network isolation"]
        # A flush of the host's INPUT chain by someone else is noticed at the next start.
        subprocess.run(["iptables", "-w", "-D", "INPUT", "-j", runtime.network.input_chain], check=True)
        neighbour = await runtime.start_task(target_spec)
        await asyncio.to_thread(wait_for_status, target_spec.port, None, 20.0)
        info = await runtime.api.inspect(neighbour.state["container"])
        nets = info["NetworkSettings"]["Networks"]
        neighbour_ip = nets[runtime.network.name]["IPAddress"]
        gateway = nets[runtime.network.name]["Gateway"]
        targets = [[remote.ip, port], [remote.METADATA, port], [gateway, port], [neighbour_ip, target_spec.port],
                   *([h, port] for h in host_addresses() if h != gateway),
                   [f"{bridge_link_local(runtime.network.interface)}%eth0", port]]
        spec = world.spec("prober", install=world.place.probe, entry="probe.js",
                          env={"PROBE_TARGETS": json.dumps(targets)})
        handle = await runtime.start_task(spec)
        result = await asyncio.wait_for(runtime.wait_task(handle), 30)
        lines = [line async for line in runtime.logs(handle, 20)]
        assert result.exit_code == 0, (result, lines)
        found = [line for line in lines if line.startswith("RESULTS ")]
        assert found, lines
        await runtime.destroy_task(handle)
        # From the host, the neighbour is still served (through its published port).
        await asyncio.to_thread(wait_for_status, target_spec.port, None, 5.0)
        await runtime.destroy_task(neighbour)
        subnet = runtime.network.subnet
        await runtime.close(False)
        assert not any(runtime.network.rules().values())
        assert subprocess.run([PODMAN, "network", "exists", runtime.network.name]).returncode == 1
        nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
        assert subnet and f"-s {subnet} " not in nat  # nothing of the network's NAT is left
        return {"results": json.loads(found[0][len("RESULTS "):]), "remote": remote.ip, "gateway": gateway,
                "neighbour": f"{neighbour_ip}:{target_spec.port}"}

    try:
        seen = run(scenario)
    finally:
        for listener in listeners:
            listener.close()
    results = seen["results"]
    assert "eth0" not in results.pop("if_inet6")  # no IPv6 inside
    link_local = next(key for key in results if "%eth0" in key)
    assert results.pop(link_local) not in ("connected", "timeout"), link_local  # no way to dial it at all
    assert results.pop(f"{seen['remote']}:{port}") == "connected"  # the outside
    assert results.pop(f"{RemoteHost.METADATA}:{port}") in ("ECONNREFUSED", "timeout")
    assert results.pop(seen["neighbour"]) in ("ECONNREFUSED", "timeout", "EHOSTUNREACH")
    assert results, "the host's own addresses were probed"
    assert all(v in ("ECONNREFUSED", "timeout") for v in results.values()), json.dumps(results)  # the host


# ----------------------------------------------------------------------------- the host's side


def test_a_lost_namespace_mount_is_restored_and_a_dead_containers_forwarding_swept(world: World) -> None:
    """Podman keeps each container's network namespace as a mount under /run/netns; on a shared host
    that mount can go (seen here), after which Podman fails every listing and leaves the container's
    port forwarding behind when it stops. The runtime mounts it again from the container's init."""
    alive, dying = world.spec("lost"), world.spec("lostdead")

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(alive)
        dead = await runtime.start_task(dying)
        await asyncio.to_thread(wait_for_status, alive.port, None, 20.0)
        await asyncio.to_thread(wait_for_status, dying.port, None, 20.0)
        # The fleet's containers' processes are found from the host without the API (the daemon's uid
        # check runs before the service): each server runs below one of the fleet's conmons.
        monitors = runtime.host_processes()
        assert len(monitors) == 2 and all("conmon" in open(f"/proc/{p}/comm").read() for p in monitors)
        for h in (handle, dead):
            pid = (await runtime.inspect_task(h)).pid
            chain = [pid]
            while chain[-1] > 1 and chain[-1] not in monitors:
                chain.append(procfs.stat(chain[-1]).ppid)
            assert chain[-1] in monitors, chain
        keys = {}
        for h in (handle, dead):
            info = await runtime.api.inspect(h.state["container"])
            keys[h.name] = info["NetworkSettings"]["SandboxKey"]
            done = subprocess.run(["umount", "-l", keys[h.name]], capture_output=True, text=True)
            assert done.returncode == 0, (done.stderr, open("/proc/self/mountinfo").read())
            assert not os.path.ismount(keys[h.name])
        # Listing (every container, as forget_unknown does) works again once the runtime remounts them.
        fresh = world.fresh()
        assert await fresh.forget_unknown({"lost", "lostdead"}) == []
        assert os.path.ismount(keys["lost"]) and os.path.ismount(keys["lostdead"])
        # A container that dies without its namespace mount: what netavark leaves is swept.
        subprocess.run(["umount", "-l", keys["lostdead"]], check=True)
        await asyncio.to_thread(get, dying.port, "/-/__crash?code=3")
        assert (await fresh.wait_task(dead)).exit_code == 3
        await fresh.destroy_task(dead)
        nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout.splitlines()
        left = [line for line in nat if dead.state["container"] in line
                or (f"--dport {dying.port} " in line and "DNAT" in line)]
        assert not left, left
        again = await fresh.start_task(dying)  # the same port serves again
        await asyncio.to_thread(wait_for_status, dying.port, None, 20.0)
        await fresh.stop_task(handle, STOP_TIMEOUT)
        await fresh.destroy_task(handle)
        await fresh.destroy_task(again)

    run(scenario)


@pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns (make test installs it)")
def test_a_local_runtimes_forwarder_on_the_same_host_leaves_the_containers_namespace_mounts(world: World) -> None:
    """slirp4netns' sandbox detaches a root whose submounts are still shared with the host: started as
    it was, each local instance's forwarder unmounted every container's namespace under /run/netns."""
    from foundry_fleet.runtime.network import PrivateNetworks

    spec = world.spec("neighbourly")
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "30"])

    async def scenario() -> None:
        runtime = world.fresh()
        handle = await runtime.start_task(spec)
        key = handle.state["netns"]
        assert os.path.ismount(key)
        networks = PrivateNetworks(world.place.root / "net")
        ours = os.readlink("/proc/self/ns/net")
        await asyncio.to_thread(wait_until, lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != ours, 5,
                                "the namespace", 0.01)
        forwarder = await networks.start("local-one", holder.pid, free_port())
        try:
            assert os.path.ismount(key), "the forwarder took the container's namespace mount"
        finally:
            networks.stop(forwarder)
        await runtime.destroy_task(handle)

    try:
        run(scenario)
    finally:
        holder.kill()
        holder.wait()


def nat_rules() -> list[str]:
    return subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_forwarding_left_by_containers_that_are_gone_is_swept_at_open_and_a_live_one_kept(world: World) -> None:
    """A teardown cut short (a killed daemon or test, a host reset) leaves netavark's forwarding of a
    container that no longer exists: a jump naming it, and a DNAT rule to its old address placed before
    the live container's. Left there, 127.0.0.1:<port> leads nowhere for whatever listens there next."""
    spec = world.spec("alice")
    dead_id = "d" * 64

    async def scenario() -> None:
        first = world.fresh()
        await first.open()
        handle = await first.start_task(spec)
        await asyncio.to_thread(wait_for_status, spec.port, None, 20.0)
        chain = next(line.split()[-1] for line in nat_rules()
                     if f"id: {handle.state['container']}" in line)
        subnet = first.network.subnet
        dead_ip = subnet.rsplit(".", 1)[0] + ".250"
        # What a cut-short teardown leaves, put first so it wins, as a stale rule does.
        stale = [[chain, "-d", "127.0.0.1/32", "-p", "tcp", "--dport", str(spec.port), "-j", "DNAT",
                  "--to-destination", f"{dead_ip}:{spec.port}"],
                 ["NETAVARK-HOSTPORT-DNAT", "-p", "tcp", "--dport", str(spec.port), "-m", "comment", "--comment",
                  f"dnat name: {first.network.name} id: {dead_id}", "-j", chain]]
        for rule in stale:
            subprocess.run(["iptables", "-w", "-t", "nat", "-I", rule[0], "1", *rule[1:]], check=True)
        try:
            await check_swept(first, handle)
        finally:  # a failure here must not leave them for the next test on this host
            for rule in stale:
                subprocess.run(["iptables", "-w", "-t", "nat", "-D", *rule], capture_output=True)

    async def check_swept(first: PodmanRuntime, handle: TaskHandle) -> None:
        dead_ip = first.network.subnet.rsplit(".", 1)[0] + ".250"
        with pytest.raises(OSError):  # led to nothing: refused, reset or timed out
            urllib.request.urlopen(f"http://127.0.0.1:{spec.port}/-/api/status", timeout=1.0)
        second = world.fresh()  # the next daemon
        await second.open()
        left = nat_rules()
        assert not [line for line in left if dead_id in line or f"{dead_ip}:" in line], left
        assert [line for line in left if f"id: {handle.state['container']}" in line]  # the live one's stays
        await asyncio.to_thread(wait_for_status, spec.port, None, 5.0)
        assert [e.action for e in second.take_events()] == ["strays"]
        await second.stop_task(handle, timeout=5)
        await second.destroy_task(handle)

    run(scenario)
