"""The nomad runtime against the stand-in Nomad, with the local runtime as the anchor (issue 11, "Measure").

1. create -> healthy: the driver's start_task -> address -> the first 200 on /-/api/status, for
   (a) the local runtime (the anchor: the stand-in Nomad runs exec tasks through a LocalRuntime per
       node, so what the nomad figures add is the fleet's Nomad path),
   (b) the nomad runtime, first start of an instance: provisioning dispatched (fvtt-provision, the real
       `foundry-fleet nomad provision` laying the instance out on its node, the exec user made), its
       host volumes registered, its job registered, placed, the service registered and seen through
       the blocking-query view,
   (c) the nomad runtime, a restart: the same instance after stop_task + destroy_task, provisioned
       already (its volumes hold the release: no dispatch).
   Each round alternates (a), (b), (c). The local instance is laid out beforehand, untimed, by the same
   node-side code (as `instance create` lays it out before the supervisor starts it).
2. Nomad API calls: per start of (b) and (c), from NomadApi.calls and, by endpoint, from the stand-in's
   log of requests (the view's blocking queries that a change wakes count too); per `instance create`
   through the fleet daemon; and over an idle minute of a fleet daemon with 50 instances running
   (target: no polling: every idle request is a blocking query, i.e. 0 non-blocking ones).
3. A moved allocation -> the edge routing to it: a fleet daemon (tests/support make_fleet
   runtime="nomad") with real Caddy and an instance; its node goes down (the allocation is lost, its
   task killed) and comes back; Nomad places the replacement on the same node (the job is pinned where
   the data is) on a new dynamic port (the old one is held by a listener that closes every connection,
   so the port cannot be reused and a proxy to it fails at once). Timed from the stand-in registering
   the replacement's service (the moment its store's services index moves: "Nomad reports it") to the
   first 200 with Foundry's status JSON through Caddy at the tenant's host over HTTPS; also to the first
   200 straight from the task (its own start, which the edge cannot beat). Target <= 1 s.

Steps 3 then 2's idle minute share one fleet: 1 instance during the moves, then 49 more created one by
one through the CLI (memory_mb 128 each: the stand-in Foundry server is small), then the idle minute.
Needs root, node, bubblewrap, caddy (`make test` installs them).
Run: PYTHONPATH=$PWD/src .venv/bin/python bench/nomad_runtime.py [--rounds 7] [--moves 7] [--instances 50] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.config import FleetConfig, load_config  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402
from foundry_fleet.edge.process import find_caddy  # noqa: E402
from foundry_fleet.releases.cache import ReleaseCache  # noqa: E402
from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, Runtime, TaskHandle, TaskSpec  # noqa: E402
from foundry_fleet.runtime.nomad.driver import NomadRuntime  # noqa: E402
from foundry_fleet.runtime.nomad.provision_payload import ProvisionPayload  # noqa: E402
from foundry_fleet.services.exec_users import exec_user_name, remove_exec_user  # noqa: E402
from foundry_fleet.services.init import init_fleet  # noqa: E402
from foundry_fleet.services.node_provisioning import provision_on_node  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from foundry_fleet.wiring.drivers import make_storage  # noqa: E402
from foundry_fleet.wiring.runtimes import fleet_id, make_runtime  # noqa: E402
from tests.support.cgroups import remove_groups  # noqa: E402
from tests.support.edge_client import local_ca, tls_context  # noqa: E402
from tests.support.fleets import make_fleet, set_section  # noqa: E402
from tests.support.foundry_standin import NODE, STATUS_PATH, build_release_zip, free_port  # noqa: E402
from tests.support.harness import FleetHarness, kill_processes_with  # noqa: E402
from tests.support.nomad_standin import NomadStandin, StandinNode  # noqa: E402

VERSION = "13.345"
POLL = 0.005  # seconds between probes
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# ----------------------------------------------------------------------------- common


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms (p90 {percentile(values, 90) * 1000:7.1f})"


def is_blocking(query: dict[str, str]) -> bool:
    """A blocking query: Nomad holds it until its index moves (index 0 or none is answered at once)."""
    return query.get("index", "0") not in ("", "0")


def endpoint(method: str, path: str, query: dict[str, str]) -> str:
    """A request as its endpoint: ids and names replaced, blocking queries told apart."""
    path = re.sub(r"/fvtt-provision/dispatch-[^/]+", "/fvtt-provision/<dispatched>", path)
    path = re.sub(r"^/v1/job/fvtt-(?!provision(/|$))[^/]+", "/v1/job/fvtt-<name>", path)
    path = UUID.sub("<id>", path)
    return f"{method} {path}" + (" (blocking)" if is_blocking(query) else "")


def by_endpoint(calls: list[tuple[str, str, dict[str, str]]]) -> Counter[str]:
    return Counter(endpoint(*call) for call in calls)


async def first_200(client: httpx.AsyncClient, url: str, timeout: float = 60, **kwargs: Any) -> float:
    """perf_counter when `url` first answers 200 with Foundry's status JSON (its "version")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = await client.get(url, timeout=1, **kwargs)
            if answer.status_code == 200 and "version" in answer.json():
                return time.perf_counter()
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        await asyncio.sleep(POLL)


