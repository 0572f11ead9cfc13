"""The stand-in Nomad refuses what Nomad refuses, fills in Nomad's defaults, answers blocking queries
with Nomad's headers, and really runs what it accepts: a raw_exec dispatch, and an exec job that runs a
stand-in Foundry on node-b's address, lost with its node and placed back when the node returns."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.foundry_standin import STATUS_PATH, standin_source_dir, write_options
from tests.support.harness import wait_until
from tests.support.nomad_standin import NomadStandin, StandinNode
from tests.support.ports import port_block

pytestmark = pytest.mark.timeout(120)
TOKEN = "standin-token"
NOBODY = 65534


@pytest.fixture
def nomad(tmp_path: Path) -> Iterator[NomadStandin]:
    low = port_block()
    nodes = [StandinNode("node-a", "127.0.0.1", memory_mb=4096), StandinNode("node-b", "127.0.0.2", memory_mb=8192)]
    with NomadStandin(tmp_path / "nomad", nodes, token=TOKEN, port_range=(low, low + 49)) as standin:
        yield standin


def client(nomad: NomadStandin, token: str | None = TOKEN) -> httpx.Client:
    return httpx.Client(base_url=nomad.url, headers={"X-Nomad-Token": token} if token else {}, timeout=30)


def service_job(**changes: Any) -> dict[str, Any]:
    job = {
        "ID": "web", "Name": "web", "Type": "service",
        "TaskGroups": [{
            "Name": "web",
            "Networks": [{"Mode": "host", "DynamicPorts": [{"Label": "http"}]}],
            "Services": [{"Name": "web", "PortLabel": "http", "Provider": "nomad"}],
            "Tasks": [{"Name": "web", "Driver": "raw_exec", "Config": {"command": "/bin/sleep", "args": ["60"]}}],
        }],
    }
    job.update(changes)
    return job


def refused(nomad: NomadStandin, job: dict[str, Any]) -> str:
    with client(nomad) as c:
        r = c.put("/v1/jobs", json={"Job": job})
    assert r.status_code == 400, r.text
    return r.text


def task(job: dict[str, Any]) -> dict[str, Any]:
    return job["TaskGroups"][0]["Tasks"][0]


# ------------------------------------------------------------------------------------ refusals


def test_unknown_keys_are_refused_at_every_level(nomad: NomadStandin) -> None:
    assert refused(nomad, service_job(Bogus=1)) == 'json: unknown field "Bogus"'
    job = service_job()
    task(job)["Volumes"] = []  # a task has VolumeMounts; Volumes belong to the group
    assert refused(nomad, job) == 'json: unknown field "Volumes"'
    job = service_job()
    job["TaskGroups"][0]["Services"][0]["Meta "] = {}
    assert refused(nomad, job) == 'json: unknown field "Meta "'
    with client(nomad) as c:
        assert c.put("/v1/jobs", json={"Job": service_job(), "Extra": True}).text == 'json: unknown field "Extra"'
    assert nomad.jobs == {}


def test_wrong_types_are_refused_durations_are_integer_nanoseconds(nomad: NomadStandin) -> None:
    job = service_job()
    task(job)["KillTimeout"] = "5s"
    assert "cannot unmarshal string" in refused(nomad, job) and "time.Duration" in refused(nomad, job)
    job = service_job()
    job["TaskGroups"][0]["Count"] = "1"
    assert "of type int" in refused(nomad, job)
    assert "of type string" in refused(nomad, service_job(Name=7))


def test_validation_rules(nomad: NomadStandin) -> None:
    parameterized = service_job(ParameterizedJob={"Payload": "required"})
    assert 'Parameterized job can only be used with "batch" or "sysbatch" scheduler' in refused(nomad, parameterized)
    job = service_job()
    task(job)["VolumeMounts"] = [{"Volume": "data", "Destination": "/data"}]
    assert "Volume Mount (0) references undefined volume data" in refused(nomad, job)
    job = service_job()
    job["TaskGroups"][0]["Services"][0]["Name"] = "web_ui"
    assert 'Service name must be valid per RFC 1123' in refused(nomad, job)
    job = service_job()
    job["TaskGroups"][0]["RestartPolicy"] = {"Attempts": 5, "Delay": 10_000_000_000, "Interval": 30_000_000_000,
                                             "Mode": "fail"}
    assert "Nomad can't restart the TaskGroup 5 times in an interval of 30s with a delay of 10s" in refused(nomad, job)
    job = service_job()
    job["TaskGroups"][0]["Services"][0]["PortLabel"] = "admin"
    assert "Port label admin referenced by services web does not exist" in refused(nomad, job)
    job = service_job()
    job["TaskGroups"].append(copy.deepcopy(job["TaskGroups"][0]))
    assert "Job task group 2 redefines 'web' from group 1" in refused(nomad, job)
    assert "Job ID contains a space" in refused(nomad, service_job(ID="a b"))
    assert "Job priority must be between [1, 100]" in refused(nomad, service_job(Priority=101))
    job = service_job()
    task(job)["Templates"] = [{"EmbeddedTmpl": "x", "DestPath": "local/x", "Envvars": True, "ChangeMode": "signal"}]
    assert "cannot use signals with env var templates" in refused(nomad, job)
    job = service_job()
    task(job)["Services"] = [{"Name": "other", "Provider": "consul"}]
    assert "Multiple service providers used" in refused(nomad, job)


def test_without_the_token_permission_is_denied(nomad: NomadStandin) -> None:
    for token in (None, "wrong"):
        with client(nomad, token) as c:
            r = c.get("/v1/jobs")
            assert (r.status_code, r.text) == (403, "Permission denied")
            assert c.put("/v1/jobs", json={"Job": service_job()}).status_code == 403
    with client(nomad) as c:
        assert c.get("/v1/jobs", params={"namespace": "elsewhere"}).status_code == 404
        assert 'nonexistent namespace "elsewhere"' in c.put("/v1/jobs?namespace=elsewhere",
                                                            json={"Job": service_job()}).text


# ------------------------------------------------------------------------------------ defaults, blocking


def test_the_server_defaults_are_filled_in(nomad: NomadStandin) -> None:
    job = service_job()
    del job["Name"]
    with client(nomad) as c:
        r = c.put("/v1/jobs", json={"Job": job})
        assert r.status_code == 200, r.text
        assert set(r.json()) >= {"EvalID", "EvalCreateIndex", "JobModifyIndex", "Warnings"}
        back = c.get("/v1/job/web").json()
    assert (back["Name"], back["Priority"], back["Region"], back["Namespace"], back["Datacenters"]) == \
        ("web", 50, "global", "default", ["*"])
    group = back["TaskGroups"][0]
    assert group["Count"] == 1
    assert group["RestartPolicy"] == {"Attempts": 2, "Interval": 1_800_000_000_000, "Delay": 15_000_000_000,
                                      "Mode": "fail", "RenderTemplates": False}
    assert group["ReschedulePolicy"]["Unlimited"] is True
    assert group["ReschedulePolicy"]["DelayFunction"] == "exponential"
    assert task(back)["Resources"]["CPU"] == 100 and task(back)["Resources"]["MemoryMB"] == 300
    assert task(back)["KillTimeout"] == 5_000_000_000
    assert task(back)["RestartPolicy"] == group["RestartPolicy"]
    no_provider = service_job(ID="other")
    del no_provider["TaskGroups"][0]["Services"][0]["Provider"]
    with client(nomad) as c:
        assert c.put("/v1/jobs", json={"Job": no_provider}).status_code == 200
        assert c.get("/v1/job/other").json()["TaskGroups"][0]["Services"][0]["Provider"] == "consul"


def test_a_blocking_query_waits_and_returns_early_on_a_change(nomad: NomadStandin) -> None:
    with client(nomad) as c:
        first = c.get("/v1/allocations")
        headers = first.headers
        assert headers["X-Nomad-KnownLeader"] == "true" and headers["X-Nomad-LastContact"] == "0"
        index = int(headers["X-Nomad-Index"])
        began = time.monotonic()
        idle = c.get("/v1/allocations", params={"index": index, "wait": "1s"})
        assert 1.0 <= time.monotonic() - began < 2.0
        assert int(idle.headers["X-Nomad-Index"]) == index and idle.json() == []

        def register() -> None:
            with client(nomad) as other:
                other.put("/v1/jobs", json={"Job": service_job()})

        threading.Timer(0.5, register).start()
        began = time.monotonic()
        changed = c.get("/v1/allocations", params={"index": index, "wait": "5m"})
        assert time.monotonic() - began < 3.0
        assert int(changed.headers["X-Nomad-Index"]) > index
        assert [a["JobID"] for a in changed.json()] == ["web"]
        # Stubs, as Nomad lists them: resources only when asked for.
        assert changed.json()[0]["AllocatedResources"] is None
        with_resources = c.get("/v1/allocations", params={"resources": "true"}).json()
        assert [p["Label"] for p in with_resources[0]["AllocatedResources"]["Shared"]["Ports"]] == ["http"]
        assert c.get("/v1/allocations", params={"index": 1, "wait": "forever"}).status_code == 400
    assert ("GET", "/v1/allocations", {"index": str(index), "wait": "5m"}) in nomad.calls


# ------------------------------------------------------------------------------------ real tasks


def wait_alloc(nomad: NomadStandin, job_id: str, status: str, node: str | None = None,
               timeout: float = 30) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for alloc in nomad.allocations.values():
            if alloc["JobID"] == job_id and alloc["ClientStatus"] == status and node in (None, alloc["NodeName"]):
                return alloc
        return None

    return wait_until(find, timeout, f"an allocation of {job_id} {status}")


def test_a_raw_exec_dispatch_runs_once_per_node_and_its_log_is_readable(nomad: NomadStandin) -> None:
    provision = {
        "ID": "provision", "Type": "sysbatch",
        "ParameterizedJob": {"Payload": "required", "MetaRequired": ["node"]},
        "TaskGroups": [{"Name": "provision", "RestartPolicy": {"Attempts": 0, "Mode": "fail"}, "Tasks": [{
            "Name": "provision", "Driver": "raw_exec", "DispatchPayload": {"File": "payload.json"},
            "Config": {"command": "/bin/sh", "args": [
                "-c", 'cat "$NOMAD_TASK_DIR/payload.json"; echo "on ${node.unique.name} for $NOMAD_META_node" >&2;'
                      ' test "${node.unique.name}" != node-b']},
        }]}],
    }
    with client(nomad) as c:
        assert c.put("/v1/jobs", json={"Job": provision}).status_code == 200
        r = c.put("/v1/job/provision/dispatch", json={"Meta": {}, "Payload": base64.b64encode(b"{}").decode()})
        assert (r.status_code, r.text) == (400, "Dispatch did not provide required meta keys: ['node']")
        r = c.put("/v1/job/provision/dispatch", json={"Meta": {"node": "node-a"}})
        assert r.status_code == 400 and "Payload is not provided but required" in r.text
        r = c.put("/v1/job/provision/dispatch", json={"Meta": {"node": "node-a", "x": "1"},
                                                      "Payload": base64.b64encode(b"{}").decode()})
        assert r.status_code == 400 and "unpermitted meta keys: ['x']" in r.text
        r = c.put("/v1/job/provision/dispatch", json={"Meta": {"node": "node-a"},
                                                      "Payload": base64.b64encode(b'{"instance": "alice"}').decode()})
        assert r.status_code == 200, r.text
        child = r.json()["DispatchedJobID"]
        assert child.startswith("provision/dispatch-")
        done = wait_alloc(nomad, child, "complete", "node-a")
        failed = wait_alloc(nomad, child, "failed", "node-b")
        assert [e["Type"] for e in failed["TaskStates"]["provision"]["Events"]][-2:] == ["Terminated",
                                                                                          "Not Restarting"]
        logs = {}
        for alloc in (done, failed):
            for stream in ("stdout", "stderr"):
                r = c.get(f"/v1/client/fs/logs/{alloc['ID']}", params={
                    "task": "provision", "type": stream, "plain": "true", "origin": "end", "offset": "4096"})
                logs[alloc["NodeName"], stream] = r.text
        assert logs["node-a", "stdout"] == '{"instance": "alice"}'
        assert logs["node-a", "stderr"] == "on node-a for node-a\n"
        assert logs["node-b", "stderr"] == "on node-b for node-a\n"
        wait_until(lambda: c.get(f"/v1/job/{child}").json()["Status"] == "dead", 10, "the child job to be dead")


def test_a_followed_log_streams_what_the_task_appends_until_it_is_dead(nomad: NomadStandin) -> None:
    # A task that writes a line, waits for a file, writes another and ends.
    gate = nomad.root / "gate"
    job = service_job(ID="talk", Name="talk", Type="batch")
    job["TaskGroups"][0].pop("Services")
    job["TaskGroups"][0]["RestartPolicy"] = {"Attempts": 0, "Mode": "fail"}
    task(job)["Config"] = {"command": "/bin/sh", "args": [
        "-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second; echo oops >&2"]}
    with client(nomad) as c:
        assert c.put("/v1/jobs", json={"Job": job}).status_code == 200
        alloc = wait_alloc(nomad, "talk", "running", None)
        params = {"task": "web", "type": "stdout", "plain": "true", "origin": "end", "offset": "0", "follow": "true"}
        wait_until(lambda: c.get(f"/v1/client/fs/logs/{alloc['ID']}", params={**params, "follow": "false",
                                                                                "offset": "100"}).text == "first\n",
                   10, "the first line")
        # A caller that hangs up mid-stream ends its stream only.
        with c.stream("GET", f"/v1/client/fs/logs/{alloc['ID']}", params={**params, "offset": "100"}) as r:
            assert next(r.iter_bytes()) == b"first\n"
        with c.stream("GET", f"/v1/client/fs/logs/{alloc['ID']}", params=params) as r:
            assert r.status_code == 200
            gate.touch()
            received = b"".join(r.iter_bytes())  # ends once the task is dead and all of it is sent
        assert received == b"second\n"
        r = c.get(f"/v1/client/fs/logs/{alloc['ID']}", params={**params, "type": "stderr", "offset": "100"})
        assert r.text == "oops\n"  # a dead task's stream ends at once, after what it wrote
        framed = c.get(f"/v1/client/fs/logs/{alloc['ID']}", params={**params, "plain": "false", "offset": "7"})
        assert json.loads(framed.text) == {"Data": base64.b64encode(b"second\n").decode(),
                                           "File": "alloc/logs/web.stdout.0", "Offset": 13}


@pytest.fixture
def release_and_data() -> Iterator[dict[str, Path]]:
    """The stand-in Foundry's install tree, a data dir owned by nobody and a shared dir, under a 0755 root
    (the server runs as nobody and must reach them)."""
    base = Path(tempfile.mkdtemp(prefix="ff-nomad-", dir="/tmp"))
    base.chmod(0o755)
    install = base / "install"
    shutil.copytree(standin_source_dir(), install)
    for path in [install, *install.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    data = base / "data"
    data.mkdir()
    write_options(data)
    for path in [data, *data.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    shared = base / "shared"
    shared.mkdir(mode=0o755)
    try:
        yield {"install": install, "data": data, "shared": shared}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def foundry_job(node_id: str) -> dict[str, Any]:
    return {
        "ID": "fvtt-alice", "Type": "service",
        "Constraints": [{"LTarget": "${node.unique.id}", "Operand": "=", "RTarget": node_id}],
        "TaskGroups": [{
            "Name": "foundry",
            "Networks": [{"Mode": "host", "DynamicPorts": [{"Label": "http"}]}],
            "Services": [{"Name": "fvtt-instance", "PortLabel": "http", "Provider": "nomad",
                          "Tags": ["instance=alice"]}],
            "Volumes": {
                "data": {"Name": "data", "Type": "host", "Source": "fvtt-alice-data"},
                "install": {"Name": "install", "Type": "host", "Source": "fvtt-alice-install", "ReadOnly": True},
                "shared": {"Name": "shared", "Type": "host", "Source": "fvtt-f-shared", "ReadOnly": True},
            },
            "RestartPolicy": {"Attempts": 2, "Interval": 60_000_000_000, "Delay": 1_000_000_000, "Mode": "fail"},
            "Tasks": [{
                "Name": "foundry", "Driver": "exec", "User": "nobody",
                "Meta": {"fvtt_generation": "13", "fvtt_entry": "main.js"},
                "KillTimeout": 2_000_000_000,
                "VolumeMounts": [{"Volume": "data", "Destination": "/data"},
                                 {"Volume": "install", "Destination": "/foundry", "ReadOnly": True},
                                 {"Volume": "shared", "Destination": "/data/Data/shared", "ReadOnly": True}],
                "Config": {"command": shutil.which("node") or "/usr/bin/node",
                           "args": ["/foundry/main.js", "--port=${NOMAD_PORT_http}", "--dataPath=/data"]},
            }],
        }],
    }


def status_at(service: dict[str, Any]) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"http://{service['Address']}:{service['Port']}{STATUS_PATH}", timeout=2)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def test_an_exec_job_runs_foundry_on_its_node_and_follows_the_node(nomad: NomadStandin,
                                                                   release_and_data: dict[str, Path]) -> None:
    node_b = nomad.node_id("node-b")
    job = foundry_job(node_b)
    with client(nomad) as c:
        r = c.put("/v1/jobs", json={"Job": job})
        assert r.status_code == 200, r.text
        # No node has the volumes yet: accepted, but not placed, and the evaluation says why.
        evaluation = c.get(f"/v1/evaluation/{r.json()['EvalID']}").json()
        assert evaluation["FailedTGAllocs"]["foundry"]["ConstraintFiltered"]
        assert nomad.allocations == {}
        for kind, source in (("data", "fvtt-alice-data"), ("install", "fvtt-alice-install"),
                             ("shared", "fvtt-f-shared")):
            r = c.put("/v1/volume/host/register", json={"Volume": {
                "Name": source, "NodeID": node_b, "HostPath": str(release_and_data[kind])}})
            assert r.status_code == 200, r.text
        running = wait_alloc(nomad, "fvtt-alice", "running", "node-b")
        services = wait_until(lambda: c.get("/v1/service/fvtt-instance").json(), 20, "the service registration")
        assert [(s["Address"], s["NodeID"], s["AllocID"], s["Tags"]) for s in services] == \
            [("127.0.0.2", node_b, running["ID"], ["instance=alice"])]
        assert services[0]["Port"] == running["AllocatedResources"]["Shared"]["Ports"][0]["Value"]
        status = wait_until(lambda: status_at(services[0]), 20, "the stand-in Foundry to answer on node-b")
        assert status["active"] is False
        events = [e["Type"] for e in nomad.allocations[running["ID"]]["TaskStates"]["foundry"]["Events"]]
        assert events == ["Received", "Task Setup", "Started"]

        nomad.set_node_down("node-b")
        lost = nomad.allocations[running["ID"]]
        assert lost["ClientStatus"] == "lost" and lost["DesiredStatus"] == "stop"
        assert c.get("/v1/service/fvtt-instance").json() == []
        assert status_at(services[0]) is None
        # Pinned to node-b: not rescheduled to node-a.
        assert [a["NodeName"] for a in nomad.allocations.values() if a["ClientStatus"] != "lost"] == []

        nomad.set_node_up("node-b")
        back = wait_alloc(nomad, "fvtt-alice", "running", "node-b")
        assert back["PreviousAllocation"] == running["ID"]
        moved = wait_until(lambda: c.get("/v1/service/fvtt-instance").json(), 20, "the service registered again")
        assert moved[0]["AllocID"] == back["ID"]
        wait_until(lambda: status_at(moved[0]), 20, "the stand-in Foundry to answer again")

        r = c.delete("/v1/job/fvtt-alice", params={"purge": "true"})
        assert r.status_code == 200, r.text
        stopped = wait_alloc(nomad, "fvtt-alice", "complete", "node-b")
        types = [e["Type"] for e in stopped["TaskStates"]["foundry"]["Events"]]
        assert types[-3:] == ["Killing", "Terminated", "Killed"]
        assert c.get("/v1/job/fvtt-alice").status_code == 404
        assert c.get("/v1/service/fvtt-instance").json() == []


def test_an_exec_task_whose_args_are_not_the_fleets_fails_with_a_driver_failure(
        nomad: NomadStandin, release_and_data: dict[str, Path]) -> None:
    node_a = nomad.node_id("node-a")
    job = foundry_job(node_a)
    task(job)["Config"]["args"] = ["/foundry/main.js", "--port=1234", "--dataPath=/data"]
    job["TaskGroups"][0]["RestartPolicy"] = {"Attempts": 0, "Interval": 60_000_000_000, "Delay": 0, "Mode": "fail"}
    job["TaskGroups"][0]["Volumes"] = {name: {**v, "Source": f"static-{name}"}
                                       for name, v in job["TaskGroups"][0]["Volumes"].items()}
    with client(nomad) as c:
        for kind in ("data", "install", "shared"):
            c.put("/v1/volume/host/register", json={"Volume": {
                "Name": f"static-{kind}", "NodeID": node_a, "HostPath": str(release_and_data[kind])}})
        assert c.put("/v1/jobs", json={"Job": job}).status_code == 200
    failed = wait_alloc(nomad, "fvtt-alice", "failed", "node-a")
    events = failed["TaskStates"]["foundry"]["Events"]
    assert [e["Type"] for e in events][-2:] == ["Driver Failure", "Not Restarting"]
    assert "--port=${NOMAD_PORT_http}" in events[-2]["DisplayMessage"]


def test_a_fleet_on_the_nomad_runtime_gets_a_standin_and_its_section(tmp_path: Path) -> None:
    import stat
    import tomllib

    from tests.support.fleets import NOMAD_TOKEN, make_fleet

    h = make_fleet(tmp_path, runtime="nomad")
    try:
        config = tomllib.loads(h.config.read_text())
        assert config["runtime"]["driver"] == "nomad"
        section = config["nomad"]
        assert section["address"] == h.nomad.url and section["task_driver"] == "exec"
        token_file = Path(section["token_file"])
        assert token_file.read_text().strip() == NOMAD_TOKEN
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        with client(h.nomad, NOMAD_TOKEN) as c:
            nodes = c.get("/v1/nodes", params={"resources": "true"}).json()
        assert sorted((n["Name"], n["Address"], n["Status"]) for n in nodes) == \
            [("node-a", "127.0.0.1", "ready"), ("node-b", "127.0.0.2", "ready")]
        assert all(n["NodeResources"]["Memory"]["MemoryMB"] == 4096 for n in nodes)
    finally:
        h.tear_down()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{h.nomad.url}/v1/status/leader", timeout=2)


def node_image(work: Path) -> str:
    """The fleet's node image for Foundry 13 (built by NodeImages when this host has none yet)."""
    import asyncio

    from foundry_fleet.runtime.podman.images import NodeImages
    from foundry_fleet.runtime.podman.service import PodmanService

    async def ensure() -> str:
        service = PodmanService(work / "run")
        api = await service.ensure()
        try:
            images = NodeImages(api.http, node=lambda generation: os.path.realpath(shutil.which("node") or "node"),
                                configured=lambda major: None, work_dir=work / "images", pull_timeout=5.0)
            return await images.ensure(13)
        finally:
            await service.stop()
            await api.aclose()

    return asyncio.run(ensure())


