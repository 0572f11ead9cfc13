"""The panel's admin pages (web/panel/admin.py), asked in process over httpx's ASGI transport as a browser
on https://fleet.example.test would:
a real fleet on a temporary root (SQLite, directory storage, a release in its cache, an instance that
uses it), the real invites, release registry, downloads and event log; the host's health and the
runtime's facts are stubbed callables, as the daemon's wiring hands them over.

Sign-in is the panel's own (PanelSessions on its key and database, Discord itself not needed): one
session is an admin's, one a tenant's, and every form carries the session's token as the pages give it.
Every admin page and form refuses the tenant.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import MIB, DownloadPolicy
from foundry_fleet.runtime.base import Capabilities, Capability, NodeInfo
from foundry_fleet.services.access import ADMIN_LINK_ACTOR, Access
from foundry_fleet.services.bulletin import Bulletin
from foundry_fleet.services.daemon_info import DaemonInfo
from foundry_fleet.services.doctor import Check, DoctorReport, Status
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.panel_cards import CardSources, PanelCards
from foundry_fleet.services.panel_sessions import PANEL_COOKIE, PanelSessions
from foundry_fleet.services.release_jobs import ReleaseJobs
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.runtime_report import RuntimeReport
from foundry_fleet.services.web_login import PanelLoginDone
from foundry_fleet.web.panel.app import panel_routes
from foundry_fleet.web.panel.services import Panel, PanelServices
from foundry_fleet.wiring.panel import runtime_facts
from foundry_fleet.wiring.services import FleetServices, make_backups, make_invites, open_services
from tests.support.foundry_standin import build_release_zip
from tests.support.panel_login import ORIGIN, make_login
from tests.support.releases import LocalHTTPS, Route, local_policy

ADMIN_ID = "200000000000000009"
TENANT_ID = "200000000000000001"
SECRET = "verify=s3cr3t-timed-token"

ADMIN_PAGES = ["/admin", "/admin/invites", "/admin/invites?show=all", "/admin/releases", "/admin/releases/jobs/abc",
               "/admin/events", "/admin/events?target=alice&action=backup.", "/admin/health", "/admin/nodes"]
ADMIN_FORMS = {"/admin/invites": {"kind": "code", "expires": "1d"}, "/admin/invites/revoke": {"invite": "1"},
               "/admin/releases": {"url": "https://foundryvtt.com/r.zip"}, "/admin/releases/remove": {"version": "13.345"}}


class HeldSupervisor:
    """The operations' supervisor, which no admin page reaches."""

    def poke(self, name: str) -> None:
        pass


@dataclass
class World:
    fleet: FleetServices
    cache: ReleaseCache  # the registry's, its download policy set per test
    zips: Path
    sessions: PanelSessions
    cookies: dict[str, str]  # Discord id -> the panel cookie of their session


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    work = tmp_path_factory.mktemp("admin")
    fleet = open_services(load_config(init_fleet(work / "fleet")), actor="test")
    fleet.releases.add(str(build_release_zip(work, ReleaseLayout.NODE, 13, 345)))
    fleet.provisioning.create("cli:admin", "alice", "13.345", owner=TENANT_ID, start=False)
    sessions = PanelSessions(make_login(work / "login", None), Access(fleet.instances, frozenset({ADMIN_ID})))
    assert sessions.origin == ORIGIN
    # What the Discord callback does once Discord has said who signed in.
    cookies = {who: sessions.finish_discord(PanelLoginDone(who, "/", "flow")).cookie_value for who in (ADMIN_ID, TENANT_ID)}
    # An admin without Discord: a single-use link from `foundry-fleet panel login`.
    cookies["link"] = sessions.redeem_link(parse_qs(urlsplit(sessions.make_link()).query)["t"][0])[0]
    return World(fleet, fleet.release_cache, work, sessions, cookies)


@pytest.fixture
def offline_policy(world: World) -> Iterator[None]:
    """Links to foundryvtt.com and 127.0.0.1 pass the allow-list; loopback is still refused as private."""
    kept = world.cache.policy
    world.cache.policy = DownloadPolicy(allowed_hosts=("foundryvtt.com", "127.0.0.1"), max_download_bytes=10 * MIB)
    yield
    world.cache.policy = kept


