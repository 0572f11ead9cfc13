"""The wake handler's HTTP side (web/wake.py), asked over httpx's ASGI transport: where a visitor may be sent
on, the pages a browser sees for each verdict, and what programs get instead.

The service behind it is a stub with fixed verdicts (the service itself is exercised end to end in
tests/e2e/test_sleep_wake.py); this pins down the adapter: what it asks the service, and what it answers.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from foundry_fleet.services.wakes import Verdict, WakeAnswer
from foundry_fleet.web.wake import DEFAULT_PATH, MAX_PATH, foundry_path, wake_routes

HOST = "alice.example.org"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
REFRESH = re.compile(r"<meta http-equiv=refresh content='([^']*)'>")
WAIT_FOR = 7.5


@dataclass
class FixedWakes:
    """Wakes-shaped: says what it is told to, and notes what it was asked."""

    visit_says: WakeAnswer
    wait_says: WakeAnswer | None = None  # None: as visit
    asked: list[tuple] = field(default_factory=list)

    async def visit(self, host: str) -> WakeAnswer:
        self.asked.append(("visit", host))
        return self.visit_says

    async def wait(self, host: str, timeout: float) -> WakeAnswer:
        self.asked.append(("wait", host, timeout))
        return self.wait_says or self.visit_says


@pytest.fixture
def wakes() -> FixedWakes:
    return FixedWakes(WakeAnswer(Verdict.STARTING, HOST))


class Client:
    """Requests to the web app in-process, one at a time; redirects are not followed."""

    def __init__(self, app: Starlette) -> None:
        self.transport = httpx.ASGITransport(app=app)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def one() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://127.0.0.1:8099") as c:
                return await c.request(method, url, **kwargs)

        return asyncio.run(one())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture
def client(wakes: FixedWakes) -> Client:
    return Client(Starlette(routes=wake_routes(wakes, wait_for=WAIT_FOR)))  # type: ignore[arg-type]


def visit(client: Client, uri: str = "/-/game?tab=chat", headers: dict[str, str] | None = None,
          host: str = HOST) -> httpx.Response:
    """A visit as Caddy passes it on: rewritten to /wake/visit, told the host and the URI asked for."""
    return client.get("/wake/visit", headers={"X-Forwarded-Host": host, "X-Forwarded-Uri": uri,
                                              **(BROWSER if headers is None else headers)})


def wait(client: Client, to: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.get("/wake/wait", params={"to": to},
                      headers={"X-Forwarded-Host": HOST, **(BROWSER if headers is None else headers)})


# --- where a visitor is sent on ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/-/", "/-", "/-/game", "/-/game?tab=chat&x=%2F", "/-/join?password=a%20b",
                                  "/-/modules/x/y.js", "/-/a..b/...", "/-/game?back=../..",
                                  "/-/" + "a" * (MAX_PATH - 3)])
def test_paths_under_foundrys_prefix_are_kept_as_they_are(path: str) -> None:
    assert foundry_path(path) == path


@pytest.mark.parametrize("path", [
    None, "", "//evil.example", "//evil.example/-/", "/\\evil.example", "/-/\\evil.example", "/-\\/evil.example",
    "https://evil.example/-/", "http:/-/", "/x", "/backups/", "/auth/logout", "/-evil", "-/", "evil.example/-/",
    "/-/a b", "/-/\x00", "/-/\t", "/-/\r\nSet-Cookie: x=1", "/-/\x7f", "/-/\x1b[2J",
    "/-/" + "a" * (MAX_PATH - 2),
    # Out of the prefix by dot segments, as the browser resolves them (encoded or not).
    "/-/../backups/", "/-/a/../../auth/logout", "/-/%2e%2e/backups/", "/-/.%2E/backups/", "/-/..",
])
def test_anything_else_is_sent_to_foundrys_front_page(path: str | None) -> None:
    assert foundry_path(path) == DEFAULT_PATH == "/-/"


# --- a browser's pages -------------------------------------------------------------------------------


def test_a_browser_gets_the_starting_page_that_refreshes_to_the_wait_without_script(
        client: Client, wakes: FixedWakes) -> None:
    page = visit(client)
    assert page.status_code == 503
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store" and page.headers["retry-after"] == "5"
    assert "<title>Starting your table…</title>" in page.text and f"The game at {HOST} is starting" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
    # The path asked for rides along, quoted whole: its own query is not the wait's.
    assert REFRESH.findall(page.text) == ["0; url=/wake/wait?to=/-/game%3Ftab%3Dchat"]
    assert "<script" not in page.text.lower()
    assert wakes.asked == [("visit", HOST)]


def test_the_wait_holds_for_its_time_then_sends_the_page_again(client: Client, wakes: FixedWakes) -> None:
    page = wait(client, "/-/game?tab=chat")
    assert page.status_code == 503 and "Starting your table" in page.text
    assert REFRESH.findall(page.text) == ["0; url=/wake/wait?to=/-/game%3Ftab%3Dchat"]
    assert wakes.asked == [("wait", HOST, WAIT_FOR)]


def test_the_host_the_edge_names_is_the_one_woken(client: Client, wakes: FixedWakes) -> None:
    visit(client, host="Alice.Example.org:8443")
    wait(client, "/-/")
    assert wakes.asked == [("visit", HOST), ("wait", HOST, WAIT_FOR)]


@pytest.mark.parametrize("uri", ["//evil.example/x", "/\\evil.example", "/backups/", "/-/\x01"])
def test_a_visit_to_a_path_it_may_not_send_on_to_refreshes_to_the_front_page(client: Client, uri: str) -> None:
    assert REFRESH.findall(visit(client, uri).text) == ["0; url=/wake/wait?to=/-/"]


def test_nothing_a_visitor_sends_breaks_out_of_the_page(client: Client, wakes: FixedWakes) -> None:
    wakes.visit_says = WakeAnswer(Verdict.STARTING, "<script>x</script>.example")
    page = visit(client, "/-/x'><script>alert(1)</script>\"")
    assert "<script" not in page.text.lower()
    (refresh,) = REFRESH.findall(page.text)
    assert refresh == "0; url=/wake/wait?to=/-/x%27%3E%3Cscript%3Ealert%281%29%3C/script%3E%22"
    assert "&lt;script&gt;x&lt;/script&gt;.example" in page.text


def test_a_full_host_says_so_and_tries_again_after_a_minute(client: Client, wakes: FixedWakes) -> None:
    wakes.visit_says = WakeAnswer(Verdict.FULL, HOST, "the host is full: 100 MiB free, waking alice needs 768 MiB")
    page = visit(client, "/-/")
    assert page.status_code == 503 and "This server is full right now" in page.text
    assert REFRESH.findall(page.text) == ["60; url=/wake/wait?to=/-/"]
    assert "every 60 seconds" in page.text and "<script" not in page.text.lower()
    # How full the host is, is for its admins, not its visitors.
    assert "MiB" not in page.text
    assert page.headers["cache-control"] == "no-store"


def test_a_failed_instance_says_why_escaped_and_does_not_refresh(client: Client, wakes: FixedWakes) -> None:
    wakes.visit_says = WakeAnswer(Verdict.FAILED, HOST, "crash loop: <script>alert('x')</script> & more")
    page = visit(client, "/-/")
    assert page.status_code == 503 and "This table could not start" in page.text
    assert "crash loop: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page.text
    assert "<script" not in page.text.lower()
    assert not REFRESH.findall(page.text) and "http-equiv" not in page.text
    assert "retry-after" not in page.headers and page.headers["cache-control"] == "no-store"


def test_a_failed_instance_without_a_reason_says_it_stopped(client: Client, wakes: FixedWakes) -> None:
    wakes.visit_says = WakeAnswer(Verdict.FAILED, HOST)
    assert "could not start: it stopped; your host has been told." in visit(client, "/-/").text


def test_a_stopped_or_suspended_instance_says_contact_your_host_and_never_why(
        client: Client, wakes: FixedWakes) -> None:
    wakes.visit_says = WakeAnswer(Verdict.UNAVAILABLE, HOST, "suspended: unpaid since March")
    for page in (visit(client, "/-/"), wait(client, "/-/")):
        assert page.status_code == 503 and "This table is not available" in page.text
        assert "Contact your host." in page.text
        assert "unpaid" not in page.text and "suspended" not in page.text
        assert not REFRESH.findall(page.text) and "retry-after" not in page.headers


def test_a_host_no_instance_has_is_not_found(client: Client, wakes: FixedWakes) -> None:
    wakes.visit_says = WakeAnswer(Verdict.UNKNOWN, "nobody.example.org")
    page = visit(client, "/-/", host="nobody.example.org")
    assert page.status_code == 404 and "There is no game at this address." in page.text
    assert not REFRESH.findall(page.text)


# --- programs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [{"Accept": "application/json"}, {"Accept": "*/*"}, {}])
def test_a_program_is_told_to_come_back_in_plain_text(client: Client, wakes: FixedWakes,
                                                      accept: dict[str, str]) -> None:
    answer = visit(client, "/-/api/status", headers=accept)
    assert answer.status_code == 503 and answer.text == "starting\n"
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["retry-after"] == "5" and answer.headers["cache-control"] == "no-store"
    wakes.visit_says = WakeAnswer(Verdict.FULL, HOST, "the host is full")
    full = visit(client, "/-/api/status", headers=accept)
    assert (full.status_code, full.text, full.headers["retry-after"]) == (503, "full\n", "60")
    wakes.visit_says = WakeAnswer(Verdict.FAILED, HOST, "crash loop")
    failed = visit(client, "/-/api/status", headers=accept)
    assert (failed.status_code, failed.text) == (503, "failed\n") and "retry-after" not in failed.headers
    assert "crash loop" not in failed.text
    wakes.visit_says = WakeAnswer(Verdict.UNKNOWN, HOST)
    assert visit(client, "/-/api/status", headers=accept).status_code == 404


# --- up: on to Foundry -------------------------------------------------------------------------------


def test_once_it_serves_the_wait_sends_the_browser_on_to_the_path_it_asked_for(
        client: Client, wakes: FixedWakes) -> None:
    wakes.wait_says = WakeAnswer(Verdict.UP, HOST)
    landed = wait(client, "/-/game?tab=chat")
    assert landed.status_code == 303 and landed.headers["location"] == "/-/game?tab=chat"
    assert landed.headers["cache-control"] == "no-store"
    assert wakes.asked == [("wait", HOST, WAIT_FOR)]
    # A program is sent on the same way; and never to another site.
    assert wait(client, "/-/api/status", headers={"Accept": "application/json"}).headers["location"] == "/-/api/status"
    for evil in ("//evil.example", "/\\evil.example", "https://evil.example/", "/x"):
        assert wait(client, evil).headers["location"] == "/-/"


def test_a_visit_to_one_that_serves_already_brings_the_edge_up_to_date_and_sends_it_on(
        client: Client, wakes: FixedWakes) -> None:
    """The edge still routed it here (it has not heard yet): the service's wait, with no time to wait,
    brings the edge up to date before the browser is sent back."""
    wakes.visit_says = WakeAnswer(Verdict.UP, HOST)
    landed = visit(client, "/-/game")
    assert landed.status_code == 303 and landed.headers["location"] == "/-/game"
    assert wakes.asked == [("visit", HOST), ("wait", HOST, 0)]


def test_only_get_and_head_are_answered_and_no_wake_handler_no_routes(client: Client) -> None:
    assert client.head("/wake/wait", params={"to": "/-/"}, headers={"X-Forwarded-Host": HOST, **BROWSER}).status_code == 503
    assert client.post("/wake/wait", headers={"X-Forwarded-Host": HOST}).status_code == 405
    assert client.post("/wake/visit", headers={"X-Forwarded-Host": HOST}).status_code == 405
    assert wake_routes(None) == []