def test_a_podman_job_runs_foundry_in_a_container_published_on_its_node(
        nomad: NomadStandin, release_and_data: dict[str, Path], tmp_path: Path) -> None:
    import subprocess

    image = node_image(tmp_path / "podman")
    for path in [release_and_data["data"], *release_and_data["data"].rglob("*")]:
        os.chown(path, 200777, 200777)
    node_b = nomad.node_id("node-b")
    job = foundry_job(node_b)
    foundry = task(job)
    del foundry["User"]
    foundry["Driver"] = "podman"
    foundry["Config"] = {"image": image, "command": "node", "ports": ["http"], "user": "200777:200777",
                         "args": ["/foundry/main.js", "--port=${NOMAD_PORT_http}", "--dataPath=/data"],
                         "init": True, "cap_drop": ["all"], "readonly_rootfs": True}
    with client(nomad) as c:
        for kind, source in (("data", "fvtt-alice-data"), ("install", "fvtt-alice-install"),
                             ("shared", "fvtt-f-shared")):
            c.put("/v1/volume/host/register", json={"Volume": {
                "Name": source, "NodeID": node_b, "HostPath": str(release_and_data[kind])}})
        assert c.put("/v1/jobs", json={"Job": job}).status_code == 200
        wait_alloc(nomad, "fvtt-alice", "running", "node-b", timeout=60)
        services = wait_until(lambda: c.get("/v1/service/fvtt-instance").json(), 60, "the service registration")
        assert services[0]["Address"] == "127.0.0.2"
        wait_until(lambda: status_at(services[0]), 30, "the stand-in Foundry to answer from its container")
        containers = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
        assert "fvtt-alice" in containers
        assert c.delete("/v1/job/fvtt-alice", params={"purge": "true"}).status_code == 200
        wait_alloc(nomad, "fvtt-alice", "complete", "node-b", timeout=30)
    containers = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert "fvtt-alice" not in containers