HEALTH = DoctorReport([Check("port 443 (https)", Status.PASS, "free for the edge"),
                       Check("clock", Status.FAIL, "off by 9 s", "install chrony and enable it"),
                       Check("zfs pool", Status.SKIP, "storage is directories")], daemon={"running": True, "pid": 4242})


async def stub_health() -> DoctorReport:
    return HEALTH


async def cluster_nodes() -> list[NodeInfo]:
    return [NodeInfo("node-a", "10.0.0.5", True, "ready", 3, 2048, "tank"),
            NodeInfo("node-b", "10.0.0.6", False, "down", 0, None, None)]


def daemon_info() -> DaemonInfo:
    caps = [Capability("sandbox", True, "bubblewrap 0.8"), Capability("cgroup-memory", False, "not delegated")]
    return DaemonInfo(pid=4242, started_at=time.time() - 60, root="/srv/fleet",
                      capabilities=[*caps, Capability("storage", True, "directories under /srv/fleet")],
                      runtime=RuntimeReport("nomad", Capabilities("container", True, True, True), caps))


def build_panel(world: World, **services: Any) -> tuple[Panel, PanelServices]:
    fleet = world.fleet
    access = Access(fleet.instances, frozenset({ADMIN_ID}))
    cards = PanelCards(access, CardSources(lambda name: None, None, dict, lambda: None))
    registry = ReleaseRegistry(fleet.config.node, fleet.sessions, world.cache, "daemon")
    operations = Operations(fleet.lifecycle(), HeldSupervisor(), make_backups(fleet),  # type: ignore[arg-type]
                            fleet.config.supervisor.start_timeout)

    async def no_log(name: str, lines: int = 0, follow: bool = False) -> Any:
        return
        yield

    defaults: dict[str, Any] = {
        "invites": make_invites(fleet), "release_jobs": ReleaseJobs(registry), "events": fleet.events,
        "health": stub_health, "runtime_facts": runtime_facts(daemon_info(), cluster_nodes)}
    svc = PanelServices(access, cards, operations, make_backups(fleet), registry, no_log, Bulletin(), "",
                        **{**defaults, **services})
    return Panel(world.sessions, svc), svc


class Browser:
    """One signed-in person's browser on the fleet host, one request at a time; redirects are not followed."""

    def __init__(self, panel: Panel, cookie: str) -> None:
        self.cookie = cookie
        self.sessions = panel.sessions
        self.transport = httpx.ASGITransport(app=Starlette(routes=panel_routes(panel)))

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def one() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url=ORIGIN,
                                         cookies={PANEL_COOKIE: self.cookie}) as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(one())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str], token: bool = True) -> httpx.Response:
        assert self.sessions is not None
        sent = {"csrf": self.sessions.csrf_token(self.cookie), **fields} if token else fields
        return self.request("POST", path, data=sent, headers={"Origin": ORIGIN})


@pytest.fixture
def panel(world: World) -> Panel:
    return build_panel(world)[0]


@pytest.fixture
def admin(panel: Panel, world: World) -> Browser:
    return Browser(panel, world.cookies[ADMIN_ID])


@pytest.fixture
def tenant(panel: Panel, world: World) -> Browser:
    return Browser(panel, world.cookies[TENANT_ID])


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=", re.I)


def assert_strict_page(html: str) -> None:
    """Nothing the Content-Security-Policy would refuse: no inline script, style or event handler."""
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html)
    assert " style=" not in html and "<style" not in html
    assert not INLINE_HANDLER.search(html), INLINE_HANDLER.search(html)


def assert_labelled(html: str) -> None:
    """Every visible input, select and textarea is named by a <label for=...>; every header cell has a scope."""
    labels = set(re.findall(r'<label[^>]*\bfor="([^"]+)"', html))
    for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", html):
        if 'type="hidden"' in tag:
            continue
        found = re.search(r'\bid="([^"]+)"', tag)
        assert found and found.group(1) in labels, f"no label for {tag}"
    for th in re.findall(r"<th\b[^>]*>", html):
        assert "scope=" in th, th
    for cell in re.findall(r"<td\b[^>]*>", html):  # on a phone each row is a card naming its cells
        assert "data-label=" in cell or "colspan=" in cell, cell


# -- who may ---------------------------------------------------------------------------------------