def exec_users() -> set[str]:
    return {entry.pw_name for entry in pwd.getpwall() if entry.pw_name.startswith("fvtt-u")}


def remove_new_exec_users(before: set[str], uids: set[int]) -> None:
    """The exec users this run made (for its instances' uids), not anyone else's."""
    for uid in uids:
        if exec_user_name(uid) not in before and exec_user_name(uid) in exec_users():
            remove_exec_user(uid)


# ----------------------------------------------------------------------------- 1. starts, in-process


def fleet_with_release(root: Path, zip_path: Path, runtime: str, nomad_url: str | None = None) -> FleetConfig:
    """A throw-away fleet configuration (as `init` writes it) holding the release; the runtime is built
    from it by make_runtime, as the daemon builds it."""
    path = init_fleet(root, runtime=runtime, nomad_address=nomad_url)
    h = FleetHarness(root=root, config=path)
    if runtime == "nomad":
        set_section(h, "nomad", {"task_driver": "exec"})
    h.cli("release", "add", str(zip_path))
    return load_config(path)


@dataclass
class Starts:
    local_config: FleetConfig
    nomad_config: FleetConfig
    local: Runtime
    nomad: NomadRuntime
    standin: NomadStandin
    client: httpx.AsyncClient
    count: int = 0
    uids: set[int] = field(default_factory=set)
    live: list[tuple[Runtime, TaskHandle]] = field(default_factory=list)
    api_calls: dict[str, list[int]] = field(default_factory=lambda: {"first": [], "restart": []})
    standin_calls: dict[str, list[Counter[str]]] = field(default_factory=lambda: {"first": [], "restart": []})
    registered: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # by record_registrations
    # per start, by kind: start_task, then address, then the first 200 (+ nomad: registered, view)
    stages: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {"local": [], "first": [], "restart": []})

    def spec(self, config: FleetConfig, kind: str) -> TaskSpec:
        self.count += 1
        name = f"bench-{kind}-{self.count}"
        uid = config.instances.uid_range[0] + 900 + self.count  # away from the uids tests give out first
        self.uids.add(uid)
        paths = make_storage(config).paths(name)
        release = ReleaseCache.from_config(config).get(VERSION)
        assert release is not None
        return TaskSpec(
            name=name, release=ReleaseToRun(VERSION, release.generation, paths.install, release.entry),
            data_dir=paths.data, shared_dir=make_storage(config).shared_dir(),
            log_dir=config.paths.instance_logs(name), port=free_port(), uid=uid, gid=uid,
            limits=ResourceLimits(memory_mb=config.limits.memory_mb, cpu_percent=config.limits.cpu_percent,
                                  pids=config.limits.pids),
            hosts=(config.host_for(name),))

    async def timed(self, runtime: Runtime, spec: TaskSpec, kind: str) -> tuple[float, TaskHandle]:
        began = time.perf_counter()
        handle = await runtime.start_task(spec)
        started = time.perf_counter()
        self.live.append((runtime, handle))
        address = await runtime.address(handle)
        addressed = time.perf_counter()
        done = await first_200(self.client, f"http://{address.host}:{address.port}{STATUS_PATH}")
        registered = [t for t, s in self.registered if s["JobID"] == f"fvtt-{spec.name}" and t > began]
        self.stages[kind].append({
            "start_task": started - began, "address": addressed - started, "healthy": done - addressed,
            # nomad only: when the stand-in registered the service (it has started the task), and how
            # long the view took to hand that on
            **({"registered": registered[-1] - began, "view": addressed - registered[-1]} if registered else {}),
        })
        return done - began, handle

    async def stop(self, runtime: Runtime, handle: TaskHandle) -> None:
        await runtime.stop_task(handle, timeout=5)
        await runtime.destroy_task(handle)
        self.live.remove((runtime, handle))

    async def local_start(self) -> float:
        spec = self.spec(self.local_config, "local")
        storage = make_storage(self.local_config)  # laid out as `instance create` does, untimed
        provision_on_node(self.local_config, "local", ProvisionPayload(spec.name, VERSION, "local", spec.uid,
                                                                       spec.port), storage=storage)
        took, handle = await self.timed(self.local, spec, "local")
        await self.stop(self.local, handle)
        return took

    async def nomad_starts(self) -> tuple[float, float]:
        """The first start of a new instance (provisioned on the way), then its restart."""
        spec = self.spec(self.nomad_config, "nomad")
        results = []
        for kind in ("first", "restart"):
            api_before, log_before = self.nomad.api.calls, len(self.standin.calls)
            took, handle = await self.timed(self.nomad, spec, kind)
            self.api_calls[kind].append(self.nomad.api.calls - api_before)
            self.standin_calls[kind].append(by_endpoint(self.standin.calls[log_before:]))
            await self.stop(self.nomad, handle)
            results.append(took)
        return results[0], results[1]