def test_a_service_task_is_restarted_by_its_policy_then_fails(nomad: NomadStandin, tmp_path: Path) -> None:
    count = tmp_path / "starts"
    job = service_job()
    job["TaskGroups"][0]["RestartPolicy"] = {"Attempts": 1, "Interval": 10_000_000_000, "Delay": 100_000_000,
                                             "Mode": "fail"}
    task(job)["Config"] = {"command": "/bin/sh", "args": ["-c", f"echo started >> {count}; exit 3"]}
    with client(nomad) as c:
        assert c.put("/v1/jobs", json={"Job": job}).status_code == 200
    failed = wait_alloc(nomad, "web", "failed")
    state = failed["TaskStates"]["web"]
    assert [e["Type"] for e in state["Events"]] == ["Received", "Task Setup", "Started", "Terminated", "Restarting",
                                                   "Started", "Terminated", "Not Restarting"]
    assert state["Events"][3]["ExitCode"] == 3 and state["Events"][3]["DisplayMessage"] == "Exit Code: 3"
    assert state["Events"][-1]["DisplayMessage"] == 'Exceeded allowed attempts 1 in interval 10s and mode is "fail"'
    assert (state["State"], state["Failed"], state["Restarts"]) == ("dead", True, 1)
    assert count.read_text() == "started\nstarted\n"
    with client(nomad) as c:
        assert c.get("/v1/service/web").json() == []


