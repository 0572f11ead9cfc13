"""The web panel on a real daemon, through the edge: Discord sign-in (the strict stand-in) for tenants,
the single-use link for admins, what each sees, actions with their CSRF token and Origin, live rows and
the live log over server-sent events, and the refusals (another tenant's instance, a forged POST, a POST
from another site)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from foundry_fleet.services.panel_sessions import PANEL_COOKIE
from tests.e2e.test_backup_login import CLIENT_ID, SECRET, Browser, _handshakes
from tests.support.discord_oauth_standin import DiscordOAuthStandin
from tests.support.edge_client import tls_context
from tests.support.fleets import make_fleet, sign_in_with
from tests.support.harness import FleetHarness, wait_until

pytestmark = pytest.mark.e2e

ALICE, BOB, ADMIN = "300000000000000001", "300000000000000002", "300000000000000009"
USERS = {ALICE: "alice", BOB: "bob", ADMIN: "gm"}
FLEET = "fleet.localhost"


@pytest.fixture(scope="module")
def panel_fleet(tmp_path_factory: pytest.TempPathFactory,
                release_zips: dict[str, Path]) -> Iterator[tuple[FleetHarness, DiscordOAuthStandin]]:
    """alice's instance running, bob's stopped, each with a snapshot; Discord sign-in configured."""
    tmp = tmp_path_factory.mktemp("panel")
    fleet = make_fleet(tmp)
    https_port = fleet.settings().edge.https_port
    fake = DiscordOAuthStandin(CLIENT_ID, SECRET, redirect_uris={f"https://{FLEET}:{https_port}/auth/callback"},
                               users=dict(USERS)).start()
    try:
        sign_in_with(fleet, fake, admins=[ADMIN])
        fleet.edit_config("sample_interval = 30.0", "sample_interval = 1.0")
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.cli("release", "add", str(release_zips["linux"]))  # 13.346: something to upgrade to
        fleet.up()
        fleet.cli("instance", "create", "alice", "--release", "13.345", "--owner", ALICE)
        fleet.cli("instance", "create", "bob", "--release", "13.345", "--owner", BOB, "--no-start")
        for name in ("alice", "bob"):
            fleet.cli("backup", "now", name, "--label", "nightly")
        fleet.wait_state("alice", "running", 60)
        ca = local_ca(fleet)
        for host in ("alice.localhost", FLEET):
            wait_until(lambda h=host: _handshakes(https_port, h, ca), 30, f"a certificate for {host}")
        yield fleet, fake
    finally:
        fleet.tear_down()
        fake.stop()


def local_ca(fleet: FleetHarness) -> Path:
    return fleet.root / "edge" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"


class PanelBrowser(Browser):
    def origin(self) -> str:
        return f"https://{FLEET}:{self.port}"

    def page(self, path: str) -> httpx.Response:
        return self.request("GET", self.url(FLEET, path))

    def csrf(self, path: str = "/") -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.page(path).text)
        assert match, path
        return match.group(1)

    def post(self, path: str, fields: dict[str, str], origin: str | None = "own") -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin is not None:
            headers["Origin"] = self.origin() if origin == "own" else origin
        return self.request("POST", self.url(FLEET, path), headers=headers, content=urlencode(fields).encode())

    def sign_in_with_discord(self) -> httpx.Response:
        # Not signed in: a page of the panel sends the browser to sign in, and back to it after.
        chain = self.visit(self.url(FLEET, "/instances/alice"))
        assert [(urlsplit(u).path, urlsplit(u).query) for u, _ in chain] == [
            ("/instances/alice", ""), ("/login", "next=%2Finstances%2Falice")]
        login = chain[-1][1]
        assert login.status_code == 200 and "Sign in with Discord" in login.text
        chain = self.visit(self.url(FLEET, "/login/discord?next=/instances/alice"))
        hops = [(urlsplit(u).hostname, urlsplit(u).path) for u, _ in chain]
        # No ticket hop: the callback is on the fleet host itself.
        assert hops == [(FLEET, "/login/discord"), ("127.0.0.1", "/oauth2/authorize"), (FLEET, "/auth/callback"),
                        (FLEET, "/instances/alice")], hops
        return chain[-1][1]

    def sign_in_with_link(self, fleet: FleetHarness) -> None:
        url = fleet.cli("panel", "login").out.splitlines()[0]
        shown = self.request("GET", url)
        assert shown.status_code == 200 and PANEL_COOKIE not in self.jar.get(FLEET, {})
        token = re.search(r'name="t" value="([^"]+)"', shown.text)
        assert token, shown.text
        fields = {"t": token.group(1)}
        if csrf := re.search(r'name="csrf" value="([^"]*)"', shown.text):
            fields["csrf"] = csrf.group(1)
        r = self.post("/login/link", fields)
        assert r.status_code == 303 and PANEL_COOKIE in self.jar[FLEET], r.text


def events_until(browser: PanelBrowser, path: str, wanted: str, during: float, action=None) -> str:
    """Read the event stream at `path` (as the page's EventSource does) until `wanted` is in it; `action`
    runs once the stream is open."""
    seen = ""
    cookies = "; ".join(f"{k}={v}" for k, v in browser.jar[FLEET].items())
    with httpx.Client(verify=tls_context(browser.ca), timeout=30) as client:
        with client.stream("GET", f"https://127.0.0.1:{browser.port}{path}",
                           headers={"Host": f"{FLEET}:{browser.port}", "Cookie": cookies, "Accept": "text/event-stream"},
                           extensions={"sni_hostname": FLEET}) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            if action is not None:
                threading.Thread(target=action, daemon=True).start()
            deadline = time.monotonic() + during
            for chunk in stream.iter_text():
                seen += chunk
                if wanted in seen or time.monotonic() > deadline:
                    break
    return seen


def test_a_tenant_signs_in_with_discord_and_sees_only_their_instances(panel_fleet) -> None:
    fleet, _fake = panel_fleet
    browser = PanelBrowser(fleet.settings().edge.https_port, local_ca(fleet), ALICE)
    page = browser.sign_in_with_discord()
    assert page.status_code == 200 and "alice" in page.text
    # The session cookie: the fleet host's alone, HTTPS only, out of scripts' reach.
    (raw,) = [c for h, c in browser.set_cookies if h == FLEET and c.startswith(PANEL_COOKIE + "=")]
    assert "httponly" in raw.lower() and "secure" in raw.lower() and "domain" not in raw.lower()
    overview = browser.page("/")
    assert overview.status_code == 200
    assert 'href="/instances/alice"' in overview.text and "/instances/bob" not in overview.text
    # Every panel answer carries the strict policy: no inline script could run.
    csp = overview.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert not re.search(r"<script(?![^>]*\bsrc=)", overview.text) and " style=" not in overview.text
    # Pages are compressed on the way (the overview of many instances is repetitive markup).
    assert overview.headers.get("content-encoding") in ("zstd", "gzip")
    # bob's instance does not exist for alice, whether she looks or acts.
    assert browser.page("/instances/bob").status_code == 404
    r = browser.post("/instances/bob/stop", {"csrf": browser.csrf()})
    assert r.status_code == 404
    # Admin pages are not hers.
    assert browser.page("/admin/invites").status_code in (403, 404)


def test_actions_need_the_token_and_the_fleet_s_own_origin(panel_fleet) -> None:
    fleet, _fake = panel_fleet
    browser = PanelBrowser(fleet.settings().edge.https_port, local_ca(fleet), ALICE)
    browser.sign_in_with_discord()
    token = browser.csrf("/instances/alice")
    # A cross-site form (another site's page POSTing with the browser's cookie) does nothing.
    r = browser.post("/instances/alice/stop", {"csrf": token}, origin="https://evil.example")
    assert r.status_code == 403
    # Nor does a form without the token, or with another session's.
    assert browser.post("/instances/alice/stop", {}).status_code == 403
    other = PanelBrowser(fleet.settings().edge.https_port, local_ca(fleet), ALICE)
    other.sign_in_with_discord()
    assert browser.post("/instances/alice/stop", {"csrf": other.csrf()}).status_code == 403
    assert fleet.cli("instance", "show", "alice", "--json").json()["desired"] == "running"
    stopped = [e for e in fleet.cli("events", "--json", "--limit", "200").json()
               if e["action"] == "instance.stop" and e["target"] == "alice"]
    assert stopped == []


def test_an_admin_signs_in_with_the_link_and_a_stop_shows_up_live(panel_fleet) -> None:
    fleet, _fake = panel_fleet
    admin = PanelBrowser(fleet.settings().edge.https_port, local_ca(fleet))
    admin.sign_in_with_link(fleet)
    overview = admin.page("/")
    assert "/instances/alice" in overview.text and "/instances/bob" in overview.text
    # Memory and CPU of the running instance, sampled by the daemon.
    wait_until(lambda: "MiB" in admin.page("/instances/alice").text, 20, "a memory sample of alice")
    token = admin.csrf("/instances/alice")

    def stop() -> None:
        time.sleep(0.5)
        r = admin.post("/instances/alice/stop", {"csrf": token})
        assert r.status_code == 303 and r.headers["location"].startswith("/instances/alice")

    seen = events_until(admin, "/panel/events?view=overview", "state-stopped", 60, action=stop)
    assert "event: row-alice" in seen and "state-stopped" in seen, seen[-2000:]
    events = fleet.cli("events", "--json", "--limit", "200").json()
    assert any(e["action"] == "instance.stop" and e["actor"] == "panel:admin-link" for e in events) or \
        any(e["target"] == "alice" and e["actor"] == "panel:admin-link" for e in events)
    r = admin.post("/instances/alice/start", {"csrf": token})
    assert r.status_code == 303
    fleet.wait_state("alice", "running", 60)


def test_status_shows_the_memory_and_players_the_panel_shows(panel_fleet) -> None:
    """`status` gets its figures from the daemon, from the same cards as the panel."""
    fleet, _fake = panel_fleet
    fleet.wait_state("alice", "running", 60)

    def alice() -> dict | None:
        found = next(i for i in fleet.cli("status", "--json").json()["instances"] if i["name"] == "alice")
        return found if found["memory_bytes"] and found["players"] is not None else None

    figures = wait_until(alice, 30, "alice's memory and players in status")
    assert figures["players"] == 0 and figures["uptime_s"] >= 0
    row = next(line for line in fleet.cli("status").out.splitlines() if line.startswith("alice "))
    assert re.search(r"running\s.*\d MiB.*\s0\s", row), row
    assert "only the running daemon knows" not in fleet.cli("status").out


def test_the_log_streams_what_the_server_writes(panel_fleet) -> None:
    fleet, _fake = panel_fleet
    fleet.wait_state("alice", "running", 60)
    browser = PanelBrowser(fleet.settings().edge.https_port, local_ca(fleet), ALICE)
    browser.sign_in_with_discord()

    def restart() -> None:
        time.sleep(0.5)
        browser.post("/instances/alice/restart", {"csrf": browser.csrf("/instances/alice")})

    # A restart makes the server write its start-up lines again: they arrive on the open stream.
    seen = events_until(browser, "/instances/alice/log/stream", "event: lines", 60, action=restart)
    assert "event: lines" in seen and "data: " in seen, seen[-2000:]
    fleet.wait_state("alice", "running", 60)


def test_backup_restore_and_upgrade_from_the_panel(panel_fleet) -> None:
    fleet, _fake = panel_fleet
    admin = PanelBrowser(fleet.settings().edge.https_port, local_ca(fleet))
    admin.sign_in_with_link(fleet)
    token = admin.csrf("/instances/bob")
    before = {s["name"] for s in fleet.cli("backup", "list", "bob", "--json").json()}
    r = admin.post("/instances/bob/backup", {"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/instances/bob?done=backup"
    taken = {s["name"] for s in fleet.cli("backup", "list", "bob", "--json").json()} - before
    assert len(taken) == 1 and next(iter(taken)).startswith("manual-")
    nightly = next(n for n in before if n.startswith("nightly-"))
    assert f"{nightly}.zip" in admin.page("/instances/bob").text

    # The confirmation names the snapshot and the safety snapshot the current data is kept as.
    confirm = admin.page(f"/instances/bob/restore?snapshot={nightly}")
    assert confirm.status_code == 200 and nightly in confirm.text and "safety-" in confirm.text
    assert admin.page("/instances/bob/restore?snapshot=nightly-1999").status_code == 404
    r = admin.post("/instances/bob/restore", {"csrf": token, "snapshot": nightly})
    assert r.status_code == 303 and r.headers["location"] == "/instances/bob?done=restore"
    wait_until(lambda: any(e["action"] == "backup.restore" and e["target"] == "bob" and nightly in e["message"]
                           for e in fleet.cli("events", "--json", "--limit", "200").json()), 60, "bob's restore")
    assert any(s["name"].startswith("safety-") for s in fleet.cli("backup", "list", "bob", "--json").json())

    # Upgrade: a release the cache does not have is said on the page, and nothing changes.
    r = admin.post("/instances/bob/upgrade", {"csrf": token, "release": "13.999"})
    assert r.status_code == 404 and "13.999" in r.text
    r = admin.post("/instances/bob/upgrade", {"csrf": token, "release": "13.346"})
    assert r.status_code == 303
    wait_until(lambda: fleet.cli("instance", "show", "bob", "--json").json()["release"] == "13.346", 120,
               "bob on 13.346")
    wait_until(lambda: fleet.cli("instance", "show", "bob", "--json").json()["state"] == "stopped", 120,
               "bob stopped again, as before the upgrade")
