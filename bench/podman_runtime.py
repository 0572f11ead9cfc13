"""The podman runtime against the local one and against podman itself, in one run (issue 10, "Measure").

1. create -> healthy: the time from "start it" to the first 200 on /-/api/status, for
   (a) the stand-in started directly with node (no sandbox; the environment the runtimes give it):
       the anchor for both runtimes,
   (b) the local runtime: LocalRuntime.start_task -> healthy (bubblewrap, netns + slirp4netns,
       cgroups, seccomp, log writer),
   (c) the podman runtime: PodmanRuntime.start_task -> healthy (image check, the fleet's network,
       create + start through the API, with every option the fleet sets),
   (d) podman's own start: the same image, command, mounts, user and published port through the same
       API socket, create + start and nothing else (d1); and `podman run -d` of the same (d2).
   Fleet overhead on podman = (c) - (d1); target <= 50 ms.
2. memory per idle instance beyond Foundry's own (RSS and PSS from /proc, after the instance has idled):
   local = bubblewrap's processes + the slirp4netns forwarder + the log writer; podman = conmon + the
   container's init (catatonit). Target <= 5 MB. The fleet's podman service is shared by every
   instance and printed apart.
3. restart after a crash: SIGKILL the server, then the driver verbs as the supervisor runs them
   (wait_task returns -> destroy_task -> start_task -> address -> healthy), without the backoff.

Both runtimes are built from a throw-away fleet configuration by `make_runtime`, as the daemon builds
them; each round alternates the four starts so a loaded machine weighs on all of them alike.
Needs root, node, podman, runc and catatonit (`make test` installs them).
Run: PYTHONPATH=$PWD/src .venv/bin/python bench/podman_runtime.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.config import FleetConfig, load_config  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402
from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, Runtime, TaskHandle, TaskSpec  # noqa: E402
from foundry_fleet.runtime.local_task import LocalTask  # noqa: E402
from foundry_fleet.services.init import init_fleet  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from foundry_fleet.wiring.runtimes import fleet_id, make_runtime  # noqa: E402
from tests.support.foundry_standin import (  # noqa: E402
    NODE, STATUS_PATH, build_release_zip, free_port, write_options,
)
from tests.support.cgroups import remove_groups  # noqa: E402
from tests.support.harness import kill_processes_with, pids_with_arg  # noqa: E402

BENCH_LABEL = "foundry-fleet-bench"  # on the containers this script makes itself (d1, d2)
POLL = 0.005


# ----------------------------------------------------------------------------- the world


@dataclass
class World:
    work: Path
    install: Path
    entry: str
    shared: Path
    uid: int
    count: int = 0

    def spec(self, config: FleetConfig, kind: str) -> TaskSpec:
        """A fresh instance: its own data directory (owned by the tenant uid) and port."""
        self.count += 1
        name = f"bench-{kind}-{self.count}"
        data = self.work / "tenants" / name / "data"
        data.mkdir(parents=True)
        port = free_port()
        write_options(data, port=port)
        for path in [data, *data.rglob("*")]:
            os.chown(path, self.uid, self.uid)
        return TaskSpec(
            name=name,
            release=ReleaseToRun(version="13.345", generation=13, install_dir=self.install, entry=self.entry),
            data_dir=data, shared_dir=self.shared, log_dir=config.paths.instance_logs(name), port=port,
            uid=self.uid, gid=self.uid,
            limits=ResourceLimits(memory_mb=config.limits.memory_mb, cpu_percent=config.limits.cpu_percent,
                                  pids=config.limits.pids),
        )


def make_world(work: Path) -> World:
    zip_path = build_release_zip(work / "zips", ReleaseLayout.NODE, 13, 345)
    install = work / "install"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(install)
    shared = work / "shared"
    shared.mkdir()
    (shared / "map.webp").write_bytes(b"RIFF....WEBP")
    (work / "tenants").mkdir()
    for path in [work, install, *install.rglob("*"), shared, shared / "map.webp", work / "tenants"]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return World(work, install, ReleaseLayout.NODE.entry, shared, uid=0)


def fleet_config(root: Path, driver: str) -> FleetConfig:
    """A fleet configuration that only serves to build a runtime the way the daemon does."""
    path = init_fleet(root)
    text = path.read_text()
    path.write_text(text.rstrip("\n") + f'\n\n[runtime]\ndriver = "{driver}"\n'
                    if "[runtime]" not in text else text.replace('driver = "local"', f'driver = "{driver}"'))
    return load_config(path)


# ----------------------------------------------------------------------------- timing


async def healthy(client: httpx.AsyncClient, host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{host}:{port}{STATUS_PATH}"
    while True:
        try:
            if (await client.get(url, timeout=1)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        await asyncio.sleep(POLL)


async def timed(start: Callable[[], Awaitable[tuple[str, int]]], client: httpx.AsyncClient) -> float:
    began = time.perf_counter()
    host, port = await start()
    await healthy(client, host, port)
    return time.perf_counter() - began


@dataclass
class Bench:
    world: World
    client: httpx.AsyncClient
    local: Runtime
    podman: Runtime
    local_config: FleetConfig
    podman_config: FleetConfig
    api: httpx.AsyncClient  # the podman runtime's own service, for podman's own start
    podman_env: dict[str, str]
    handles: list[tuple[Runtime, TaskHandle]]
    own_containers: list[str]
    image: str = ""

    # (a) the stand-in, started directly
    async def bare(self) -> float:
        spec = self.world.spec(self.local_config, "bare")
        proc: subprocess.Popen[bytes] | None = None

        async def start() -> tuple[str, int]:
            nonlocal proc
            with open(spec.data_dir.parent / "bare.log", "ab") as log:
                # The environment both runtimes give the server: this one's own (here with
                # NODE_EXTRA_CA_CERTS, which costs node ~10 ms parsing the CA bundle) would slow the anchor.
                proc = subprocess.Popen(
                    [NODE, str(self.world.install / self.world.entry), f"--port={spec.port}",
                     f"--dataPath={spec.data_dir}"],
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8"),
                         "HOME": str(spec.data_dir)},
                    cwd=spec.data_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            return "127.0.0.1", spec.port

        try:
            return await timed(start, self.client)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()

    # (b), (c) a runtime's start_task -> healthy
    async def runtime_start(self, runtime: Runtime, config: FleetConfig, kind: str,
                            keep: bool = False) -> tuple[float, TaskSpec, TaskHandle]:
        spec = self.world.spec(config, kind)
        handle: TaskHandle | None = None

        async def start() -> tuple[str, int]:
            nonlocal handle
            handle = await runtime.start_task(spec)
            address = await runtime.address(handle)
            return address.host, address.port

        took = await timed(start, self.client)
        assert handle is not None
        if keep:
            self.handles.append((runtime, handle))
        else:
            await self.stop(runtime, handle)
        return took, spec, handle

    async def stop(self, runtime: Runtime, handle: TaskHandle) -> None:
        await runtime.stop_task(handle, timeout=5)
        await runtime.destroy_task(handle)

    # (d1) podman's own start through the API: the same image, command, mounts, user and port
    async def podman_own(self) -> float:
        spec = self.world.spec(self.podman_config, "own")
        name = f"{BENCH_LABEL}-{os.getpid()}-{self.world.count}"
        body = {
            "name": name, "image": self.image, "labels": {BENCH_LABEL: str(os.getpid())},
            "command": ["node", f"/foundry/{self.world.entry}", f"--port={spec.port}", "--dataPath=/data"],
            "user": f"{spec.uid}:{spec.gid}",
            "mounts": [
                {"destination": "/foundry", "source": str(spec.install_dir), "type": "bind", "options": ["ro"]},
                {"destination": "/data", "source": str(spec.data_dir), "type": "bind", "options": ["rw"]},
            ],
            "netns": {"nsmode": "bridge"},
            "portmappings": [{"host_ip": "127.0.0.1", "host_port": spec.port, "container_port": spec.port}],
        }

        async def start() -> tuple[str, int]:
            created = await self.api.post("/containers/create", json=body)
            created.raise_for_status()
            self.own_containers.append(name)
            (await self.api.post(f"/containers/{name}/start")).raise_for_status()
            return "127.0.0.1", spec.port

        try:
            return await timed(start, self.client)
        finally:
            await self.remove_own(name)

    # (d2) the same with the podman command
    async def podman_cli(self) -> float:
        spec = self.world.spec(self.podman_config, "cli")
        name = f"{BENCH_LABEL}-{os.getpid()}-{self.world.count}"
        argv = ["podman", "run", "-d", "--name", name, "--label", f"{BENCH_LABEL}={os.getpid()}",
                "--user", f"{spec.uid}:{spec.gid}",
                "-v", f"{spec.install_dir}:/foundry:ro", "-v", f"{spec.data_dir}:/data",
                "-p", f"127.0.0.1:{spec.port}:{spec.port}", self.image,
                "node", f"/foundry/{self.world.entry}", f"--port={spec.port}", "--dataPath=/data"]

        async def start() -> tuple[str, int]:
            self.own_containers.append(name)
            proc = await asyncio.create_subprocess_exec(*argv, env=self.podman_env, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"podman run failed: {err.decode().strip()}")
            return "127.0.0.1", spec.port

        try:
            return await timed(start, self.client)
        finally:
            await self.remove_own(name)

    async def remove_own(self, name: str) -> None:
        (await self.api.delete(f"/containers/{name}", params={"force": "true", "t": "0"})).raise_for_status()
        self.own_containers.remove(name)

    # 3. SIGKILL the server, then the supervisor's verbs until it answers again
    async def restart_after_crash(self, runtime: Runtime, config: FleetConfig, kind: str) -> Restart:
        spec = self.world.spec(config, kind)
        handle = await runtime.start_task(spec)
        address = await runtime.address(handle)
        await healthy(self.client, address.host, address.port)
        waiter = asyncio.create_task(runtime.wait_task(handle))
        await asyncio.sleep(0.2)  # the wait is under way, as the supervisor's always is
        (server,) = pids_with_arg(f"--port={spec.port}")
        began = time.perf_counter()
        os.kill(server, signal.SIGKILL)
        await asyncio.wait_for(waiter, 30)
        noticed = time.perf_counter()
        await runtime.destroy_task(handle)
        destroyed = time.perf_counter()
        handle = await runtime.start_task(spec)
        address = await runtime.address(handle)
        await healthy(self.client, address.host, address.port)
        done = time.perf_counter()
        await self.stop(runtime, handle)
        return Restart(done - began, noticed - began, destroyed - noticed, done - destroyed)


@dataclass(frozen=True)
class Restart:
    total: float
    noticed: float  # SIGKILL -> wait_task returned
    destroyed: float  # destroy_task
    healthy: float  # start_task -> healthy


# ----------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class Footprint:
    processes: list[str]  # "name pid"
    rss_kb: int
    pss_kb: int


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_status(int(entry.name))["PPid"].strip())
            except (OSError, KeyError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(tree.get(p, []))
    return found


def footprint(pids: list[int], server: int) -> Footprint:
    """What `pids` hold beyond the server itself (and its threads, which are the server's)."""
    extra = [p for p in dict.fromkeys(pids) if p != server]
    names = [f"{_status(p)['Name'].strip()} {p}" for p in extra]
    rss = sum(int(_status(p)["VmRSS"].split()[0]) for p in extra if "VmRSS" in _status(p))
    return Footprint(names, rss, sum(_pss_kb(p) for p in extra))


def local_extra(spec: TaskSpec, handle: TaskHandle, server: int) -> Footprint:
    """Bubblewrap's processes (the task's process group), its forwarder, its log writer."""
    task = LocalTask.of(handle)  # the local driver's own view of its processes
    group = _descendants(task.leader_pid, _children())
    forwarder = [task.net_pid] if task.net_pid else []
    log_dir = str(spec.log_dir).encode()
    writers = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _cmdline_has(e, log_dir)]
    return footprint(group + forwarder + writers, server)