def test_a_tenant_is_refused_every_admin_page_and_form(tenant: Browser, world: World) -> None:
    before = len(world.fleet.events.search(limit=1000)), len(make_invites(world.fleet).list(True))
    for path in ADMIN_PAGES:
        r = tenant.get(path)
        assert r.status_code in (403, 404), (path, r.status_code)
        assert "Invites" not in r.text.split("<main", 1)[0], "admin links shown to a tenant"
    for path, fields in ADMIN_FORMS.items():
        r = tenant.post(path, fields)
        assert r.status_code in (403, 404), (path, r.status_code)
    after = len(world.fleet.events.search(limit=1000)), len(make_invites(world.fleet).list(True))
    assert after == before  # nothing was done, not even a refusal recorded in the admin's name
    assert world.fleet.releases.get("13.345")


def test_admin_forms_need_the_session_token(admin: Browser) -> None:
    assert admin.post("/admin/invites", {"kind": "code", "expires": "1d"}, token=False).status_code == 403


def test_every_admin_page_renders_for_an_admin_without_inline_script_or_style(admin: Browser) -> None:
    for path in ["/admin/invites", "/admin/invites?show=all", "/admin/releases", "/admin/events", "/admin/health",
                 "/admin/nodes"]:
        r = admin.get(path)
        assert r.status_code == 200, (path, r.text)
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert_strict_page(r.text)
        assert_labelled(r.text)
        assert 'aria-current="page"' in r.text
    assert admin.get("/admin").headers["location"] == "/admin/invites"


def test_a_page_whose_service_was_not_handed_over_says_so(world: World) -> None:
    panel, _ = build_panel(world, invites=None, release_jobs=None, events=None, health=None, runtime_facts=None)
    admin = Browser(panel, world.cookies[ADMIN_ID])
    for path in ["/admin/invites", "/admin/events", "/admin/health", "/admin/nodes"]:
        r = admin.get(path)
        assert r.status_code == 503 and "not available on this panel" in r.text, path
    r = admin.get("/admin/releases")
    assert r.status_code == 200 and "13.345" in r.text and "foundry-fleet release add" in r.text
    assert admin.post("/admin/releases", {"url": "https://foundryvtt.com/r.zip"}).status_code == 503


# -- invites ---------------------------------------------------------------------------------------


def test_an_invite_for_a_discord_user_is_made_shown_and_revoked_by_the_admin(admin: Browser, world: World) -> None:
    user = "300000000000000001"
    r = admin.post("/admin/invites", {"kind": "user", "discord_user": user, "expires": "7d"})
    assert r.status_code == 200, r.text
    assert f"Discord user <strong>{user}</strong>" in r.text and "<code id=\"invite-command\">/fleet setup</code>" in r.text
    assert_strict_page(r.text)
    invite = next(i for i in make_invites(world.fleet).list() if i.discord_user_id == user)
    assert invite.created_by == f"discord:{ADMIN_ID}"

    again = admin.post("/admin/invites", {"kind": "user", "discord_user": user, "expires": "7d"})
    assert again.status_code == 409 and "already has a pending invite" in again.text
    assert f'value="{user}"' in again.text  # what was typed is kept for another try

    listed = admin.get("/admin/invites")
    assert f"Discord user {user}" in listed.text and "Revoke invite" in listed.text

    r = admin.post("/admin/invites/revoke", {"invite": str(invite.id)})
    assert r.status_code == 303 and r.headers["location"] == "/admin/invites?done=revoked"
    assert "Invite revoked." in admin.get(r.headers["location"]).text
    assert make_invites(world.fleet).get(invite.id).status == "revoked"
    assert admin.post("/admin/invites/revoke", {"invite": str(invite.id)}).status_code == 409
    assert f"Discord user {user}" in admin.get("/admin/invites?show=all").text

    events = world.fleet.events.search(target=f"invite-{invite.id}")
    assert [(e.action, e.actor) for e in events] == [("invite.revoke", f"discord:{ADMIN_ID}"),
                                                    ("invite.create", f"discord:{ADMIN_ID}")]
    log = admin.get(f"/admin/events?target=invite-{invite.id}")
    assert "invite.revoke" in log.text and "invite.create" in log.text