def test_stopping_answers_a_blocking_query_still_open_at_once(tmp_path: Path) -> None:
    standin = NomadStandin(tmp_path / "nomad", [StandinNode("node-a", "127.0.0.1")]).start()
    outcome: list[object] = []

    def watch() -> None:
        try:
            with client(standin, None) as c:
                outcome.append(c.get("/v1/allocations", params={"index": 1, "wait": "5m"}).status_code)
        except httpx.HTTPError as e:
            outcome.append(e)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: any(path == "/v1/allocations" for _, path, _ in standin.calls), 5, "the blocking query")
    began = time.monotonic()
    standin.stop()
    assert time.monotonic() - began < 5
    watcher.join(5)
    assert outcome == [200] and not watcher.is_alive()


def test_a_lost_allocation_not_pinned_is_replaced_on_another_node(nomad: NomadStandin) -> None:
    job = service_job()
    with client(nomad) as c:
        assert c.put("/v1/jobs", json={"Job": job}).status_code == 200
        first = wait_alloc(nomad, "web", "running", "node-b")  # the node with the most free memory
        before = wait_until(lambda: c.get("/v1/service/web").json(), 10, "the service on node-b")
        assert before[0]["Address"] == "127.0.0.2"
        nomad.set_node_down("node-b")
        replacement = wait_alloc(nomad, "web", "running", "node-a")
        assert replacement["PreviousAllocation"] == first["ID"]
        assert nomad.allocations[first["ID"]]["ClientStatus"] == "lost"
        moved = wait_until(lambda: c.get("/v1/service/web").json(), 10, "the service on node-a")
        assert [(s["Address"], s["AllocID"]) for s in moved] == [("127.0.0.1", replacement["ID"])]
        nomad.set_node_up("node-b")
        assert [a["ID"] for a in nomad.allocations.values() if a["ClientStatus"] == "running"] == [replacement["ID"]]


