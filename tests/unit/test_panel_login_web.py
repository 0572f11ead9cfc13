"""The panel's sign-in pages and its door for forms, over HTTP as a browser at https://fleet.example.test
meets them (Starlette's TestClient), with the strict Discord stand-in for the Discord sign-in."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

with warnings.catch_warnings():
    # Starlette would rather drive its test client with httpx2; the fleet's httpx does the same job.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from foundry_fleet.services.panel_sessions import PANEL_COOKIE, PanelSessions
from foundry_fleet.services.web_login import NONCE_COOKIE, SESSION_COOKIE, nonce_hash
from foundry_fleet.web.auth import auth_routes
from foundry_fleet.web.panel.guard import checked_form, signed_in
from foundry_fleet.web.panel.login import login_routes
from tests.support.discord_oauth_standin import DiscordOAuthStandin
from tests.support.panel_login import ADMIN, FLEET_HOST, ORIGIN, OWNER, consent, make_login, make_panel, standin

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NONCE = "N" * 43


class Fleet:
    """The fleet's web app as far as signing in goes, with one page and one action behind the door."""

    def __init__(self, tmp_path: Path, discord: DiscordOAuthStandin | None, with_panel: bool = True) -> None:
        self.login = make_login(tmp_path, discord)
        self.panel: PanelSessions = make_panel(self.login)
        self.done: list[tuple[str, dict[str, str]]] = []  # the actions that were carried out
        self.app = Starlette(routes=[
            *auth_routes(self.login, self.panel if with_panel else None),
            *login_routes(self.panel),
            Route("/instances/{name}", self.page, methods=["GET"]),
            Route("/instances/{name}/start", self.start, methods=["POST"]),
        ])

    async def page(self, request: Request) -> Response:
        user = await signed_in(request, self.panel)
        if isinstance(user, Response):
            return user
        return PlainTextResponse(f"{request.path_params['name']} for {user.label} admin={user.admin} "
                                 f"csrf={self.panel.csrf_token(request.cookies.get(PANEL_COOKIE))}")

    async def start(self, request: Request) -> Response:
        checked = await checked_form(request, self.panel)
        if isinstance(checked, Response):
            return checked
        user, form = checked
        self.done.append((user.principal.actor, form))
        return PlainTextResponse("started")

    def browser(self) -> TestClient:
        return TestClient(self.app, base_url=ORIGIN, follow_redirects=False)


@pytest.fixture
def discord() -> Iterator[DiscordOAuthStandin]:
    with standin() as fake:
        yield fake


def link_path(fleet: Fleet) -> str:
    url = urlsplit(fleet.panel.make_link())
    assert url.netloc == FLEET_HOST
    return f"{url.path}?{url.query}"