def test_a_shareable_code_is_shown_once_with_its_command_and_a_copy_button(admin: Browser) -> None:
    r = admin.post("/admin/invites", {"kind": "code", "discord_user": "", "expires": "1d"})
    assert r.status_code == 200, r.text
    code = re.search(r'<code id="invite-code">([^<]+)</code>', r.text)
    assert code, r.text
    assert f'<code id="invite-command">/fleet join code:{code.group(1)}</code>' in r.text
    # panel.js shows them where the clipboard can be written
    assert f'<button type="button" class="copy" data-copy="{code.group(1)}" hidden>Copy code</button>' in r.text
    assert f'data-copy="/fleet join code:{code.group(1)}" hidden>Copy command</button>' in r.text
    assert code.group(1) not in admin.get("/admin/invites").text  # shown once


def test_an_admin_signed_in_with_a_link_acts_under_the_links_name(panel: Panel, world: World) -> None:
    r = Browser(panel, world.cookies["link"]).post("/admin/invites", {"kind": "code", "expires": "1h"})
    assert r.status_code == 200 and "/fleet join code:" in r.text
    created = world.fleet.events.search(action_prefix="invite.create", limit=1)[0]
    assert created.actor == ADMIN_LINK_ACTOR


def test_a_bad_invite_is_refused_with_the_reason(admin: Browser) -> None:
    r = admin.post("/admin/invites", {"kind": "user", "discord_user": "not-an-id", "expires": "7d"})
    assert r.status_code == 400 and 'role="alert"' in r.text
    r = admin.post("/admin/invites", {"kind": "code", "expires": "200d"})
    assert r.status_code == 400 and "not allowed" in r.text
    assert admin.post("/admin/invites/revoke", {"invite": "x"}).status_code == 400


# -- releases --------------------------------------------------------------------------------------


def test_the_release_list_shows_sizes_and_users_and_refuses_to_remove_one_in_use(admin: Browser,
                                                                                world: World) -> None:
    r = admin.get("/admin/releases")
    row = re.search(r'<tr><th scope="row" data-label="Version">13\.345</th>.*?</tr>', r.text, re.S)
    assert row and '<a href="/instances/alice">alice</a>' in row.group(0) and "in use" in row.group(0)
    assert "Remove release 13.345" not in r.text
    r = admin.post("/admin/releases/remove", {"version": "13.345"})
    assert r.status_code == 409 and "in use by alice" in r.text
    assert world.fleet.releases.get("13.345")


@pytest.mark.usefixtures("offline_policy")
def test_a_link_the_policy_refuses_is_refused_on_the_form_without_its_query_string(admin: Browser) -> None:
    for url, why in [("http://foundryvtt.com/r.zip", "not an https:// link"), ("/etc/passwd", "not an https:// link"),
                     (f"https://evil.example/r.zip?{SECRET}", "not an allowed download host"),
                     (f"https://127.0.0.1/r.zip?{SECRET}", "loopback")]:
        r = admin.post("/admin/releases", {"url": url})
        assert r.status_code == 400, (url, r.text)
        assert why in r.text, (url, r.text)
        assert "s3cr3t" not in r.text
        assert_strict_page(r.text)


def test_a_release_added_by_link_shows_its_progress_until_it_is_in_the_list(world: World,
                                                                           https_server: LocalHTTPS) -> None:
    zip_bytes = build_release_zip(world.zips, ReleaseLayout.NODE, 13, 346).read_bytes()
    https_server.routes["/releases/13.346.zip"] = Route(body=zip_bytes, delay=0.6)
    kept = world.cache.policy
    world.cache.policy = local_policy(https_server)
    try:
        panel, _ = build_panel(world)
        admin = Browser(panel, world.cookies[ADMIN_ID])
        r = admin.post("/admin/releases", {"url": https_server.url(f"/releases/13.346.zip?{SECRET}")})
        assert r.status_code == 303 and r.headers["location"] == "/admin/releases?done=adding"
        page = admin.get(r.headers["location"])
        assert "Download started" in page.text and "s3cr3t" not in page.text
        job = re.search(r'hx-get="/admin/releases/jobs/([0-9a-f]+)" hx-trigger="every 1s"', page.text)
        assert job, page.text
        assert "<progress" in page.text and "/releases/13.346.zip" in page.text

        deadline = time.monotonic() + 30
        while True:
            part = admin.get(f"/admin/releases/jobs/{job.group(1)}")
            assert part.status_code == 200 and "s3cr3t" not in part.text
            assert_strict_page(part.text)
            if "hx-trigger" not in part.text:
                break
            assert "<progress" in part.text
            assert time.monotonic() < deadline, part.text
            time.sleep(0.1)
        assert "Release 13.346 is in the fleet." in part.text
        assert '<tbody id="release-rows" hx-swap-oob="true">' in part.text and ">13.346</th>" in part.text
        added = world.fleet.events.search(target="13.346", action_prefix="release.add")[0]
        assert (added.outcome, added.actor) == ("ok", f"discord:{ADMIN_ID}") and "s3cr3t" not in added.message

        r = admin.post("/admin/releases/remove", {"version": "13.346"})
        assert r.status_code == 303 and r.headers["location"] == "/admin/releases?done=removed"
        assert ">13.346</th>" not in admin.get("/admin/releases").text
        removed = world.fleet.events.search(target="13.346", action_prefix="release.remove")[0]
        assert (removed.outcome, removed.actor) == ("ok", f"discord:{ADMIN_ID}")
    finally:
        world.cache.policy = kept


