"""The Nomad client against httpx's mock transport: what it sends (token, region, namespace, blocking
query parameters and timeouts) and how it reads Nomad's answers and failures."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from foundry_fleet.config import NomadSection
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.runtime.nomad.api import (
    Indexed, NomadApi, NomadError, NomadRefused, NomadSettings, NomadUnreachable, blocking_timeout, wait_param,
)

TOKEN = "0e0b1c3a-5f49-4e8d-9a77-secret-token"
META = {"X-Nomad-Index": "42", "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "3"}
Handler = Callable[[httpx.Request], httpx.Response]


def make_api(handler: Handler, **settings: object) -> NomadApi:
    base = {"address": "http://nomad.test:4646", "token": TOKEN, "retries": 2, "backoff": 0.05}
    return NomadApi(NomadSettings(**{**base, **settings}), transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def run(coro):  # noqa: ANN001, ANN201 - any coroutine
    return asyncio.run(coro)


def test_every_call_carries_the_token_region_and_namespace() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/status/leader":
            return httpx.Response(200, json="10.0.0.1:4647")
        return httpx.Response(200, json={"EvalID": "e1", "JobModifyIndex": 7, "Warnings": ""})

    async def scenario() -> None:
        api = make_api(handler, region="eu-west", namespace="games")
        assert await api.leader() == "10.0.0.1:4647"
        assert (await api.register_job({"ID": "fvtt-alice"}))["EvalID"] == "e1"
        assert api.calls == 2
        await api.aclose()

    run(scenario())
    for request in seen:
        assert request.headers["X-Nomad-Token"] == TOKEN
        assert request.url.params["region"] == "eu-west" and request.url.params["namespace"] == "games"
    assert seen[1].method == "PUT" and seen[1].url.path == "/v1/jobs"
    assert json.loads(seen[1].content) == {"Job": {"ID": "fvtt-alice"}}


def test_without_a_token_no_token_header_is_sent_and_the_default_namespace_is_named() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    api = make_api(handler, token=None)
    assert run(api.jobs("fvtt-")) == []
    assert "X-Nomad-Token" not in seen[0].headers
    assert dict(seen[0].url.params) == {"namespace": "default", "prefix": "fvtt-"}
    assert "region" not in seen[0].url.params


def test_a_blocking_query_sends_index_and_wait_and_waits_longer_than_nomad_may_hold_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"ID": "a1", "ClientStatus": "running"}], headers=META)

    answer = run(make_api(handler, timeout=10.0).allocations(index=41, wait=300))
    assert answer == Indexed(value=[{"ID": "a1", "ClientStatus": "running"}], index=42, known_leader=True,
                             last_contact_ms=3)
    params = seen[0].url.params
    assert seen[0].url.path == "/v1/allocations" and params["index"] == "41" and params["wait"] == "300s"
    assert params["resources"] == "true"  # the stubs then carry what each allocation holds
    read_timeout = seen[0].extensions["timeout"]["read"]
    assert read_timeout > 300 + 300 / 16  # Nomad adds up to wait/16 of jitter
    assert read_timeout == blocking_timeout(300, 10.0)


def test_blocking_queries_of_services_nodes_and_a_job_use_their_paths() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[], headers=META)

    async def scenario() -> None:
        api = make_api(handler)
        await api.services("fvtt-instance", index=5, wait=1.5)
        await api.nodes(index=5, wait=60)
        await api.job_allocations("fvtt-provision/dispatch-1-ab", index=0, wait=10)
        await api.nodes(index=9)  # no wait: an ordinary query (no index, which would block), still with the metadata

    run(scenario())
    # A dispatched child's id has a `/`: escaped in its path segment, as Nomad's Go client does.
    assert [r.url.raw_path.split(b"?")[0] for r in seen] == [
        b"/v1/service/fvtt-instance", b"/v1/nodes", b"/v1/job/fvtt-provision%2Fdispatch-1-ab/allocations", b"/v1/nodes"]
    assert seen[0].url.params["wait"] == "1500ms" and seen[1].url.params["wait"] == "60s"
    assert seen[1].url.params["resources"] == "true" and seen[3].url.params["resources"] == "true"
    assert "wait" not in seen[3].url.params and "index" not in seen[3].url.params
    assert seen[3].extensions["timeout"]["read"] == 10.0


@pytest.mark.parametrize("missing", ["X-Nomad-Index", "X-Nomad-KnownLeader", "X-Nomad-LastContact"])
def test_an_answer_without_nomads_query_headers_is_refused(missing: str) -> None:
    headers = {k: v for k, v in META.items() if k != missing}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[], headers=headers)

    with pytest.raises(NomadError) as info:
        run(make_api(handler).allocations(index=1, wait=5))
    assert missing in info.value.message and info.value.hint


def test_wait_is_a_go_duration_capped_at_nomads_maximum() -> None:
    assert wait_param(300) == "300s" and wait_param(0.25) == "250ms" and wait_param(3600) == "600s"
    with pytest.raises(ValueError):
        wait_param(0)


def test_connect_errors_are_retried_with_backoff_then_reported_naming_the_address() -> None:
    attempts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    api = make_api(handler, retries=3, backoff=0.1)
    delays: list[float] = []

    async def no_wait(delay: float) -> None:
        delays.append(delay)

    api._sleep = no_wait
    with pytest.raises(NomadUnreachable) as info:
        run(api.job("fvtt-alice"))
    assert len(attempts) == 4 and api.calls == 4  # the first try and three retries
    assert delays == [0.1, 0.2, 0.4]  # exponential
    assert "http://nomad.test:4646" in info.value.message and "http://nomad.test:4646" in info.value.hint
    assert TOKEN not in info.value.message + info.value.hint


def test_a_nomad_that_comes_back_within_the_retries_answers() -> None:
    answers = iter([httpx.ConnectError("refused"), httpx.Response(500, text="No cluster leader"),
                    httpx.Response(200, json={"ID": "fvtt-alice"})])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    api = make_api(handler, retries=2, backoff=0.01)
    assert run(api.job("fvtt-alice")) == {"ID": "fvtt-alice"}
    assert api.calls == 3


def test_a_dispatch_that_may_have_reached_nomad_is_not_sent_twice() -> None:
    attempts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(NomadError) as info:
        run(make_api(handler, retries=3, backoff=0.01).dispatch("fvtt-provision", {"instance": "a"}, b"{}"))
    assert len(attempts) == 1 and not isinstance(info.value, NomadUnreachable)
    assert "may have been applied" in (info.value.hint or "")


def test_dispatch_sends_meta_and_the_payload_in_base64() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"DispatchedJobID": "fvtt-provision/dispatch-1-ab", "EvalID": "e"})

    payload = json.dumps({"instance": "alice"}).encode()
    answer = run(make_api(handler).dispatch("fvtt-provision", {"instance": "alice", "node": "n1"}, payload))
    assert answer["DispatchedJobID"] == "fvtt-provision/dispatch-1-ab"
    body = json.loads(seen[0].content)
    assert seen[0].method == "PUT" and seen[0].url.path == "/v1/job/fvtt-provision/dispatch"
    assert body["Meta"] == {"instance": "alice", "node": "n1"} and base64.b64decode(body["Payload"]) == payload
    with pytest.raises(InvalidInput, match="over Nomad's 16384"):
        run(make_api(handler).dispatch("fvtt-provision", {}, b"x" * (16 * 1024 + 1)))
    assert len(seen) == 1


def test_404_is_none_where_an_object_is_looked_up() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="job not found")

    async def scenario() -> None:
        api = make_api(handler)
        assert await api.job("fvtt-gone") is None
        assert await api.allocation("a1") is None
        assert await api.evaluation("e1") is None
        assert await api.node("n1") is None
        assert await api.deregister_job("fvtt-gone", purge=True) is None
        with pytest.raises(NomadRefused) as info:
            await api.register_job({"ID": "x"})
        assert info.value.status == 404

    run(scenario())


def test_a_refusal_carries_nomads_own_text_and_never_the_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text='1 error occurred:\n\t* Task group "foundry" has no tasks\n\n')

    with pytest.raises(NomadRefused) as info:
        run(make_api(handler).register_job({"ID": "fvtt-alice"}))
    assert info.value.status == 400
    assert 'Task group "foundry" has no tasks' in info.value.message and "PUT /v1/jobs" in info.value.message
    assert TOKEN not in info.value.message + (info.value.hint or "")


def test_permission_denied_says_to_check_the_token_without_showing_it(caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs":
            return httpx.Response(403, text="Permission denied")
        raise httpx.ConnectError("refused", request=request)

    caplog.set_level(logging.DEBUG)
    api = make_api(handler, retries=1, backoff=0.01)
    with pytest.raises(NomadRefused) as info:
        run(api.jobs())
    with pytest.raises(NomadUnreachable):
        run(api.leader())
    assert info.value.status == 403 and "token_file" in (info.value.hint or "")
    assert TOKEN not in caplog.text and TOKEN not in repr(api.settings) and TOKEN not in str(info.value)


def test_task_log_reads_the_tail_of_a_tasks_stream_as_plain_text() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content="mkdir: permission denied\n".encode())

    text = run(make_api(handler).task_log("a1", "provision", tail_bytes=4096))
    assert text == "mkdir: permission denied\n"
    assert seen[0].url.path == "/v1/client/fs/logs/a1"
    assert {k: seen[0].url.params[k] for k in ("task", "type", "plain", "origin", "offset")} == {
        "task": "provision", "type": "stderr", "plain": "true", "origin": "end", "offset": "4096"}


def test_host_volumes_are_registered_listed_and_deleted() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "PUT":
            return httpx.Response(200, json={"Volume": {"ID": "v1"}, "Warnings": ""})
        if request.method == "DELETE":
            return httpx.Response(200, json={})
        if request.url.path == "/v1/volume/host/v1":
            return httpx.Response(200, json={"ID": "v1", "Parameters": {"release": "13.345"}})
        if request.url.path.startswith("/v1/volume/host/"):
            return httpx.Response(404, text="volume not found")
        return httpx.Response(200, json=[{"ID": "v1", "Name": "fvtt-alice-data"}])

    async def scenario() -> None:
        api = make_api(handler)
        assert (await api.register_host_volume({"Name": "fvtt-alice-data"}))["Volume"]["ID"] == "v1"
        assert await api.host_volumes(node_id="n1") == [{"ID": "v1", "Name": "fvtt-alice-data"}]
        assert (await api.host_volume("v1")) == {"ID": "v1", "Parameters": {"release": "13.345"}}
        assert await api.host_volume("gone") is None
        await api.delete_host_volume("v1")

    run(scenario())
    assert [(r.method, r.url.path) for r in seen] == [
        ("PUT", "/v1/volume/host/register"), ("GET", "/v1/volumes"), ("GET", "/v1/volume/host/v1"),
        ("GET", "/v1/volume/host/gone"), ("DELETE", "/v1/volume/host/v1")]
    assert json.loads(seen[0].content) == {"Volume": {"Name": "fvtt-alice-data"}}
    assert seen[1].url.params["type"] == "host" and seen[1].url.params["node_id"] == "n1"


def test_an_answer_that_is_not_json_says_the_address_may_not_be_nomad() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    with pytest.raises(NomadError) as info:
        run(make_api(handler).job("fvtt-alice"))
    assert "not JSON" in info.value.message and "4646" in (info.value.hint or "")


def test_settings_from_config_read_a_private_token_file(tmp_path: Path) -> None:
    token = tmp_path / "nomad-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    section = NomadSection(address="http://127.0.0.1:4646", token_file=token, namespace="games", timeout=5.0)
    settings = NomadSettings.from_config(section)
    assert (settings.token, settings.namespace, settings.timeout) == (TOKEN, "games", 5.0)
    token.chmod(0o644)
    with pytest.raises(InvalidInput) as info:
        NomadSettings.from_config(section)
    assert "readable by others" in info.value.message and TOKEN not in info.value.message
    assert os.stat(token).st_mode & 0o777 == 0o644


def test_a_ca_file_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        NomadApi(NomadSettings(address="https://nomad.test:4646", ca_file=tmp_path / "missing.pem"))
    assert "missing.pem" in info.value.message and "ca_file" in (info.value.hint or "")
