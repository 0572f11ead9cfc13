"""The nomad runtime's log of an instance, against httpx's mock transport: the tail of both streams,
then, followed, only what came after that tail, even what was written between reading it and opening
the stream (Nomad streams from a little before the tail; that part is dropped)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from foundry_fleet.domain.errors import NotFound
from foundry_fleet.runtime.nomad.api import NomadSettings
from foundry_fleet.runtime.nomad.driver import LOG_SLACK, NomadRuntime
from foundry_fleet.runtime.nomad.jobs import JobSettings

META = {"X-Nomad-Index": "7", "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}
ALLOCS = [{"ID": "a1", "JobID": "fvtt-alice", "CreateIndex": 5, "ClientStatus": "complete"},
          {"ID": "b1", "JobID": "fvtt-bob", "CreateIndex": 6, "ClientStatus": "running"}]


def logs_of(files: dict[tuple[str, bool], bytes], name: str = "alice", **kwargs: object) -> tuple[list[str], list]:
    """The lines `logs` gives when Nomad holds `files` ((stream, followed) -> bytes sent), and the
    log requests it sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/allocations":
            return httpx.Response(200, json=ALLOCS, headers=META)
        seen.append(request)
        assert request.url.path == "/v1/client/fs/logs/a1"
        followed = request.url.params.get("follow") == "true"
        return httpx.Response(200, content=files[request.url.params["type"], followed])

    async def main() -> list[str]:
        runtime = NomadRuntime(NomadSettings("http://nomad.test:4646"), JobSettings(fleet_id="f"),
                               transport=httpx.MockTransport(handler))
        try:
            return [line async for line in runtime.logs(name, **kwargs)]  # type: ignore[arg-type]
        finally:
            await runtime.close(instances_left_running=True)

    return asyncio.run(main()), seen


def test_the_tail_is_both_streams_last_lines() -> None:
    lines, seen = logs_of({("stdout", False): b"one\ntwo\nthree\n", ("stderr", False): b"oops\n"}, lines=3)
    assert lines == ["two", "three", "oops"]
    assert [(r.url.params["type"], r.url.params["origin"], r.url.params["offset"]) for r in seen] == [
        ("stdout", "end", str(64 * 1024)), ("stderr", "end", str(64 * 1024))]


def test_following_gives_what_came_after_the_tail_each_line_once() -> None:
    files = {("stdout", False): b"one\ntwo\n", ("stderr", False): b"",
             # Nomad sends from a little before the tail, the tail, then a line written meanwhile, then new ones.
             ("stdout", True): b"zero\none\ntwo\nbetween\nlater\n", ("stderr", True): b"err\n"}
    lines, seen = logs_of(files, lines=10, follow=True)
    assert lines[:2] == ["one", "two"] and sorted(lines[2:]) == ["between", "err", "later"]
    assert lines.index("between") < lines.index("later")
    followed = {r.url.params["type"]: r.url.params for r in seen if r.url.params.get("follow") == "true"}
    assert followed["stdout"]["origin"] == "end" and followed["stdout"]["offset"] == str(len(b"one\ntwo\n") + LOG_SLACK)
    assert followed["stderr"]["offset"] == str(LOG_SLACK) and followed["stdout"]["plain"] == "true"


def test_a_followed_stream_without_the_tail_in_it_is_given_whole_rather_than_lose_a_line() -> None:
    files = {("stdout", False): b"one\ntwo\n", ("stderr", False): b"",
             ("stdout", True): b"rotated\n", ("stderr", True): b""}
    lines, _ = logs_of(files, lines=10, follow=True)
    assert lines == ["one", "two", "rotated"]


def test_an_instance_nomad_has_no_allocation_of_says_so() -> None:
    with pytest.raises(NotFound) as info:
        logs_of({}, name="carol")
    assert info.value.message == "Nomad keeps no log of carol: it has no allocation of fvtt-carol (any more)"
    assert info.value.hint and "garbage" in info.value.hint