def test_a_forgotten_download_stops_its_poller(admin: Browser) -> None:
    r = admin.get("/admin/releases/jobs/0123456789abcdef")
    assert r.status_code == 200 and "hx-trigger" not in r.text and "not known" in r.text


# -- events ----------------------------------------------------------------------------------------


def test_the_event_log_filters_by_target_action_outcome_and_count_from_the_url(admin: Browser,
                                                                              world: World) -> None:
    log = world.fleet.events.acting_as("tester")
    log.record("backup.snapshot", "bob", Outcome.OK, "nightly")
    log.record("backup.snapshot", "bob", Outcome.FAILED, "disk full")
    log.record("backup.thin", "bob", Outcome.OK, "2 removed")
    log.record("instance.start", "bob", Outcome.FAILED, "port taken")
    log.record("backup.snapshot", "carol", Outcome.FAILED, "other instance")
    r = admin.get("/admin/events?target=bob&action=backup.&outcome=failed&limit=25")
    assert r.status_code == 200
    rows = re.findall(r'<tr><td data-label="When".*?</tr>', r.text, re.S)
    assert len(rows) == 1 and "disk full" in rows[0]
    assert 'value="bob"' in r.text and '<option value="failed" selected>' in r.text
    assert '<option value="25" selected>' in r.text
    r = admin.get("/admin/events?target=bob&action=backup.")
    assert [m in r.text for m in ("nightly", "disk full", "2 removed", "port taken")] == [True, True, True, False]
    r = admin.get("/admin/events?target=bob&limit=1")  # a count not offered: the default
    assert '<option value="100" selected>' in r.text
    r = admin.get("/admin/events?outcome=nonsense&action=%25")
    assert r.status_code == 200 and "No events match these filters" in r.text


# -- the host --------------------------------------------------------------------------------------


def test_the_health_page_shows_each_check_with_its_fix(admin: Browser) -> None:
    r = admin.get("/admin/health")
    assert r.status_code == 200
    assert "1 check failed" in r.text and "running (pid 4242)" in r.text
    assert "off by 9 s" in r.text and "install chrony and enable it" in r.text
    assert '<span class="state check-fail">fail</span>' in r.text


def test_the_health_page_says_why_the_checks_could_not_run(world: World) -> None:
    async def daemon_away() -> DoctorReport:
        raise ExternalFailure("the daemon's status could not be read", "see its log")

    panel, _ = build_panel(world, health=daemon_away)
    r = Browser(panel, world.cookies[ADMIN_ID]).get("/admin/health")
    assert r.status_code == 502 and "could not be read. see its log" in r.text.lower()


def test_the_nodes_page_shows_the_runtime_the_host_and_every_node(admin: Browser) -> None:
    r = admin.get("/admin/nodes")
    assert r.status_code == 200
    for text in ("nomad", "container", "bubblewrap 0.8", "not delegated", "directories under /srv/fleet",
                 "node-a", "10.0.0.5", "ready", "2.0 GiB", "tank", "node-b", "down", "this host&#39;s own storage"):
        assert text in r.text, text


def test_the_nodes_page_says_why_the_nodes_are_unknown(world: World) -> None:
    async def nomad_away() -> list[NodeInfo]:
        raise ExternalFailure("Nomad at 10.0.0.1:4646 did not answer")

    panel, _ = build_panel(world, runtime_facts=runtime_facts(replace(daemon_info(), runtime=None), nomad_away))
    r = Browser(panel, world.cookies[ADMIN_ID]).get("/admin/nodes")
    assert r.status_code == 200 and "did not answer" in r.text and "has not reported its runtime" in r.text