async def measure_starts(work: Path, zip_path: Path, rounds: int) -> dict[str, Any]:
    nodes = [StandinNode("node-a", "127.0.0.1", memory_mb=8192), StandinNode("node-b", "127.0.0.2", memory_mb=8192)]
    users_before = exec_users()
    with NomadStandin(work / "nomad", nodes) as standin:
        local_config = fleet_with_release(work / "fleet-local", zip_path, "local")
        nomad_config = fleet_with_release(work / "fleet-nomad", zip_path, "nomad", standin.url)
        local, nomad = make_runtime(local_config), make_runtime(nomad_config)
        assert isinstance(nomad, NomadRuntime)
        client = httpx.AsyncClient(trust_env=False)
        bench = Starts(local_config, nomad_config, local, nomad, standin, client,
                       registered=record_registrations(standin))
        opened: list[Runtime] = []
        try:
            for runtime in (local, nomad):
                for line in await runtime.open():
                    print(f"  {runtime.name}: {'ok ' if line.available else 'NO '} {line.name}: {line.detail}")
                opened.append(runtime)
            # Warm-up, not counted: the first of each loads what every later one finds cached.
            await bench.local_start()
            await bench.nomad_starts()
            for kind in bench.stages:
                bench.stages[kind].clear()
            for kind in bench.api_calls:
                bench.api_calls[kind].clear()
                bench.standin_calls[kind].clear()
            times: dict[str, list[float]] = {"local": [], "first": [], "restart": []}
            for _ in range(rounds):
                times["local"].append(await bench.local_start())
                first, restart = await bench.nomad_starts()
                times["first"].append(first)
                times["restart"].append(restart)
        finally:
            for runtime, handle in list(bench.live):
                try:
                    await bench.stop(runtime, handle)
                except Exception as e:  # noqa: BLE001 - clean-up goes on with the rest
                    print(f"clean-up: {handle.name}: {e}", file=sys.stderr)
            for runtime in opened:
                await runtime.close(instances_left_running=False)
            await client.aclose()
    kill_processes_with(str(work))
    remove_groups(f"foundry-fleet-{fleet_id(local_config)}")
    remove_new_exec_users(users_before, bench.uids)
    return {"times": times, "api_calls": bench.api_calls, "standin_calls": bench.standin_calls,
            "stages": bench.stages}


# ----------------------------------------------------------------------------- 3. moves, 2. creates and idle


