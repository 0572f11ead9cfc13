"""The libpod client's error mapping (through httpx's mock transport), the fleet's containers.conf, and
Podman's error text about lost namespace mounts as the runtime reads it."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path

import httpx
import pytest

from foundry_fleet.runtime.podman import containers_conf, host_state
from foundry_fleet.runtime.podman.api import API_BASE, NoSuchObject, PodmanApi, PodmanRefused, PodmanUnreachable


def api_answering(handler) -> PodmanApi:
    return PodmanApi(Path("/nonexistent.sock"), transport=httpx.MockTransport(handler))


def test_requests_go_to_the_libpod_paths_and_answers_are_read() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/containers/create"):
            return httpx.Response(201, json={"Id": "abc", "Warnings": []})
        if request.url.path.endswith("/wait"):
            return httpx.Response(200, text="7\n")
        return httpx.Response(200, json=[{"Id": "abc", "Labels": {"a": "b"}}])

    async def scenario() -> None:
        api = api_answering(handler)
        assert await api.create({"name": "x"}) == "abc"
        assert await api.wait("abc") == 7
        assert await api.list({"foundry-fleet.fleet": "f1"}) == [{"Id": "abc", "Labels": {"a": "b"}}]
        await api.aclose()

    asyncio.run(scenario())
    assert [str(r.url).split("?")[0] for r in seen] == [f"{API_BASE}/containers/create", f"{API_BASE}/containers/abc/wait",
                                                        f"{API_BASE}/containers/json"]
    assert json.loads(seen[0].content) == {"name": "x"}
    assert seen[1].url.params.get_list("condition") == ["stopped", "exited"]
    assert json.loads(seen[2].url.params["filters"]) == {"label": ["foundry-fleet.fleet=f1"]}
    assert seen[2].url.params["all"] == "true"


def test_refusals_carry_podmans_message_and_a_missing_container_is_none_or_no_such_object() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404, json={"cause": "no such container", "message": "no container with name x"})
        if request.url.path.endswith("/start"):
            return httpx.Response(500, json={"message": "runc create failed: boom"})
        return httpx.Response(404, json={"message": "no container with name x"})

    async def scenario() -> None:
        api = api_answering(handler)
        assert await api.inspect("x") is None
        await api.remove("x")  # nothing to remove is fine
        with pytest.raises(PodmanRefused) as refused:
            await api.start("x")
        assert refused.value.status == 500 and "runc create failed: boom" in refused.value.message
        assert refused.value.hint
        with pytest.raises(NoSuchObject):
            await api.create({})

    asyncio.run(scenario())


def test_a_silent_socket_is_unreachable_with_a_hint_and_ping_says_no() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def scenario() -> None:
        api = api_answering(handler)
        assert await api.ping() is False
        with pytest.raises(PodmanUnreachable) as silent:
            await api.version()
        assert "/nonexistent.sock" in silent.value.message and "podman system service" in (silent.value.hint or "")

    asyncio.run(scenario())


def test_the_fleets_containers_conf_holds_what_podman_needs_here_and_is_rewritten_only_on_change(
        tmp_path: Path) -> None:
    path = containers_conf.write(tmp_path / "run")
    conf = tomllib.loads(path.read_text())
    assert conf["containers"]["default_ulimits"] == ["nofile=16384:16384", "nproc=32768:32768"]
    assert conf["engine"]["runtime"] == containers_conf.oci_runtime() and conf["engine"]["cgroup_manager"] == "cgroupfs"
    assert conf["engine"]["events_logger"] == "file"
    before = path.stat().st_ino
    assert containers_conf.write(tmp_path / "run") == path and path.stat().st_ino == before
    assert containers_conf.environment(path)["CONTAINERS_CONF"] == str(path)


def test_crun_runs_the_containers_on_a_cgroup_v2_host_and_runc_on_a_hybrid_one(tmp_path: Path) -> None:
    hybrid, unified = tmp_path / "hybrid", tmp_path / "unified"
    (hybrid / "unified").mkdir(parents=True)
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu io memory pids\n")
    both = {"crun": "/usr/bin/crun", "runc": "/usr/bin/runc"}.get
    assert containers_conf.oci_runtime(unified, which=both) == "crun"
    assert containers_conf.oci_runtime(hybrid, which=both) == "runc"
    # Whichever is installed, when only one is.
    assert containers_conf.oci_runtime(unified, which={"runc": "/usr/bin/runc"}.get) == "runc"
    assert containers_conf.oci_runtime(hybrid, which={"crun": "/usr/bin/crun"}.get) == "crun"
    assert containers_conf.oci_runtime(hybrid, which=lambda name: None) == "runc"
    assert 'runtime = "crun"' in containers_conf.render(None, "crun")


def test_lost_namespace_mounts_are_read_from_podmans_errors() -> None:
    cid = "693e59b8500341db06dfd378738615dc144401602656e305aae349a7a90a5106"
    message = (f"Podman refused GET /containers/json (500): joining network namespace of container {cid}: "
               "retrieving network namespace at /run/netns/netns-e131b3d4-7357: unknown FS magic on "
               "\"/run/netns/netns-e131b3d4-7357\": ef53")
    assert host_state.lost_namespaces(message) == [(cid, Path("/run/netns/netns-e131b3d4-7357"))]
    assert host_state.lost_namespaces("Podman refused ...: no such container") == []
    assert not host_state.namespace_lost("/etc/passwd") and not host_state.namespace_lost(None)