def test_paused_nomad_refuses_connections_and_cuts_a_blocking_query_then_resumes_with_all_it_held(
        nomad: NomadStandin) -> None:
    with client(nomad) as c:
        assert c.put("/v1/jobs", json={"Job": service_job()}).status_code == 200
        wait_alloc(nomad, "web", "running")
        index = int(c.get("/v1/allocations").headers["X-Nomad-Index"])  # nothing changes after it
    outcome: list[object] = []

    def watch() -> None:
        try:
            with client(nomad) as c:
                outcome.append(c.get("/v1/allocations", params={"index": index, "wait": "5m"}).status_code)
        except httpx.HTTPError as e:
            outcome.append(e)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: ("GET", "/v1/allocations", {"index": str(index), "wait": "5m"}) in nomad.calls, 5,
               "the blocking query")
    nomad.pause()
    watcher.join(5)
    assert not watcher.is_alive() and len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError), outcome
    with pytest.raises(httpx.ConnectError), client(nomad) as c:
        c.get("/v1/jobs")
    nomad.resume()
    with client(nomad) as c:
        assert [j["ID"] for j in c.get("/v1/jobs").json()] == ["web"]
        assert [a["ClientStatus"] for a in c.get("/v1/allocations").json()] == ["running"]  # ran on meanwhile