class PortHolder:
    """Listens on a port a lost task left, closing every connection at once: the replacement cannot
    take that port again, and a proxy still pointed there fails fast instead of waiting."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> PortHolder:
        async def close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        self.server = await asyncio.start_server(close, self.host, self.port, reuse_address=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@dataclass(frozen=True)
class Move:
    placed: float  # node up -> the replacement's service registered (the stand-in's own scheduling)
    edge: float  # registered -> first 200 through Caddy: the figure with the target
    task: float  # registered -> first 200 from the task itself (its own start)
    edge_after_task: float  # first 200 from the task -> first 200 through Caddy


@dataclass
class FleetRun:
    h: FleetHarness
    registered: list[tuple[float, dict[str, Any]]]  # (perf_counter, service) as the stand-in registers them

    def registrations(self, job_id: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, s) for t, s in self.registered if s["JobID"] == job_id]


def record_registrations(standin: NomadStandin) -> list[tuple[float, dict[str, Any]]]:
    """When the stand-in registers each service: wraps its cluster's registration (in its own thread),
    so the time is taken the moment the store's services index moves."""
    cluster = standin.cluster
    original = cluster._register_services
    seen: list[tuple[float, dict[str, Any]]] = []

    def recording(alloc: dict[str, Any], node: Any, group: dict[str, Any], task: dict[str, Any]) -> None:
        original(alloc, node, group, task)
        now = time.perf_counter()
        seen.extend((now, dict(s)) for s in list(cluster.store.services.values()) if s["AllocID"] == alloc["ID"])

    cluster._register_services = recording
    return seen