def _cmdline_has(entry: Path, text: bytes) -> bool:
    try:
        return text in (entry / "cmdline").read_bytes()
    except OSError:
        return False


async def podman_extra(api: httpx.AsyncClient, container: str, server: int) -> Footprint:
    """conmon and everything under it but the server: the container's init."""
    info = (await api.get(f"/containers/{container}/json")).json()
    conmon = int(info["State"]["ConmonPid"])
    return footprint(_descendants(conmon, _children()), server)


def service_rss_kb(root: Path) -> int:
    socket = str(root / "run" / "podman").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _cmdline_has(entry, b"system\0service") and _cmdline_has(entry, socket):
            return int(_status(int(entry.name))["VmRSS"].split()[0])
    return 0


# ----------------------------------------------------------------------------- the run


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms (p90 {percentile(values, 90) * 1000:7.1f})"


async def run(rounds: int, idle: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="ff-bench-podman-", dir="/tmp"))
    world = make_world(work)
    local_config = fleet_config(work / "fleet-local", "local")
    podman_config = fleet_config(work / "fleet-podman", "podman")
    world.uid = local_config.instances.uid_range[0] + 7
    local, podman = make_runtime(local_config), make_runtime(podman_config)
    opened: list[Runtime] = []
    client = httpx.AsyncClient(trust_env=False)
    sock = podman_config.podman.socket or podman_config.paths.run / "podman" / "podman.sock"
    api = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://d/v4.0.0/libpod",
                            timeout=120)
    env = {**os.environ, "CONTAINERS_CONF": str(podman_config.paths.run / "podman" / "containers.conf")}
    bench = Bench(world, client, local, podman, local_config, podman_config, api, env, [], [])
    try:
        for runtime in (local, podman):
            for line in await runtime.open():
                print(f"  {runtime.name}: {'ok ' if line.available else 'NO '} {line.name}: {line.detail}")
            opened.append(runtime)
        # Warm-up, not counted: the first podman start builds (or finds) the node image.
        await bench.bare()
        await bench.runtime_start(local, local_config, "warm")
        _, warm_spec, warm = await bench.runtime_start(podman, podman_config, "warm", keep=True)
        container = f"foundry-fleet-{fleet_id(podman_config)}-{warm_spec.name}"  # the contract's name
        bench.image = (await api.get(f"/containers/{container}/json")).json()["ImageName"]
        await bench.stop(podman, warm)
        bench.handles.clear()
        await bench.podman_own()

        starts: dict[str, list[float]] = {"bare": [], "local": [], "podman": [], "own": [], "cli": []}
        for _ in range(rounds):
            starts["bare"].append(await bench.bare())
            starts["local"].append((await bench.runtime_start(local, local_config, "local"))[0])
            starts["podman"].append((await bench.runtime_start(podman, podman_config, "podman"))[0])
            starts["own"].append(await bench.podman_own())
            starts["cli"].append(await bench.podman_cli())

        # Memory: one idle instance of each.
        _, lspec, lhandle = await bench.runtime_start(local, local_config, "idle", keep=True)
        _, pspec, phandle = await bench.runtime_start(podman, podman_config, "idle", keep=True)
        await asyncio.sleep(idle)
        (lserver,) = pids_with_arg(f"--port={lspec.port}")
        (pserver,) = pids_with_arg(f"--port={pspec.port}")
        lmem = local_extra(lspec, lhandle, lserver)
        pmem = await podman_extra(api, f"foundry-fleet-{fleet_id(podman_config)}-{pspec.name}", pserver)
        server_rss = {k: int(_status(p)["VmRSS"].split()[0]) for k, p in (("local", lserver), ("podman", pserver))}
        service_kb = service_rss_kb(podman_config.root)
        for runtime, handle in bench.handles:
            await bench.stop(runtime, handle)
        bench.handles.clear()

        restarts: dict[str, list[Restart]] = {"local": [], "podman": []}
        for _ in range(rounds):
            restarts["local"].append(await bench.restart_after_crash(local, local_config, "crash"))
            restarts["podman"].append(await bench.restart_after_crash(podman, podman_config, "crash"))
    finally:
        for runtime, handle in bench.handles:
            try:
                await bench.stop(runtime, handle)
            except Exception as e:  # noqa: BLE001 - clean-up goes on with the rest
                print(f"clean-up: {handle.name}: {e}", file=sys.stderr)
        for name in list(bench.own_containers):
            await bench.remove_own(name)
        for runtime in opened:
            await runtime.close(instances_left_running=False)
        await client.aclose()
        await api.aclose()
        kill_processes_with(str(work))  # anything of this run still alive (none, when all went well)
        remove_groups(f"foundry-fleet-{fleet_id(local_config)}")  # the local runtime's (empty) parents
        remove_tree(work)

    med = {k: statistics.median(v) for k, v in starts.items()}
    print(f"machine: {describe()}")
    print(f"rounds: {rounds} of each, alternated; node {NODE}; image {bench.image}")
    print("create -> healthy (first 200 on /-/api/status, polled every 5 ms):")
    print(f"  (a) stand-in started directly (node)        : {ms(starts['bare'])}")
    print(f"  (b) local runtime: start_task -> healthy     : {ms(starts['local'])}")
    print(f"  (c) podman runtime: start_task -> healthy    : {ms(starts['podman'])}")
    print(f"  (d1) podman's own start (API create + start) : {ms(starts['own'])}")
    print(f"  (d2) podman's own start (`podman run -d`)    : {ms(starts['cli'])}")
    over = [c - d for c, d in zip(starts["podman"], starts["own"], strict=True)]
    print(f"  fleet overhead on podman (c) - (d1)          : median {statistics.median(over) * 1000:7.1f} ms "
          f"(of medians {(med['podman'] - med['own']) * 1000:.1f} ms; target <= 50 ms)")
    print(f"  local runtime overhead (b) - (a)             : {(med['local'] - med['bare']) * 1000:7.1f} ms")
    print(f"  ratios: podman/local {med['podman'] / med['local']:.2f}x, podman/bare {med['podman'] / med['bare']:.2f}x,"
          f" local/bare {med['local'] / med['bare']:.2f}x, podman runtime/podman's own {med['podman'] / med['own']:.2f}x")
    print(f"memory per idle instance beyond Foundry's own (after {idle:g} s idle; the server: local "
          f"{server_rss['local'] / 1024:.1f} MB, podman {server_rss['podman'] / 1024:.1f} MB RSS):")
    print(f"  local : {lmem.rss_kb / 1024:5.1f} MB RSS, {lmem.pss_kb / 1024:5.1f} MB PSS  ({', '.join(lmem.processes)})")
    print(f"  podman: {pmem.rss_kb / 1024:5.1f} MB RSS, {pmem.pss_kb / 1024:5.1f} MB PSS  ({', '.join(pmem.processes)})")
    print(f"  ratio podman/local (RSS): {pmem.rss_kb / max(lmem.rss_kb, 1):.2f}x; target <= 5 MB; the fleet's podman "
          f"service, shared by all instances: {service_kb / 1024:.1f} MB RSS")
    print("restart after a crash (SIGKILL -> wait_task -> destroy_task -> start_task -> healthy, no backoff):")
    for kind in ("local", "podman"):
        rows = restarts[kind]
        print(f"  {kind:6}: {ms([r.total for r in rows])}; of which, medians: exit noticed "
              f"{statistics.median(r.noticed for r in rows) * 1000:.1f} ms, destroy_task "
              f"{statistics.median(r.destroyed for r in rows) * 1000:.1f} ms, start_task -> healthy "
              f"{statistics.median(r.healthy for r in rows) * 1000:.1f} ms")
    ratio = statistics.median(r.total for r in restarts["podman"]) / statistics.median(r.total for r in restarts["local"])
    print(f"  ratio podman/local: {ratio:.2f}x")
    print(json.dumps({"starts_ms": {k: [round(x * 1000, 1) for x in v] for k, v in starts.items()},
                      "restarts_ms": {k: [round(r.total * 1000, 1) for r in v] for k, v in restarts.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7, help="rounds of each measurement (median of these)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds the idle instances idle before measuring")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: both runtimes run instances as their own uids, podman rootful")
    missing = [tool for tool in ("node", "podman", "runc", "bwrap", "slirp4netns") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (make test installs them)")
    asyncio.run(run(args.rounds, args.idle))


if __name__ == "__main__":
    main()