def token_of(page: str) -> str:
    match = re.search(r'name="t" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in_with_link(fleet: Fleet, browser: TestClient) -> None:
    page = browser.get(link_path(fleet))
    r = browser.post("/login/link", content=urlencode({"t": token_of(page.text)}), headers={**FORM, "Origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text


def csrf_of(browser: TestClient) -> str:
    return browser.get("/instances/alice").text.split("csrf=")[1]


def cookie_attributes(response: httpx.Response, name: str) -> tuple[str, set[str]]:
    (raw,) = [c for c in response.headers.get_list("set-cookie") if c.startswith(name + "=")]
    return raw.lower(), {a.strip().split("=")[0].lower() for a in raw.split(";")[1:]}


def test_the_login_page_offers_discord_when_it_is_set_up(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    r = Fleet(tmp_path, discord).browser().get("/login", params={"next": "/instances/alice"})
    assert r.status_code == 200 and "Sign in with Discord" in r.text
    assert 'href="/login/discord?next=/instances/alice"' in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-store"
    # A next that leaves the panel is not carried along.
    assert 'href="/login/discord?next=/"' in Fleet(tmp_path / "2", discord).browser().get("/login?next=https://evil.example/").text


def test_without_discord_the_login_page_says_how_an_admin_gets_in(tmp_path: Path) -> None:
    browser = Fleet(tmp_path, None).browser()
    r = browser.get("/login")
    assert r.status_code == 200 and "Discord sign-in is not set up" in r.text
    assert "foundry-fleet panel login" in r.text and "Sign in with Discord" not in r.text
    r = browser.get("/login/discord", params={"next": "/"})
    assert r.status_code == 404 and "not set up" in r.text
    nobody = TestClient(Starlette(routes=login_routes(None)), base_url=ORIGIN)
    assert "not set up" in nobody.get("/login").text


def test_pages_send_a_stranger_to_sign_in_and_back(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, None)
    browser = fleet.browser()
    r = browser.get("/instances/alice", params={"tab": "logs"})
    assert r.status_code == 303
    assert r.headers["location"] == "/login?" + urlencode({"next": "/instances/alice?tab=logs"})
    # htmx is told to load the sign-in page rather than put it into a fragment.
    r = browser.get("/instances/alice", headers={"HX-Request": "true", "HX-Current-URL": f"{ORIGIN}/admin/events"})
    assert r.status_code == 401 and r.headers["hx-redirect"] == "/login?" + urlencode({"next": "/admin/events"})
    r = browser.post("/instances/alice/start", content="csrf=x", headers={**FORM, "Origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"].startswith("/login?") and fleet.done == []
    sign_in_with_link(fleet, browser)
    assert browser.get("/instances/alice").text.startswith("alice for admin")
    r = browser.get("/login", params={"next": "/instances/alice"})  # signed in already: straight there
    assert r.status_code == 303 and r.headers["location"] == "/instances/alice"


def test_opening_a_link_uses_nothing_up_pressing_its_button_does(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, None)
    path = link_path(fleet)
    preview = fleet.browser()  # a chat app fetching the link for its preview
    for _ in range(2):
        r = preview.get(path)
        assert r.status_code == 200 and 'action="/login/link"' in r.text and "Sign in" in r.text
        assert PANEL_COOKIE not in preview.cookies
    browser = fleet.browser()
    token = token_of(browser.get(path).text)
    r = browser.post("/login/link", content=urlencode({"t": token}), headers={**FORM, "Origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"] == "/"
    raw, attributes = cookie_attributes(r, PANEL_COOKIE)
    assert {"httponly", "secure", "path", "samesite", "max-age"} <= attributes and "domain" not in attributes
    assert "samesite=lax" in raw and "path=/" in raw and "max-age=3600" in raw
    assert browser.get("/instances/alice").status_code == 200
    # Used: neither its page nor its button signs anyone in again.
    again = fleet.browser()
    r = again.get(path)
    assert r.status_code == 403 and "already used" in r.text and 'action="/login/link"' not in r.text
    r = again.post("/login/link", content=urlencode({"t": token}), headers={**FORM, "Origin": ORIGIN})
    assert r.status_code == 403 and "already used" in r.text and PANEL_COOKIE not in again.cookies


@pytest.mark.parametrize("headers", [{}, {"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Origin": "https://alice.example.test"}, {"Origin": "http://fleet.example.test"},
                                     {"Referer": "https://evil.example/login/link"}])
def test_a_link_is_used_only_from_the_fleet_hosts_own_page(tmp_path: Path, headers: dict[str, str]) -> None:
    fleet = Fleet(tmp_path, None)
    browser = fleet.browser()
    token = token_of(browser.get(link_path(fleet)).text)
    r = browser.post("/login/link", content=urlencode({"t": token}), headers={**FORM, **headers})
    assert r.status_code == 403 and "nobody was signed in" in r.text and PANEL_COOKIE not in browser.cookies
    # Refused, it is still good for the real button.
    r = browser.post("/login/link", content=urlencode({"t": token}),
                     headers={**FORM, "Referer": f"{ORIGIN}/login/link?t=x"})
    assert r.status_code == 303


def test_signing_out_needs_the_sessions_token(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, None)
    browser = fleet.browser()
    sign_in_with_link(fleet, browser)
    cookie = browser.cookies[PANEL_COOKIE]
    token = csrf_of(browser)
    for form, headers in (({}, {"Origin": ORIGIN}), ({"csrf": "0" * 64}, {"Origin": ORIGIN}),
                          ({"csrf": token}, {"Origin": "https://evil.example"}), ({"csrf": token}, {})):
        r = browser.post("/logout", content=urlencode(form), headers={**FORM, **headers})
        assert r.status_code == 403 and "Nothing was done" in r.text, (form, headers)
        assert browser.get("/instances/alice").status_code == 200
    r = browser.post("/logout", content=urlencode({"csrf": token}), headers={**FORM, "Origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    raw, _ = cookie_attributes(r, PANEL_COOKIE)
    assert "max-age=0" in raw and "secure" in raw and "path=/" in raw
    assert browser.get("/instances/alice").status_code == 303
    assert fleet.panel.user(cookie) is None  # the session itself is gone, not only the cookie


def test_a_form_acts_only_from_the_panels_own_pages(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, None)
    browser = fleet.browser()
    sign_in_with_link(fleet, browser)
    token = csrf_of(browser)
    good = {**FORM, "Origin": ORIGIN}
    refusals = [
        (urlencode({"csrf": token}), {**FORM, "Origin": "https://evil.example"}, "not sent from a page of this panel"),
        (urlencode({"csrf": token}), {**FORM, "Origin": "https://alice.example.test"}, "not sent from a page"),
        (urlencode({"csrf": token}), FORM, "not sent from a page"),  # neither Origin nor Referer
        (urlencode({"csrf": token}), {"Content-Type": "text/plain", "Origin": ORIGIN}, "not sent as a form"),
        ('{"csrf": "%s"}' % token, {"Content-Type": "application/json", "Origin": ORIGIN}, "not sent as a form"),
        (urlencode({"csrf": token, "x": "y" * 20000}), good, "larger than 16384 bytes"),
        ("&".join(f"f{i}=1" for i in range(60)) + f"&csrf={token}", good, "more than 50 fields"),
        (urlencode({"csrf": "0" * 64}), good, "does not belong to your current sign-in"),
        (urlencode({"release": "13"}), good, "does not belong to your current sign-in"),
    ]
    for body, headers, says in refusals:
        r = browser.post("/instances/alice/start", content=body, headers=headers)
        assert r.status_code == 403 and says in r.text and "Nothing was done" in r.text, (headers, says, r.text)
        assert "<title>Nothing was done · foundry-fleet</title>" in r.text and r.headers["x-frame-options"] == "DENY"
    assert fleet.done == []
    # Another session's token is worth nothing here.
    other = fleet.browser()
    sign_in_with_link(fleet, other)
    r = browser.post("/instances/alice/start", content=urlencode({"csrf": csrf_of(other)}), headers=good)
    assert r.status_code == 403 and fleet.done == []
    r = browser.post("/instances/alice/start", content=urlencode({"csrf": token, "release": "13", "note": ""}),
                     headers=good)
    assert r.status_code == 200 and r.text == "started"
    r = browser.post("/instances/alice/start", content="", headers={**good, "X-CSRF-Token": token, "HX-Request": "true"})
    assert r.status_code == 200
    r = browser.post("/instances/alice/start", content="", headers={**FORM, "Referer": f"{ORIGIN}/instances/alice",
                                                                      "X-CSRF-Token": token})
    assert r.status_code == 200
    assert fleet.done == [("panel:admin-link", {"release": "13", "note": ""}), ("panel:admin-link", {}),
                          ("panel:admin-link", {})]


def test_the_discord_sign_in_ends_with_the_panel_cookie_and_no_ticket(tmp_path: Path,
                                                                       discord: DiscordOAuthStandin) -> None:
    fleet = Fleet(tmp_path, discord)
    browser = fleet.browser()
    r = browser.get("/login/discord", params={"next": "/instances/alice"})
    assert r.status_code == 302
    authorize = r.headers["location"]
    assert authorize.startswith(f"{discord.base}/oauth2/authorize?")
    assert parse_qs(urlsplit(authorize).query)["redirect_uri"] == [f"{ORIGIN}/auth/callback"]
    flow_cookie, attributes = cookie_attributes(r, "__Host-fleet_login_" + parse_qs(urlsplit(authorize).query)["state"][0])
    assert "secure" in attributes and "httponly" in attributes and "domain" not in attributes
    callback = urlsplit(consent(authorize, OWNER))
    r = browser.get(f"{callback.path}?{callback.query}")
    assert r.status_code == 302 and r.headers["location"] == f"{ORIGIN}/instances/alice"  # not a ticket on a tenant host
    raw, attributes = cookie_attributes(r, PANEL_COOKIE)
    assert {"httponly", "secure", "samesite", "path"} <= attributes and "domain" not in attributes
    assert "samesite=lax" in raw and "max-age=3600" in raw
    assert not any(c.startswith(SESSION_COOKIE) for c in r.headers.get_list("set-cookie"))
    assert not any(k.startswith("__Host-fleet_login_") for k in browser.cookies.keys())  # the flow is over
    page = browser.get("/instances/alice")
    assert page.status_code == 200 and page.text.startswith(f"alice for Discord user {OWNER} admin=False")
    # An admin by the config is one here too.
    admin = fleet.browser()
    start = admin.get("/login/discord", params={"next": "/admin/events"})
    callback = urlsplit(consent(start.headers["location"], ADMIN))
    assert admin.get(f"{callback.path}?{callback.query}").headers["location"] == f"{ORIGIN}/admin/events"
    assert "admin=True" in admin.get("/instances/alice").text
    # A next that would leave the panel never starts a sign-in.
    r = fleet.browser().get("/login/discord", params={"next": "https://evil.example/"})
    assert r.status_code == 400 and "page of the panel" in r.text and "location" not in r.headers


def test_the_callback_without_the_panel_refuses_a_panel_sign_in(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    fleet = Fleet(tmp_path, discord, with_panel=False)
    browser = fleet.browser()
    start = browser.get("/login/discord", params={"next": "/"})
    callback = urlsplit(consent(start.headers["location"], OWNER))
    r = browser.get(f"{callback.path}?{callback.query}")
    assert r.status_code == 404 and "not served" in r.text and PANEL_COOKIE not in browser.cookies


def test_the_backups_sign_in_through_the_same_callback_is_unchanged(tmp_path: Path,
                                                                     discord: DiscordOAuthStandin) -> None:
    fleet = Fleet(tmp_path, discord)
    browser = fleet.browser()
    r = browser.get("/auth/login", params={"host": "alice.example.test", "next": "/backups/x/",
                                           "bind": nonce_hash(NONCE)})
    assert r.status_code == 302
    callback = urlsplit(consent(r.headers["location"], OWNER))
    r = browser.get(f"{callback.path}?{callback.query}")
    assert r.status_code == 302 and r.headers["location"].startswith("https://alice.example.test/auth/ticket?t=")
    assert not any(c.startswith(PANEL_COOKIE) for c in r.headers.get_list("set-cookie"))
    assert PANEL_COOKIE not in browser.cookies
    # The ticket signs the browser in on the tenant host (and only with the nonce it was given there).
    tenant = TestClient(fleet.app, base_url="https://alice.example.test", follow_redirects=False)
    tenant.cookies.set(NONCE_COOKIE, NONCE)
    ticket = urlsplit(r.headers["location"])
    r = tenant.get(f"{ticket.path}?{ticket.query}")
    assert r.status_code == 302 and r.headers["location"] == "/backups/x/"
    backups_cookie = tenant.cookies[SESSION_COOKIE]
    assert fleet.login.session_user(backups_cookie, "alice.example.test") == OWNER
    assert fleet.panel.user(backups_cookie) is None
    # That cookie opens no panel page on the fleet host.
    browser.cookies.set(PANEL_COOKIE, backups_cookie)
    assert browser.get("/instances/alice").status_code == 303