async def one_move(run: FleetRun, edge: httpx.AsyncClient, direct: httpx.AsyncClient, name: str,
                   https_port: int) -> Move:
    nomad = run.h.nomad
    _, current = run.registrations(f"fvtt-{name}")[-1]
    node = nomad.cluster.nodes[current["NodeID"]].name
    await asyncio.to_thread(nomad.set_node_down, node)  # its allocation is lost, its task killed
    async with PortHolder(current["Address"], current["Port"]):
        await asyncio.sleep(1.0)  # down for a while, as a node that went away
        known = len(run.registered)
        up = time.perf_counter()
        host = f"{name}.localhost"
        through_edge = asyncio.create_task(first_200(
            edge, f"https://127.0.0.1:{https_port}{STATUS_PATH}", headers={"Host": host},
            extensions={"sni_hostname": host}))
        await asyncio.to_thread(nomad.set_node_up, node)

        def replacement() -> tuple[float, dict[str, Any]] | None:
            for t, s in run.registered[known:]:
                if s["JobID"] == f"fvtt-{name}":
                    return t, s
            return None

        deadline = time.monotonic() + 60
        while (found := replacement()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new registration of {name} within 60 s")
            await asyncio.sleep(POLL)
        registered, service = found
        assert (service["Address"], service["Port"]) != (current["Address"], current["Port"]), "not moved"
        task_ok = await first_200(direct, f"http://{service['Address']}:{service['Port']}{STATUS_PATH}")
        edge_ok = await through_edge
        # The edge's answer must come from the new task: its first 200 is after the registration.
        assert edge_ok > registered, "the edge answered 200 before the replacement was registered"
    return Move(registered - up, edge_ok - registered, task_ok - registered, edge_ok - task_ok)


def create_timed(run: FleetRun, name: str) -> tuple[float, Counter[str]]:
    """`instance create` through the CLI until the daemon reports it running; the Nomad requests meanwhile."""
    before = len(run.h.nomad.calls)
    began = time.perf_counter()
    run.h.cli("instance", "create", name, "--release", VERSION, "--json")
    run.h.wait_state(name, "running", timeout=120)
    took = time.perf_counter() - began
    return took, by_endpoint(run.h.nomad.calls[before:])


async def measure_fleet(work: Path, zip_path: Path, moves: int, instances: int, idle: float) -> dict[str, Any]:
    users_before = exec_users()
    # Small instances (the stand-in server is small): 50 of them fit the stand-in's two 4096 MB nodes.
    h = make_fleet(work, runtime="nomad", **{"memory_mb = 2048": "memory_mb = 128"})
    uids: set[int] = set()
    try:
        # make_fleet gives instances and Nomad's dynamic ports 50 ports of the fleet's block of 100;
        # the moves' held port and `instances` ask for a few more (offsets up to 79 are the fleet's own).
        low, _ = h.nomad.port_range
        h.edit_config(f"port_range = [{low}, {low + 49}]", f"port_range = [{low}, {low + 79}]")
        h.nomad.port_range = h.nomad.cluster.port_range = (low, low + 79)
        run = FleetRun(h, record_registrations(h.nomad))
        h.cli("release", "add", str(zip_path))
        h.up()
        config = h.settings()
        https_port = config.edge.https_port
        creates: list[float] = []
        create_calls: list[Counter[str]] = []
        took, calls = create_timed(run, "alice")
        creates.append(took)
        create_calls.append(calls)
        uids.add(h.instance("alice")["uid"])
        moved: list[Move] = []
        async with httpx.AsyncClient(verify=tls_context(local_ca(h.root)), trust_env=False) as edge, \
                httpx.AsyncClient(trust_env=False) as direct:
            await first_200(edge, f"https://127.0.0.1:{https_port}{STATUS_PATH}",
                            headers={"Host": "alice.localhost"}, extensions={"sni_hostname": "alice.localhost"})
            for _ in range(moves):
                moved.append(await one_move(run, edge, direct, "alice", https_port))
        for i in range(1, instances):
            name = f"i{i:03d}"
            took, calls = await asyncio.to_thread(create_timed, run, name)
            creates.append(took)
            create_calls.append(calls)
            uids.add(h.instance(name)["uid"])
        running = [row for row in h.cli("instance", "list", "--json").json() if row["state"] == "running"]
        processes = sum(1 for s in h.nomad.services if s["ServiceName"] == "fvtt-instance")
        await asyncio.sleep(5)  # settled: every start's last view answer is in
        before = len(h.nomad.calls)
        began = time.perf_counter()
        await asyncio.sleep(idle)
        idle_calls = h.nomad.calls[before:]
        idle_took = time.perf_counter() - began
        return {"creates": creates, "create_calls": create_calls, "moves": moved, "running": len(running),
                "registered": processes, "idle_calls": idle_calls, "idle_seconds": idle_took}
    finally:
        h.tear_down()
        remove_new_exec_users(users_before, uids)


# ----------------------------------------------------------------------------- the run


def calls_table(counters: list[Counter[str]]) -> list[str]:
    """Median count per endpoint over the runs (every endpoint seen at least once)."""
    names = sorted({e for c in counters for e in c})
    rows = [f"    {statistics.median(c.get(e, 0) for c in counters):5.1f}  {e}" for e in names]
    totals = [sum(c.values()) for c in counters]
    blocking = [sum(n for e, n in c.items() if e.endswith("(blocking)")) for c in counters]
    rows.append(f"    total median {statistics.median(totals):.1f} (min {min(totals)}, max {max(totals)}); of which "
                f"blocking queries a change woke and the view re-asked: median {statistics.median(blocking):.1f}")
    return rows


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="ff-bench-nomad-", dir="/tmp"))
    work.chmod(0o755)  # tasks running as their own uids walk into it
    try:
        zip_path = build_release_zip(work / "zips", ReleaseLayout.NODE, 13, 345)
        starts = await measure_starts(work / "starts", zip_path, args.rounds)
        fleet = await measure_fleet(work / "fleet-run", zip_path, args.moves, args.instances, args.idle)
    finally:
        kill_processes_with(str(work))
        remove_tree(work)

    t = starts["times"]
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"machine: {describe()}")
    print(f"load average at the end: {' '.join(os.getloadavg().__repr__().strip('()').split(', '))}")
    print(f"rounds: {args.rounds}, alternated; node {NODE}; stand-in Nomad with 2 nodes, exec task driver")
    print("1. create -> healthy (start_task -> address -> first 200 on /-/api/status, polled every 5 ms):")
    print(f"  (a) local runtime                                 : {ms(t['local'])}")
    print(f"  (b) nomad runtime, first start (with provisioning) : {ms(t['first'])}")
    print(f"  (c) nomad runtime, restart (provisioned already)   : {ms(t['restart'])}")
    print(f"  nomad overhead over local: first start {(med['first'] - med['local']) * 1000:.1f} ms "
          f"({med['first'] / med['local']:.2f}x), restart {(med['restart'] - med['local']) * 1000:.1f} ms "
          f"({med['restart'] / med['local']:.2f}x); provisioning (b) - (c) {(med['first'] - med['restart']) * 1000:.1f} ms")
    within = [c - a for c, a in zip(t["restart"], t["local"], strict=True)]
    print(f"  restart - local within each round: median {statistics.median(within) * 1000:.1f} ms")
    print("  where the time goes, medians: start_task returns / then address returns / then the first 200;")
    print("  nomad: [the stand-in registers the service (task started), from the start / then the view hands it on]")
    for kind, label in (("local", "(a)"), ("first", "(b)"), ("restart", "(c)")):
        rows = starts["stages"][kind]

        def part(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows) * 1000

        nomad_parts = f"  [{part('registered'):7.1f} / {part('view'):5.1f}]" if kind != "local" else ""
        print(f"  {label} {part('start_task'):7.1f} / {part('address'):6.1f} / {part('healthy'):6.1f} ms{nomad_parts}")
    print("2. Nomad API calls")
    for kind, label in (("first", "first start"), ("restart", "restart")):
        counts = starts["api_calls"][kind]
        print(f"  per nomad {label}: NomadApi.calls median {statistics.median(counts):.0f} "
              f"(min {min(counts)}, max {max(counts)}); the stand-in's log by endpoint (median per start):")
        for row in calls_table(starts["standin_calls"][kind]):
            print(row)
    creates = fleet["creates"]
    print(f"  per `instance create` through the fleet daemon ({len(creates)} creates, CLI -> running: "
          f"{ms(creates)}), the stand-in's log by endpoint (median per create):")
    for row in calls_table(fleet["create_calls"]):
        print(row)
    idle_calls = fleet["idle_calls"]
    minutes = fleet["idle_seconds"] / 60
    blocking = [c for c in idle_calls if is_blocking(c[2])]
    other = [c for c in idle_calls if not is_blocking(c[2])]
    print(f"  idle, {fleet['running']} instances running ({fleet['registered']} services registered), "
          f"{fleet['idle_seconds']:.1f} s: {len(other)} non-blocking requests (target 0), "
          f"{len(blocking)} blocking queries = {len(blocking) / minutes:.2f} per minute")
    for name, n in sorted(by_endpoint(idle_calls).items()):
        print(f"    {n:5d}  {name}")
    waits = sorted({c[2].get("wait", "") for c in blocking})
    print(f"    (blocking queries' wait: {', '.join(waits) or 'none started in the window'}; the view holds one "
          "on /v1/allocations and one on /v1/service/fvtt-instance, each re-asked only when answered)")
    moves: list[Move] = fleet["moves"]
    print(f"3. a moved allocation -> the edge routing to it ({len(moves)} moves: node down 1 s, node up, "
          "replacement on a new port):")
    print(f"  node up -> replacement's service registered    : {ms([m.placed for m in moves])}")
    print(f"  registered -> first 200 from the task itself    : {ms([m.task for m in moves])}")
    print(f"  registered -> first 200 through Caddy (target <= 1 s): {ms([m.edge for m in moves])}; "
          f"max {max(m.edge for m in moves) * 1000:.1f} ms")
    print(f"  task's first 200 -> Caddy's first 200           : {ms([m.edge_after_task for m in moves])}")
    print(json.dumps({"starts_ms": {k: [round(x * 1000, 1) for x in v] for k, v in t.items()},
                      "api_calls": starts["api_calls"],
                      "creates_ms": [round(x * 1000, 1) for x in creates],
                      "moves_ms": [{"placed": round(m.placed * 1000, 1), "edge": round(m.edge * 1000, 1),
                                    "task": round(m.task * 1000, 1)} for m in moves],
                      "idle": {"seconds": round(fleet["idle_seconds"], 1), "blocking": len(blocking),
                               "non_blocking": len(other)}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7, help="rounds of the starts (median of these)")
    ap.add_argument("--moves", type=int, default=7, help="allocation moves timed through the edge")
    ap.add_argument("--instances", type=int, default=50, help="instances running during the idle minute")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle counted (a real minute by default)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: instances run as their own uids (and the exec driver's users are made)")
    missing = [tool for tool in ("node", "bwrap", "useradd") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (make test installs them)")
    find_caddy(None)  # the fleet's own Caddy, for the moves through the edge
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
