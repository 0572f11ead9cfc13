"""The nomad runtime against the stand-in Nomad: two nodes on two loopback addresses, exec tasks that
really run the stand-in Foundry server through the local runtime, and a provisioning job whose
dispatches really run (a small program here that lays an instance out as the node-side command does,
and fails on request with its own stderr).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
import tempfile
import textwrap
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from foundry_fleet.domain.crash_policy import CrashPolicy
from foundry_fleet.domain.errors import ExternalFailure, NotFound
from foundry_fleet.runtime.base import (
    Address, ReleaseToRun, ResourceLimits, RuntimeUnavailable, TaskHandle, TaskSpec,
)
from foundry_fleet.runtime.nomad.api import NomadSettings
from foundry_fleet.runtime.nomad.driver import NomadRuntime
from foundry_fleet.runtime.nomad.jobs import JobSettings
from foundry_fleet.runtime.nomad.provision_payload import ProvisionPayload
from foundry_fleet.services import uid_claims
from foundry_fleet.services.exec_users import ensure_exec_user, remove_exec_user
from tests.support.foundry_standin import standin_source_dir
from tests.support.nomad_standin import NomadStandin, StandinNode
from tests.support.releases import package_json

NODE = shutil.which("node")  # the suite needs node, bubblewrap and root (as the local runtime's tests)
pytestmark = pytest.mark.timeout(180)

STATUS = "/-/api/status"
FLEET = "t3stflt"

# What the node-side `foundry-fleet nomad provision` does, in small: on the node named in the payload
# only, lay out the instance's install tree and data under the fleet root next to the config file.
PROVISION = textwrap.dedent('''\
    #!{python}
    import json, os, shutil, sys
    args = sys.argv[1:]
    config, node, payload = (args[args.index(flag) + 1] for flag in ("--config", "--node-id", "--payload"))
    job = json.load(open(payload))
    if job["node"] != node:
        sys.exit(0)  # a sysbatch dispatch runs on every node: only the named one acts
    root = os.path.dirname(config)
    with open(os.path.join(root, "provisions.log"), "a") as log:
        log.write(f"{{job['instance']}} {{job['release']}} {{node}}\\n")
    if job["instance"].startswith("broken"):
        print("laying out", job["instance"])
        print(f"cannot lay out {{job['instance']}}: no space left on the node's pool", file=sys.stderr)
        sys.exit(3)
    home = os.path.join(root, "instances", job["instance"])
    install, data = os.path.join(home, "install"), os.path.join(home, "data")
    os.makedirs(install, exist_ok=True)
    for name in ("main.js", "server.cjs"):
        shutil.copy(os.path.join({sources!r}, name), install)
    open(os.path.join(install, "package.json"), "wb").write({package!r})
    os.makedirs(os.path.join(data, "Config"), exist_ok=True)
    json.dump({{"routePrefix": "-"}}, open(os.path.join(data, "Config", "options.json"), "w"))
    for top, dirs, files in os.walk(data):  # the data is the instance's uid's, as on a real node
        for entry in [top, *(os.path.join(top, f) for f in files)]:
            os.chown(entry, job["uid"], job["uid"])
''')


# The exec task driver runs each instance as the system user fvtt-u<uid>, which the node-side command
# makes; here the tests make them (in a block of uids claimed for the test's root) and remove them.
_EXEC_UIDS: dict[Path, int] = {}
_MADE_USERS: set[int] = set()


@pytest.fixture
def root() -> Iterator[Path]:
    # Under /tmp with 0755: the tasks walk into it (pytest's tmp_path is 0700).
    path = Path(tempfile.mkdtemp(prefix="ff-nomad-driver-"))
    path.chmod(0o755)
    _EXEC_UIDS[path] = uid_claims.choose_block(path)[0]
    (path / "shared").mkdir()
    provision = path / "provision"
    provision.write_text(PROVISION.format(python=sys.executable, sources=str(standin_source_dir()),
                                          package=package_json()))
    provision.chmod(0o755)
    yield path
    for uid in sorted(_MADE_USERS):
        remove_exec_user(uid)
    _MADE_USERS.clear()
    del _EXEC_UIDS[path]
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nomad(root: Path) -> Iterator[NomadStandin]:
    nodes = [StandinNode("node-a", "127.0.0.1", memory_mb=8192), StandinNode("node-b", "127.0.0.2", memory_mb=4096)]
    with NomadStandin(root / "nomad", nodes) as standin:
        yield standin


def runtime_for(nomad: NomadStandin, root: Path, node_homes: dict[str, str] | None = None,
                **crash: float) -> NomadRuntime:
    jobs = JobSettings(fleet_id=FLEET, task_driver="exec", python=str(root / "provision"),
                       config_path=root / "fleet.toml", stop_timeout=2.0,
                       crash_policy=CrashPolicy(**crash) if crash else CrashPolicy())
    return NomadRuntime(NomadSettings(nomad.url, retries=1, backoff=0.05, timeout=5.0), jobs,
                        node_binary=lambda generation: str(NODE), wait=30.0, place_timeout=15.0,
                        provision_timeout=60.0, address_timeout=60.0, view_backoff=0.1, node_homes=node_homes)


def spec(root: Path, name: str, memory: int | None = None, node: str | None = None,
         storage: str | None = None) -> TaskSpec:
    home = root / "instances" / name
    uid = _EXEC_UIDS[root] + zlib.crc32(name.encode()) % 1000
    if ensure_exec_user(uid) is not None:
        _MADE_USERS.add(uid)
    return TaskSpec(name=name, release=ReleaseToRun("13.345", 13, home / "install", "main.js"),
                    data_dir=home / "data", shared_dir=root / "shared", log_dir=root / "logs" / name, port=0,
                    uid=uid, gid=uid, limits=ResourceLimits(memory_mb=memory), hosts=(f"{name}.fleet.test",),
                    node=node, storage=storage)


def provisions(root: Path) -> list[str]:
    log = root / "provisions.log"
    return log.read_text().splitlines() if log.exists() else []


async def status_at(address: Address) -> dict:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                answer = await http.get(f"http://{address}{STATUS}", timeout=2)
                if answer.status_code == 200:
                    return answer.json()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing answered at {address}")


def test_tasks_start_on_the_roomiest_node_answer_there_and_are_provisioned_once_per_release(
        nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        lines = await runtime.open()
        assert [line.name for line in lines if line.available] == \
            ["nomad", "nomad-nodes", "nomad-task-driver", "nomad-provision"], lines
        try:
            node_a, node_b = nomad.node_id("node-a"), nomad.node_id("node-b")
            alice = await runtime.start_task(spec(root, "alice", memory=5000))
            assert alice.state["node_id"] == node_a and alice.state["job_id"] == "fvtt-alice"
            address = await runtime.address(alice)
            assert address.host == "127.0.0.1"
            assert (await status_at(address))["version"] == "13.345"
            assert provisions(root) == [f"alice 13.345 {node_a}"]
            (child,) = [j for i, j in nomad.jobs.items() if i.startswith("fvtt-provision/")]
            assert {"instance": "alice", "release": "13.345", "node": node_a}.items() <= child["Meta"].items()
            assert ProvisionPayload.from_bytes(base64.b64decode(child["Payload"])) == \
                ProvisionPayload("alice", "13.345", node_a, uid=spec(root, "alice").uid)
            job = nomad.jobs["fvtt-alice"]
            assert job["Constraints"][0]["RTarget"] == node_a
            assert job["TaskGroups"][0]["Services"][0]["Tags"] == [f"fleet={FLEET}", "instance=alice",
                                                                    "host=alice.fleet.test"]
            # node-a has 8192 - 5000 MB left, node-b 4096: bob goes to node-b, on its own address.
            bob = await runtime.start_task(spec(root, "bob"))
            assert bob.state["node_id"] == node_b
            bob_address = await runtime.address(bob)
            assert bob_address.host == "127.0.0.2" and (await status_at(bob_address))["version"] == "13.345"
            nodes = {n.name: n for n in await runtime.nodes()}
            assert (nodes["node-a"].address, nodes["node-a"].healthy, nodes["node-a"].instances,
                    nodes["node-a"].free_memory_mb) == ("127.0.0.1", True, 1, 8192 - 5000)
            assert (nodes["node-b"].instances, nodes["node-b"].free_memory_mb) == (1, 4096 - 300)
            # Idle: nothing but the view's blocking queries, each asking from the index it last saw.
            seen = len(nomad.calls)
            await asyncio.sleep(1.5)
            idle = nomad.calls[seen:]
            assert len(idle) <= 3 and all(method == "GET" and "index" in query and "wait" in query
                                          for method, _, query in idle), idle
            # Stopped and started again with the same release: no second provisioning, same node.
            await runtime.stop_task(alice, timeout=2.0)
            await runtime.destroy_task(alice)
            assert "fvtt-alice" not in nomad.jobs
            before = len(nomad.calls)
            again = await runtime.start_task(spec(root, "alice", memory=5000))
            volume_reads = [path for method, path, _ in nomad.calls[before:]
                            if method == "GET" and path.startswith(("/v1/volumes", "/v1/volume/"))]
            assert len(volume_reads) == 2, volume_reads  # the namespace's list, and the install's release
            assert again.state["node_id"] == node_a and provisions(root) == [f"alice 13.345 {node_a}",
                                                                              f"bob 13.345 {node_b}"]
            assert (await status_at(await runtime.address(again)))["version"] == "13.345"
            assert {e.action for e in runtime.take_events()} == {"provisioned"}
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_a_failed_provisioning_is_reported_with_the_tasks_own_stderr(nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            with pytest.raises(ExternalFailure) as info:
                await runtime.start_task(spec(root, "broken"))
            assert info.value.message.startswith("provisioning broken on node node-a failed: ")
            assert "cannot lay out broken: no space left on the node's pool" in info.value.message
            assert "fvtt-broken" not in nomad.jobs  # never registered: nothing to place
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_a_new_control_plane_recovers_its_tasks_and_purges_strays(nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        first = runtime_for(nomad, root)
        await first.open()
        alice = await first.start_task(spec(root, "alice"))
        await first.start_task(spec(root, "stray"))
        address = await first.address(alice)
        await first.close(instances_left_running=True)

        second = runtime_for(nomad, root)
        await second.open()
        try:
            # Nothing recovered yet, so nothing of the jobs' own sizes is known here: the allocations
            # Nomad lists tell what each holds.
            nodes = {n.name: n for n in await second.nodes()}
            assert (nodes["node-a"].instances, nodes["node-a"].free_memory_mb) == (2, 8192 - 2 * 300)
            recovered = await second.recover_task(TaskHandle.from_dict(alice.to_dict()))
            assert recovered is not None and recovered.state["alloc_id"] == alice.state["alloc_id"]
            assert await second.address(recovered) == address and (await status_at(address))["version"]
            assert await second.forget_unknown({"alice"}) == ["stray"]
            assert "fvtt-stray" not in nomad.jobs and "fvtt-alice" in nomad.jobs
            (event,) = second.take_events()
            assert (event.name, event.action) == ("stray", "strays") and "fvtt-stray" in event.message
            # A job gone while the control plane was down: nothing to recover.
            await second.destroy_task(recovered)
            assert await second.recover_task(recovered) is None
        finally:
            await second.close(instances_left_running=False)

    asyncio.run(main())


def test_stats_are_what_nomads_client_measured_and_none_once_stopped(nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            alice = await runtime.start_task(spec(root, "alice", memory=512))
            await status_at(await runtime.address(alice))
            first = await runtime.task_stats(alice)
            # Nomad gives no CPU total, only its own percent: 0 at a task's first sample (no interval yet).
            assert first is not None and (first.cpu_seconds, first.cpu_percent) == (None, 0.0)
            assert first.memory_bytes > 4 * 1024 * 1024 and first.memory_limit_bytes == 512 * 1024 * 1024
            await asyncio.sleep(0.2)
            second = await runtime.task_stats(alice)
            assert second is not None and second.cpu_percent is not None and second.cpu_percent >= 0
            stats_of = f"/v1/client/allocation/{alice.state['alloc_id']}/stats"
            async with httpx.AsyncClient(base_url=nomad.url) as http:
                unknown = await http.get("/v1/client/allocation/7d5e8c43-0000-4000-8000-000000000000/stats")
                assert (unknown.status_code, unknown.text) == \
                    (404, 'Unknown allocation "7d5e8c43-0000-4000-8000-000000000000"')
                await runtime.stop_task(alice, timeout=2.0)
                assert await runtime.task_stats(alice) is None
                # Nomad's client still holds the allocation: its task's last sample, nothing summed, no time.
                ended = (await http.get(stats_of)).json()
                assert ended["Timestamp"] == 0 and ended["ResourceUsage"]["MemoryStats"]["Usage"] == 0
                assert ended["Tasks"]["foundry"]["ResourceUsage"]["MemoryStats"]["Usage"] > 0
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_a_lost_node_is_no_exit_and_its_replacement_is_told_as_a_new_address(nomad: NomadStandin,
                                                                              root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            alice = await runtime.start_task(spec(root, "alice"))
            old = await runtime.address(alice)
            await status_at(old)
            exit_ = asyncio.create_task(runtime.wait_task(alice))
            moved = asyncio.create_task(runtime.watch_address(alice, old))
            await asyncio.to_thread(nomad.set_node_down, "node-a")
            await asyncio.sleep(1.0)
            assert not exit_.done() and not moved.done()  # lost: Nomad replaces it where its data is
            assert await runtime.task_stats(alice) is None
            async with httpx.AsyncClient(base_url=nomad.url) as http:
                lost = await http.get(f"/v1/client/allocation/{alice.state['alloc_id']}/stats")
            assert (lost.status_code, lost.text) == (404, "No path to node")
            nodes = {n.name: n for n in await runtime.nodes()}
            assert (nodes["node-a"].healthy, nodes["node-a"].status) == (False, "down")
            # alice's data is on node-a: she cannot start anywhere else, and says why (for now).
            with pytest.raises(RuntimeUnavailable) as info:
                await runtime.start_task(spec(root, "alice"))
            assert info.value.message == "node node-a, which holds the data of alice, is down"
            # Meanwhile a new instance goes to the node that is up, and takes the lowest free port.
            bob = await runtime.start_task(spec(root, "bob"))
            assert bob.state["node_id"] == nomad.node_id("node-b")
            await asyncio.to_thread(nomad.set_node_up, "node-a")
            new = await asyncio.wait_for(moved, 60)
            assert new.host == "127.0.0.1" and new != old
            assert (await status_at(new))["version"] == "13.345"
            assert not exit_.done()
            exit_.cancel()
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_a_task_nomad_gave_up_on_exits_with_gave_up_and_nomads_reason(nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root, max_crashes=1, backoff_initial=0.1, window=60.0)
        await runtime.open()
        try:
            (root / "instances" / "alice" / "data").mkdir(parents=True)
            (root / "instances" / "alice" / "data" / "crash-on-start").write_text("")
            alice = await runtime.start_task(spec(root, "alice"))
            result = await asyncio.wait_for(runtime.wait_task(alice), 60)
            assert result.gave_up and result.exit_code == 3
            assert result.describe().startswith("Nomad gave up after 1 restart: ")
            assert "Exceeded allowed attempts 1" in result.describe()
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_a_placement_failure_names_nomads_reason(nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            with pytest.raises(ExternalFailure) as info:
                await runtime.start_task(spec(root, "huge", memory=100_000))
            assert info.value.message.startswith("Nomad could not place fvtt-huge: group foundry: 2 nodes evaluated")
            assert "exhausted memory" in info.value.message
            assert "fvtt-huge" not in nomad.jobs  # purged: no blocked evaluation places it later
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_nomad_down_is_a_clear_error(nomad: NomadStandin, root: Path) -> None:
    nomad.stop()

    async def main() -> None:
        runtime = runtime_for(nomad, root)
        lines = await runtime.open()
        try:
            assert not lines[0].available and f"Nomad at {nomad.url} did not answer" in lines[0].detail
            with pytest.raises(RuntimeUnavailable) as info:  # the supervisor tries again later
                await runtime.start_task(spec(root, "alice"))
            assert f"Nomad at {nomad.url} did not answer" in info.value.message
            assert info.value.hint and "is Nomad running" in info.value.hint
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())
    assert json.dumps(provisions(root)) == "[]"


def test_forgetting_an_instance_purges_its_job_and_deregisters_its_volumes_only(nomad: NomadStandin,
                                                                               root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            await runtime.start_task(spec(root, "alice"))
            await runtime.start_task(spec(root, "bob"))
            runtime.take_events()
            before = {(v["Name"], v["NodeID"]) for v in await runtime.api.host_volumes()}
            node_a = nomad.node_id("node-a")
            assert {("fvtt-alice-data", node_a), ("fvtt-alice-install", node_a)} <= before
            # Still running (a removal interrupted before its stop): the job goes first, then its volumes.
            await runtime.forget_instance("alice")
            assert "fvtt-alice" not in nomad.jobs and "fvtt-bob" in nomad.jobs
            after = {(v["Name"], v["NodeID"]) for v in await runtime.api.host_volumes()}
            assert after == before - {("fvtt-alice-data", node_a), ("fvtt-alice-install", node_a)}
            assert (f"fvtt-{FLEET}-shared", node_a) in after  # the fleet's, for every instance on the node
            (event,) = runtime.take_events()
            assert (event.name, event.action, event.message) == (
                "alice", "released", "deregistered the Nomad host volumes fvtt-alice-data, fvtt-alice-install "
                                     "on node node-a")
            await runtime.forget_instance("alice")  # nothing left: nothing done, nothing said
            assert runtime.take_events() == []
            # A new alice is laid out afresh (its data was deleted with it) and may go anywhere.
            again = await runtime.start_task(spec(root, "alice"))
            assert again.state["node_id"] == node_a
            assert provisions(root)[-1] == f"alice 13.345 {node_a}" and len(provisions(root)) == 3
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_a_log_is_followed_while_the_task_runs_and_read_by_name_after(nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            with pytest.raises(NotFound) as info:  # never started: Nomad has nothing of it
                [line async for line in runtime.logs("alice")]
            assert info.value.message == "Nomad keeps no log of alice: it has no allocation of fvtt-alice (any more)"
            alice = await runtime.start_task(spec(root, "alice"))
            address = await runtime.address(alice)
            await status_at(address)
            for _ in range(100):  # the server logs a request once it has answered it
                last = [line async for line in runtime.logs(alice, lines=1)]
                if "GET /-/api/status 200" in last[0]:
                    break
                await asyncio.sleep(0.05)
            seen: list[str] = []
            followed = asyncio.create_task(_collect(runtime.logs(alice, lines=1, follow=True), seen))
            await _until(lambda: len(seen) >= 1)
            async with httpx.AsyncClient() as http:
                await http.get(f"http://{address}{STATUS}?while-followed=1")
            await _until(lambda: len(seen) >= 2)
            await asyncio.sleep(0.3)
            # The last line so far, then what comes: each once.
            assert seen[0] == last[0] and len(seen) == 2 and "GET /-/api/status?while-followed=1 200" in seen[1]
            assert not followed.done()
            # Stopped: the stream ends with the task's last words, and so does the iteration.
            await runtime.stop_task(alice, timeout=2.0)
            await asyncio.wait_for(followed, 30)
            assert "SIGTERM received, shutting down" in seen[-1]
            # Its job purged, its allocation still known to Nomad: the log is still read by name.
            await runtime.destroy_task(alice)
            tail = [line async for line in runtime.logs("alice", lines=3)]
            assert tail == seen[-3:]
            assert [line async for line in runtime.logs("alice", lines=0, follow=True)] == []  # over: nothing comes
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


async def _collect(lines: AsyncIterator[str], into: list[str]) -> None:
    async for line in lines:
        into.append(line)


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition was not met in time")


def test_a_node_asked_for_places_a_new_instance_until_its_data_is_somewhere(nomad: NomadStandin,
                                                                            root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            node_b = nomad.node_id("node-b")
            bob = await runtime.start_task(spec(root, "bob", node="node-b"))  # node-a has more room
            assert bob.state["node_id"] == node_b and (await runtime.address(bob)).host == "127.0.0.2"
            await runtime.stop_task(bob, timeout=2.0)
            await runtime.destroy_task(bob)
            # Its data is on node-b now: that is where it runs (a node asked for since is a move).
            again = await runtime.start_task(spec(root, "bob"))
            assert again.state["node_id"] == node_b and provisions(root) == [f"bob 13.345 {node_b}"]
            await asyncio.to_thread(nomad.set_node_down, "node-b")
            with pytest.raises(RuntimeUnavailable) as info:  # for now: it starts there once node-b is back
                await runtime.start_task(spec(root, "carol", node="node-b"))
            assert info.value.message == "node node-b, which carol was placed on at create, is down"
            assert "fvtt-carol" not in nomad.jobs and len(provisions(root)) == 1
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def _volumes_of(runtime: NomadRuntime, nomad: NomadStandin, name: str) -> Callable[[], Awaitable[set[tuple[str, str]]]]:
    names = {n: nomad.node_id(n) for n in ("node-a", "node-b")}
    by_id = {v: k for k, v in names.items()}

    async def volumes() -> set[tuple[str, str]]:
        return {(str(v["Name"]).removeprefix(f"fvtt-{name}-"), by_id[v["NodeID"]])
                for v in await runtime.api.host_volumes() if str(v["Name"]).startswith(f"fvtt-{name}-")}

    return volumes


def _active_allocs(nomad: NomadStandin, job_id: str) -> list[dict]:
    return [a for a in nomad.allocations.values()
            if a["JobID"] == job_id and a["ClientStatus"] in ("pending", "running")]


def test_a_start_asked_on_another_node_than_its_volumes_moves_them_there(nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            node_a, node_b = nomad.node_id("node-a"), nomad.node_id("node-b")
            volumes = _volumes_of(runtime, nomad, "alice")
            alice = await runtime.start_task(spec(root, "alice", node="node-a"))
            assert alice.state["node_id"] == node_a and await runtime.data_node("alice") == "node-a"
            (root / "instances" / "alice" / "data" / "marker.txt").write_text("kept\n")
            await runtime.stop_task(alice, timeout=2.0)
            await runtime.destroy_task(alice)
            runtime.take_events()

            moved = await runtime.start_task(spec(root, "alice", node="node-b"))
            assert moved.state["node_id"] == node_b and nomad.jobs["fvtt-alice"]["Constraints"][0]["RTarget"] == node_b
            address = await runtime.address(moved)
            assert address.host == "127.0.0.2" and (await status_at(address))["version"] == "13.345"
            assert await volumes() == {("data", "node-b"), ("install", "node-b")}
            assert await runtime.data_node("alice") == "node-b"
            assert provisions(root) == [f"alice 13.345 {node_a}", f"alice 13.345 {node_b}"]
            assert (root / "instances" / "alice" / "data" / "marker.txt").read_text() == "kept\n"
            assert [(e.action, e.message) for e in runtime.take_events() if e.action == "moved"] == [
                ("moved", "moved to node node-b: deregistered the Nomad host volumes fvtt-alice-data, "
                          "fvtt-alice-install on node node-a")]
            assert len(_active_allocs(nomad, "fvtt-alice")) == 1

            # Asked back to node-a while its job still runs on node-b (a start the control plane lost
            # track of): the job is purged first, never two running.
            back = await runtime.start_task(spec(root, "alice", node="node-a"))
            assert back.state["node_id"] == node_a and (await runtime.address(back)).host == "127.0.0.1"
            assert await volumes() == {("data", "node-a"), ("install", "node-a")}
            (active,) = _active_allocs(nomad, "fvtt-alice")
            assert active["NodeID"] == node_a

            # The node asked for is away: it starts where its data is rather than nowhere; the move waits.
            await runtime.stop_task(back, timeout=2.0)
            await runtime.destroy_task(back)
            await asyncio.to_thread(nomad.set_node_down, "node-b")
            runtime.take_events()
            stayed = await runtime.start_task(spec(root, "alice", node="node-b"))
            assert stayed.state["node_id"] == node_a and await volumes() == {("data", "node-a"), ("install", "node-a")}
            assert ("move", "not moved to node node-b, which is down: started on node node-a, where its data is") in \
                [(e.action, e.message) for e in runtime.take_events()]
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_a_move_interrupted_between_the_new_and_the_old_volumes_is_finished_by_the_next_start(
        nomad: NomadStandin, root: Path) -> None:
    async def main() -> None:
        runtime = runtime_for(nomad, root)
        await runtime.open()
        try:
            node_b = nomad.node_id("node-b")
            volumes = _volumes_of(runtime, nomad, "bob")
            bob = await runtime.start_task(spec(root, "bob", node="node-a"))
            assert await status_at(await runtime.address(bob))

            # The control plane dies after the volumes are registered on node-b, before those on
            # node-a are deregistered (here: deregistering fails).
            delete = runtime.api.delete_host_volume

            async def dies(volume_id: str) -> None:
                raise ExternalFailure("the control plane died here")

            runtime.api.delete_host_volume = dies  # type: ignore[method-assign]
            with pytest.raises(ExternalFailure, match="died here"):
                await runtime.start_task(spec(root, "bob", node="node-b"))
            runtime.api.delete_host_volume = delete  # type: ignore[method-assign]
            assert await volumes() == {("data", "node-a"), ("install", "node-a"), ("data", "node-b"),
                                       ("install", "node-b")}
            assert "fvtt-bob" not in nomad.jobs and _active_allocs(nomad, "fvtt-bob") == []

            again = await runtime.start_task(spec(root, "bob", node="node-b"))
            assert again.state["node_id"] == node_b and (await runtime.address(again)).host == "127.0.0.2"
            assert await volumes() == {("data", "node-b"), ("install", "node-b")}
            (active,) = _active_allocs(nomad, "fvtt-bob")
            assert active["NodeID"] == node_b
            assert sum(1 for a in nomad.allocations.values()
                       if a["JobID"] == "fvtt-bob" and a["ClientStatus"] == "running") == 1
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())


def test_an_instance_runs_only_on_a_node_of_the_home_holding_its_data(nomad: NomadStandin, root: Path) -> None:
    """node-b keeps data in a home of its own (pool-b), node-a in the fleet's: an instance is placed,
    started and moved only within the home its spec names, whatever has more room or was asked for."""
    async def main() -> None:
        runtime = runtime_for(nomad, root, node_homes={"node-b": "pool-b"})
        await runtime.open()
        try:
            node_a, node_b = nomad.node_id("node-a"), nomad.node_id("node-b")
            volumes = _volumes_of(runtime, nomad, "bob")
            assert {n.name: n.storage for n in await runtime.nodes()} == {"node-a": "fleet", "node-b": "pool-b"}
            # node-a has twice the room, but alice's data is in pool-b.
            alice = await runtime.start_task(spec(root, "alice", storage="pool-b"))
            assert alice.state["node_id"] == node_b and (await runtime.address(alice)).host == "127.0.0.2"

            # Its data sent to pool-b (the operations' move), its record names node-b: the start there
            # releases its registrations in the home it left.
            bob = await runtime.start_task(spec(root, "bob", storage="fleet"))
            assert bob.state["node_id"] == node_a
            await runtime.stop_task(bob, timeout=2.0)
            runtime.take_events()
            moved = await runtime.start_task(spec(root, "bob", node="node-b", storage="pool-b"))
            assert moved.state["node_id"] == node_b and (await runtime.address(moved)).host == "127.0.0.2"
            assert await volumes() == {("data", "node-b"), ("install", "node-b")}
            assert [e.message for e in runtime.take_events() if e.action == "moved"] == [
                "moved to node node-b: deregistered the Nomad host volumes fvtt-bob-data, fvtt-bob-install "
                "on node node-a"]

            # A record naming a node of another home than its data's: it runs in its data's home.
            await runtime.stop_task(moved, timeout=2.0)
            stayed = await runtime.start_task(spec(root, "bob", node="node-a", storage="pool-b"))
            assert stayed.state["node_id"] == node_b and await volumes() == {("data", "node-b"), ("install", "node-b")}
            assert ("move", "not started on node node-a, which keeps data in home fleet: the data of bob is in "
                            "home pool-b") in [(e.action, e.message) for e in runtime.take_events()]

            # Sent back to the fleet's home while node-a is down: it waits for node-a, and never runs on
            # node-b, whose copy is no longer its data.
            await runtime.stop_task(stayed, timeout=2.0)
            await asyncio.to_thread(nomad.set_node_down, "node-a")
            with pytest.raises(RuntimeUnavailable) as info:
                await runtime.start_task(spec(root, "bob", node="node-a", storage="fleet"))
            assert info.value.message == "node node-a, which bob was placed on at create, is down"
            assert _active_allocs(nomad, "fvtt-bob") == []
            with pytest.raises(RuntimeUnavailable) as info:
                await runtime.start_task(spec(root, "carol", storage="pool-c"))
            assert info.value.message == ("no Nomad node keeps data in home pool-c, which holds the data of carol "
                                          "(the nodes: node-a in fleet, node-b in pool-b)")
            assert "fvtt-carol" not in nomad.jobs
        finally:
            await runtime.close(instances_left_running=False)

    asyncio.run(main())
