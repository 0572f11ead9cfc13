"""Discord sign-in for tenants' backups: the decisions on their own, then the whole flow through real
Caddy, a real daemon and a strict stand-in for Discord, played by hand like a browser would."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from foundry_fleet.config import DiscordSection
from foundry_fleet.domain.errors import ExternalFailure, Forbidden, InvalidInput, Unsupported
from foundry_fleet.services.web_login import (
    NONCE_COOKIE,
    SESSION_COOKIE,
    Allow,
    Deny,
    LoginTokens,
    SignedIn,
    SignIn,
    WebLogin,
    load_or_create_key,
    nonce_hash,
    safe_next,
)
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import UsedTicketRow
from tests.support.cdp_browser import Chromium
from tests.support.fleets import make_fleet, sign_in_with
from tests.support.edge_client import served_certificate, tls_context
from tests.support.discord_oauth_standin import DiscordOAuthStandin
from tests.support.harness import FleetHarness, file_digests, wait_until
from tests.e2e.test_edge_browser import CHROMIUM, browser_home, needs_browser
from tests.e2e.test_tenant_pages_browser import shoot

CLIENT_ID = "1100000000000000001"
SECRET = "s3cr3t-client-secret-value"
OWNER = "200000000000000001"  # alice's game master
OTHER = "200000000000000002"  # bob's game master
ADMIN = "200000000000000009"
STRANGER = "200000000000000404"
USERS = {OWNER: "alice", OTHER: "bob", ADMIN: "gm", STRANGER: "stranger"}
NONCE = "N" * 43  # the sign-in nonce the tenant host gave "this browser"
BIND = nonce_hash(NONCE)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# --- the service on its own ------------------------------------------------------------------


@pytest.fixture
def discord() -> Iterator[DiscordOAuthStandin]:
    with DiscordOAuthStandin(CLIENT_ID, SECRET, redirect_uris={"https://fleet.localhost:8443/auth/callback"},
                     users=dict(USERS)) as fake:
        yield fake


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def make_login(tmp_path: Path, discord: DiscordOAuthStandin, clock: Callable[[], float] = time.time,
               **settings: object) -> WebLogin:
    section = DiscordSection(**{
        "client_id": CLIENT_ID, "client_secret_file": private_file(tmp_path / "client-secret", SECRET),
        "oauth_base": discord.base, "api_base": discord.api, "admin_users": [ADMIN], "session_hours": 1.0,
        **settings})
    hosts = {"alice.localhost": "alice", "games.alice.example": "alice", "bob.localhost": "bob"}
    owners = {"alice": OWNER, "bob": OTHER}
    return WebLogin(section, open_database(tmp_path / "state" / "fleet.sqlite"), tmp_path / "state" / "web-login.key",
                    "fleet.localhost", 8443, hosts.get, owners.get, clock=clock)


def consent(discord: DiscordOAuthStandin, authorize_url: str, user: str, deny: bool = False) -> dict[str, str]:
    """The browser at Discord: signed in there as `user`; returns the callback's query."""
    cookie = f"discord_user={user}" + ("; discord_consent=deny" if deny else "")
    r = httpx.get(authorize_url, headers={"Cookie": cookie}, timeout=10)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith("https://fleet.localhost:8443/auth/callback?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def ticket_for(login: WebLogin, discord: DiscordOAuthStandin, user: str, host: str = "alice.localhost",
               next_path: str = "/backups/", nonce: str = NONCE) -> str:
    start = login.begin(host, next_path, nonce_hash(nonce))
    done = login.finish(consent(discord, start.authorize_url, user), {start.cookie_name: start.cookie_value})
    assert done.cookie_name == start.cookie_name
    assert done.location.startswith(f"https://{host}:8443/auth/ticket?t=")
    return parse_qs(urlsplit(done.location).query)["t"][0]


def sign_in(login: WebLogin, discord: DiscordOAuthStandin, user: str, host: str = "alice.localhost") -> SignedIn:
    return login.redeem(ticket_for(login, discord, user, host), host, NONCE)


def test_the_owner_and_admins_may_read_others_may_not(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    owner = sign_in(login, discord, OWNER)
    assert owner.user == OWNER and owner.next == "/backups/" and owner.max_age == 3600
    assert login.decide(owner.cookie_value, "alice.localhost", "GET", "/backups/x.zip") == Allow(OWNER)
    assert login.decide(owner.cookie_value, "Alice.Localhost:8443", "HEAD", "/backups/") == Allow(OWNER)
    admin = sign_in(login, discord, ADMIN)
    assert login.decide(admin.cookie_value, "alice.localhost", "GET", "/backups/") == Allow(ADMIN)
    other = sign_in(login, discord, OTHER)
    denied = login.decide(other.cookie_value, "alice.localhost", "GET", "/backups/")
    assert isinstance(denied, Deny) and denied.status == 403 and denied.user == OTHER
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        refused = login.decide(owner.cookie_value, "alice.localhost", method, "/backups/x.zip")
        assert isinstance(refused, Deny) and refused.status == 403
    # Only /backups/ is behind this check, and only hosts of this fleet have one.
    assert isinstance(login.decide(owner.cookie_value, "alice.localhost", "GET", "/-/setup"), Deny)
    assert login.decide(owner.cookie_value, "nobody.localhost", "GET", "/backups/") == Deny(404, "There is no game at this address.")


def test_without_a_session_the_browser_is_sent_to_sign_in(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    decision = login.decide(None, "alice.localhost", "GET", "/backups/2026-01-01/Data/worlds/?x=1")
    assert isinstance(decision, SignIn)
    url = urlsplit(decision.location)
    assert (url.scheme, url.netloc, url.path) == ("https", "fleet.localhost:8443", "/auth/login")
    # The browser gets a nonce to keep on the tenant host; only its hash travels with the sign-in.
    assert len(decision.nonce) == 43
    assert parse_qs(url.query) == {"host": ["alice.localhost"], "next": ["/backups/2026-01-01/Data/worlds/?x=1"],
                                   "bind": [nonce_hash(decision.nonce)]}
    # A browser that already holds a nonce keeps it (two tabs signing in at once); a malformed one is replaced.
    assert login.decide(None, "alice.localhost", "GET", "/backups/", NONCE).nonce == NONCE  # type: ignore[union-attr]
    fresh = login.decide(None, "alice.localhost", "GET", "/backups/", "short")
    assert isinstance(fresh, SignIn) and fresh.nonce not in ("short", NONCE, decision.nonce)


def test_a_session_belongs_to_one_host_and_ends(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    clock = Clock()
    login = make_login(tmp_path, discord, clock)
    admin = sign_in(login, discord, ADMIN, "bob.localhost")
    assert login.decide(admin.cookie_value, "bob.localhost", "GET", "/backups/") == Allow(ADMIN)
    # The admin may read alice's backups, but not with the cookie bob's host gave them.
    assert isinstance(login.decide(admin.cookie_value, "alice.localhost", "GET", "/backups/"), SignIn)
    clock.now += 3600 - 1
    assert login.decide(admin.cookie_value, "bob.localhost", "GET", "/backups/") == Allow(ADMIN)
    clock.now += 2
    assert isinstance(login.decide(admin.cookie_value, "bob.localhost", "GET", "/backups/"), SignIn)


def test_forged_cookies_are_worth_nothing(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    real = sign_in(login, discord, OWNER).cookie_value
    other_key = LoginTokens(b"0" * 64).session.dumps({"sid": "x", "host": "alice.localhost"})
    tampered = real[:-3] + ("AAA" if not real.endswith("AAA") else "BBB")
    not_a_session = login.tokens().ticket.dumps({"sid": "x", "host": "alice.localhost"})  # another kind of token
    for cookie in ("", "garbage", other_key, tampered, not_a_session, "x" * 5000):
        assert isinstance(login.decide(cookie, "alice.localhost", "GET", "/backups/"), SignIn), cookie


def test_a_ticket_works_once_on_its_own_host_for_a_minute(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    clock = Clock()
    login = make_login(tmp_path, discord, clock)
    ticket = ticket_for(login, discord, OWNER)
    with pytest.raises(Forbidden, match="another game"):
        login.redeem(ticket, "bob.localhost", NONCE)
    assert login.redeem(ticket, "alice.localhost", NONCE).user == OWNER
    with pytest.raises(Forbidden, match="already used"):
        login.redeem(ticket, "alice.localhost", NONCE)
    late = ticket_for(login, discord, OWNER)
    clock.now += 62
    with pytest.raises(Forbidden, match="expired"):
        login.redeem(late, "alice.localhost", NONCE)
    with pytest.raises(Forbidden, match="not valid"):
        login.redeem(LoginTokens(b"1" * 64, clock).make_ticket(OWNER, "alice.localhost", "/backups/", BIND),
                     "alice.localhost", NONCE)
    # Used tickets are remembered only as long as they could be replayed.
    clock.now += 10
    login.redeem(ticket_for(login, discord, OWNER), "alice.localhost", NONCE)
    with login.sessions() as s:
        assert s.scalar(select(func.count()).select_from(UsedTicketRow)) == 1


@pytest.mark.parametrize("value", ["/backups/", "/backups", "/backups/2026-01-01.zip", "/backups/a%20b/?x=1&y=2"])
def test_next_paths_that_stay_in_the_backups(value: str) -> None:
    assert safe_next(value) == value


@pytest.mark.parametrize("value", [
    "", "https://evil.example/backups/", "//evil.example/backups/", "/\\evil.example/backups/", "/backups/../-/",
    "/backups/%2e%2e/auth/logout", "/backups/x#frag", "/-/", "/backupsx", "backups/", "/backups/\r\nSet-Cookie:x",
    "/backups/%5c%5cevil", "javascript:alert(1)", "/backups/" + "a" * 3000,
])
def test_next_paths_that_leave_them(value: str) -> None:
    assert safe_next(value) is None


def test_sign_in_starts_only_for_games_of_this_fleet(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    with pytest.raises(InvalidInput, match="not a game"):
        login.begin("evil.example", "/backups/", BIND)
    with pytest.raises(InvalidInput, match="under /backups/"):
        login.begin("alice.localhost", "https://evil.example/", BIND)
    start = login.begin("games.alice.example", None, BIND)
    query = parse_qs(urlsplit(start.authorize_url).query)
    assert query["redirect_uri"] == ["https://fleet.localhost:8443/auth/callback"]
    assert query["scope"] == ["identify"] and query["code_challenge_method"] == ["S256"]
    assert query["client_id"] == [CLIENT_ID] and query["response_type"] == ["code"]
    assert start.cookie_name == "__Host-fleet_login_" + query["state"][0] and start.max_age == 600
    assert "verifier" not in start.authorize_url and SECRET not in start.authorize_url


def tampered(signed: str) -> str:
    """The same signed value with one character of its signature changed. (Not its last characters: in
    base64 those may carry only padding bits, and a changed one can decode to the same bytes.)"""
    i = len(signed) - 8
    return signed[:i] + ("A" if signed[i] != "A" else "B") + signed[i + 1:]


def test_the_callback_needs_the_flow_this_browser_started(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    clock = Clock()
    login = make_login(tmp_path, discord, clock)
    mine = login.begin("alice.localhost", "/backups/", BIND)
    theirs = login.begin("alice.localhost", "/backups/", BIND)
    answer = consent(discord, theirs.authorize_url, STRANGER)
    # A stranger's callback URL, opened in a browser that started a different sign-in (login CSRF).
    with pytest.raises(InvalidInput, match="not started in this browser"):
        login.finish(answer, {mine.cookie_name: mine.cookie_value})
    with pytest.raises(InvalidInput, match="not started by this fleet"):
        login.finish(answer, {theirs.cookie_name: tampered(theirs.cookie_value)})
    with pytest.raises(InvalidInput, match="does not match"):
        login.finish(answer, {theirs.cookie_name: mine.cookie_value})
    clock.now += 601
    with pytest.raises(InvalidInput, match="more than 10 minutes"):
        login.finish(answer, {theirs.cookie_name: theirs.cookie_value})
    clock.now -= 601
    cancelled = login.begin("alice.localhost", "/backups/", BIND)
    with pytest.raises(Forbidden, match="access_denied"):
        login.finish(consent(discord, cancelled.authorize_url, OWNER, deny=True),
                     {cancelled.cookie_name: cancelled.cookie_value})


def test_discord_refusing_the_client_secret_is_said_without_showing_it(
    tmp_path: Path, discord: DiscordOAuthStandin, caplog: pytest.LogCaptureFixture
) -> None:
    login = make_login(tmp_path, discord)
    private_file(tmp_path / "client-secret", "not-the-secret")
    start = login.begin("alice.localhost", "/backups/", BIND)
    with caplog.at_level(logging.DEBUG), pytest.raises(ExternalFailure, match="refused this fleet") as err:
        login.finish(consent(discord, start.authorize_url, OWNER), {start.cookie_name: start.cookie_value})
    assert "not-the-secret" not in str(err.value.message) + str(err.value.hint) + caplog.text
    assert discord.calls[-1][1] == "/api/oauth2/token"


def test_the_client_secret_file_must_be_private(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    assert login.problem() is None
    secret_file = tmp_path / "client-secret"
    secret_file.chmod(0o644)
    problem = login.problem()
    assert problem is not None and "readable by others" in problem and f"chmod 600 {secret_file}" in problem
    assert SECRET not in problem
    with pytest.raises(ExternalFailure, match="not working") as err:
        login.begin("alice.localhost", "/backups/", BIND)
    assert SECRET not in err.value.message + str(err.value.hint)
    secret_file.unlink()
    assert "does not exist" in (login.problem() or "")


def test_the_signing_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "web-login.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 64
    assert load_or_create_key(path) == key
    path.chmod(0o640)
    with pytest.raises(InvalidInput, match="readable by others"):
        load_or_create_key(path)


def test_without_discord_settings_nobody_gets_in(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord, client_id=None)
    assert not login.enabled and login.problem() is None
    assert login.decide("anything", "alice.localhost", "GET", "/backups/").status == 403  # type: ignore[union-attr]
    with pytest.raises(Unsupported, match="not set up"):
        login.begin("alice.localhost", "/backups/", BIND)


def test_logout_ends_the_session_on_that_host_only(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    alice = sign_in(login, discord, ADMIN, "alice.localhost")
    bob = sign_in(login, discord, ADMIN, "bob.localhost")
    login.logout(alice.cookie_value, "bob.localhost")  # another host's cookie signs nobody out
    assert login.session_user(alice.cookie_value, "alice.localhost") == ADMIN
    login.logout(alice.cookie_value, "alice.localhost")
    assert login.session_user(alice.cookie_value, "alice.localhost") is None
    assert login.session_user(bob.cookie_value, "bob.localhost") == ADMIN


# --- the stand-in refuses what Discord refuses -------------------------------------------------


def _authorize(discord: DiscordOAuthStandin, **changes: str | None) -> httpx.Response:
    params = {"client_id": CLIENT_ID, "redirect_uri": "https://fleet.localhost:8443/auth/callback",
              "response_type": "code", "scope": "identify", "state": "abc",
              "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}
    params.update(changes)
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return httpx.get(f"{discord.base}/oauth2/authorize?{query}", headers={"Cookie": f"discord_user={OWNER}"})


def _token(discord: DiscordOAuthStandin, code: str, auth: tuple[str, str] | None = (CLIENT_ID, SECRET),
           **form: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": "https://fleet.localhost:8443/auth/callback",
            "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", **form}
    return httpx.post(f"{discord.api}/oauth2/token", data=data, auth=auth)


def _code(discord: DiscordOAuthStandin) -> str:
    return parse_qs(urlsplit(_authorize(discord).headers["location"]).query)["code"][0]


def test_the_stand_in_discord_is_strict(discord: DiscordOAuthStandin) -> None:
    assert _authorize(discord, client_id="1").status_code == 400
    assert _authorize(discord, redirect_uri="https://fleet.localhost:8443/auth/callback/").status_code == 400
    for changes, error in (({"response_type": "token"}, "unsupported_response_type"),
                           ({"scope": "identify nonsense"}, "invalid_scope"),
                           ({"code_challenge_method": "plain"}, "invalid_request"),
                           ({"code_challenge": None, "code_challenge_method": None}, "invalid_request")):
        r = _authorize(discord, **changes)
        assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == [error], changes
    # RFC 7636 appendix B: this verifier belongs to this challenge.
    assert _token(discord, _code(discord)).status_code == 200
    assert _token(discord, _code(discord), auth=(CLIENT_ID, "wrong")).status_code == 401
    assert _token(discord, _code(discord), auth=None).status_code == 401
    assert _token(discord, _code(discord), auth=None, client_id=CLIENT_ID, client_secret=SECRET).status_code == 200
    assert _token(discord, _code(discord), client_id=CLIENT_ID, client_secret=SECRET).status_code == 400
    code = _code(discord)
    assert _token(discord, code, code_verifier="x" * 43).json()["error"] == "invalid_grant"
    assert _token(discord, code).json()["error"] == "invalid_grant"  # a code is good for one try
    assert _token(discord, _code(discord), redirect_uri="https://fleet.localhost:8443/x").status_code == 400
    assert _token(discord, _code(discord), grant_type="client_credentials").json()["error"] == "unsupported_grant_type"
    assert httpx.get(f"{discord.api}/users/@me").status_code == 401
    access = _token(discord, _code(discord)).json()["access_token"]
    me = httpx.get(f"{discord.api}/users/@me", headers={"Authorization": f"Bearer {access}"})
    assert me.status_code == 200 and me.json()["id"] == OWNER
    assert httpx.get(f"{discord.api}/users/@me", headers={"Authorization": f"Bearer {access}x"}).status_code == 401


# --- the whole flow through the edge -------------------------------------------------------------


class Browser:
    """Plays a browser: follows redirects by hand, and keeps cookies per host as a browser does for
    host-only cookies. `*.localhost` names are the fleet's Caddy on 127.0.0.1 (name sent as Host and
    SNI); anything else (the stand-in Discord) is reached as it is."""

    def __init__(self, port: int, ca: Path, discord_user: str | None = None, deny: bool = False) -> None:
        self.port = port
        self.ca = ca
        self.jar: dict[str, dict[str, str]] = {}
        self.set_cookies: list[tuple[str, str]] = []  # (host, raw Set-Cookie), for checking attributes
        if discord_user:
            self.jar["127.0.0.1"] = {"discord_user": discord_user, **({"discord_consent": "deny"} if deny else {})}

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.port}{path}"

    def request(self, method: str, url: str, cookies: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, content: bytes | None = None) -> httpx.Response:
        parts = urlsplit(url)
        host = parts.hostname or ""
        jar = self.jar.get(host, {}) if cookies is None else cookies
        headers = {**(headers or {}), **({"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {})}
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            assert host.endswith(".localhost") and parts.port == self.port, url
            with httpx.Client(verify=tls_context(self.ca), timeout=30) as client:
                response = client.request(method, f"https://127.0.0.1:{self.port}{target}",
                                          headers={"Host": parts.netloc, **headers}, content=content,
                                          extensions={"sni_hostname": host})
        else:
            response = httpx.request(method, url, headers=headers, content=content, timeout=30)
        for raw in response.headers.get_list("set-cookie"):
            self.set_cookies.append((host, raw))
            parsed = SimpleCookie()
            parsed.load(raw)
            for name, morsel in parsed.items():
                if morsel["max-age"] == "0":
                    self.jar.get(host, {}).pop(name, None)
                else:
                    self.jar.setdefault(host, {})[name] = morsel.value
        return response

    def visit(self, url: str, until: Callable[[str], bool] = lambda _url: False) -> list[tuple[str, httpx.Response]]:
        """GET `url` and follow redirects; stops before a URL `until` picks (it is then last, unvisited)."""
        chain: list[tuple[str, httpx.Response]] = []
        for _ in range(12):
            response = self.request("GET", url)
            chain.append((url, response))
            if response.status_code not in (301, 302, 303, 307, 308):
                return chain
            url = urljoin(url, response.headers["location"])
            if until(url):
                chain.append((url, httpx.Response(0)))
                return chain
        raise AssertionError(f"too many redirects: {[u for u, _ in chain]}")

    def sign_in(self, host: str, path: str = "/backups/") -> httpx.Response:
        chain = self.visit(self.url(host, path))
        hops = [urlsplit(u) for u, _ in chain]
        assert [(h.hostname, h.path) for h in hops] == [
            (host, path), ("fleet.localhost", "/auth/login"), ("127.0.0.1", "/oauth2/authorize"),
            ("fleet.localhost", "/auth/callback"), (host, "/auth/ticket"), (host, path)], [u for u, _ in chain]
        return chain[-1][1]

    def session(self, host: str) -> str:
        return self.jar[host][SESSION_COOKIE]

    def logout_token(self, host: str, page: str = "/backups/") -> str:
        """The token of the sign-out form on one of the host's pages."""
        text = self.request("GET", self.url(host, page)).text
        match = re.search(r"<form method=post action='/auth/logout'><input type=hidden name=token value='([0-9a-f]+)'>",
                          text)
        assert match, text
        return match.group(1)

    def sign_out(self, host: str, token: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """Press the sign-out button of the backups page (as a browser does: its Origin with the form)."""
        token = self.logout_token(host) if token is None else token
        sent = {"Origin": f"https://{host}:{self.port}", "Content-Type": "application/x-www-form-urlencoded",
                **(headers or {})}
        return self.request("POST", self.url(host, "/auth/logout"), headers={k: v for k, v in sent.items() if v},
                            content=urlencode({"token": token}).encode())


@pytest.fixture(scope="module")
def signed_fleet(tmp_path_factory: pytest.TempPathFactory,
                 release_zips: dict[str, Path]) -> Iterator[tuple[FleetHarness, DiscordOAuthStandin, dict[str, str]]]:
    """One fleet for the module: Discord sign-in configured, alice (OWNER) and bob (OTHER), a backup each."""
    tmp = tmp_path_factory.mktemp("login")
    fleet = make_fleet(tmp)
    https_port = fleet.settings().edge.https_port
    fake = DiscordOAuthStandin(CLIENT_ID, SECRET, redirect_uris={f"https://fleet.localhost:{https_port}/auth/callback"},
                       users=dict(USERS)).start()
    try:
        sign_in_with(fleet, fake, admins=[ADMIN])
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.up()
        snaps = {}
        for name, owner in (("alice", OWNER), ("bob", OTHER)):
            inst = fleet.cli("instance", "create", name, "--release", "13.345", "--owner", owner, "--no-start",
                             "--json").json()["instance"]
            data = Path(inst["data_dir"])
            (data / "Data" / "worlds" / "w").mkdir(parents=True)
            (data / "Data" / "worlds" / "w" / "world.db").write_text(f"{name}'s world")
            (data / "Data" / "assets").mkdir()
            (data / "Data" / "assets" / "map.webp").write_bytes(os.urandom(200_000))
            snaps[name] = fleet.cli("backup", "now", name, "--label", "nightly", "--json").json()["name"]
        ca = fleet.root / "edge" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        for host in ("alice.localhost", "bob.localhost", "fleet.localhost"):
            wait_until(lambda h=host: _handshakes(https_port, h, ca), 30, f"a certificate for {host}")
        yield fleet, fake, snaps
    finally:
        fleet.tear_down()
        fake.stop()


def _handshakes(port: int, host: str, ca: Path) -> bool:
    try:
        served_certificate(port, host, ca)
    except OSError:
        return False
    return True


def _browser(fleet: FleetHarness, user: str | None = None, deny: bool = False) -> Browser:
    ca = fleet.root / "edge" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    return Browser(fleet.settings().edge.https_port, ca, user, deny)


@pytest.mark.e2e
def test_the_owner_signs_in_and_downloads_their_backup(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, fake, snaps = signed_fleet
    browser = _browser(fleet, OWNER)
    listing = browser.sign_in("alice.localhost")
    assert listing.status_code == 200 and snaps["alice"] in listing.text
    # The session cookie: this host's alone, out of scripts' reach, HTTPS only.
    (raw,) = [c for h, c in browser.set_cookies if h == "alice.localhost" and c.startswith(SESSION_COOKIE + "=")]
    attributes = {a.strip().split("=")[0].lower() for a in raw.split(";")[1:]}
    assert {"httponly", "secure", "path", "samesite", "max-age"} <= attributes and "domain" not in attributes
    assert "samesite=lax" in raw.lower() and "path=/;" in raw.lower() + ";" and "max-age=43200" in raw.lower()
    # The code went to Discord with client authentication and the PKCE verifier, never the secret in the URL.
    token_calls = [headers for method, path, headers in fake.calls if path == "/api/oauth2/token"]
    assert token_calls and token_calls[-1]["authorization"].startswith("Basic ")
    assert "code_verifier=" in fake.token_bodies[-1] and SECRET not in fake.token_bodies[-1]
    assert SECRET not in fleet.daemon_log()

    r = browser.request("GET", browser.url("alice.localhost", f"/backups/{snaps['alice']}.zip"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        got = {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}
    assert got == file_digests(fleet.root / "snapshots" / "alice" / snaps["alice"])
    assert "Data/worlds/w/world.db" in got
    world = browser.request("GET", browser.url("alice.localhost", f"/backups/{snaps['alice']}/Data/worlds/w/world.db"))
    assert world.text == "alice's world"
    assert browser.request("HEAD", browser.url("alice.localhost", "/backups/")).status_code == 200

    # Signing in from a deep link lands on that page.
    deep = _browser(fleet, OWNER).sign_in("alice.localhost", f"/backups/{snaps['alice']}/Data/worlds/")
    assert deep.status_code == 200 and "w/" in deep.text


@pytest.mark.e2e
def test_another_tenant_is_refused_and_an_admin_is_not(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, snaps = signed_fleet
    bob = _browser(fleet, OTHER)
    refused = bob.sign_in("alice.localhost")
    assert refused.status_code == 403 and OTHER in refused.text and "/auth/logout" in refused.text
    assert bob.request("GET", bob.url("alice.localhost", f"/backups/{snaps['alice']}.zip")).status_code == 403
    own = bob.sign_in("bob.localhost")
    assert own.status_code == 200 and snaps["bob"] in own.text

    admin = _browser(fleet, ADMIN)
    assert admin.sign_in("alice.localhost").status_code == 200
    r = admin.request("GET", admin.url("alice.localhost", f"/backups/{snaps['alice']}.zip"))
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.read("Data/worlds/w/world.db") == b"alice's world"


@pytest.mark.e2e
def test_forged_and_foreign_cookies_are_refused(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, snaps = signed_fleet
    owner = _browser(fleet, OWNER)
    owner.sign_in("alice.localhost")
    real = owner.session("alice.localhost")
    admin = _browser(fleet, ADMIN)
    admin.sign_in("bob.localhost")
    zip_url = owner.url("alice.localhost", f"/backups/{snaps['alice']}.zip")
    other_key = LoginTokens(b"f" * 64).session.dumps({"sid": "made-up", "host": "alice.localhost"})
    forged = {
        "tampered": real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"),
        "another key": other_key,
        "garbage": "x",
        "bob's host's cookie, an admin's": admin.session("bob.localhost"),
    }
    for what, value in forged.items():
        r = owner.request("GET", zip_url, cookies={SESSION_COOKIE: value})
        assert r.status_code == 302, what
        assert r.headers["location"].startswith(f"https://fleet.localhost:{owner.port}/auth/login?"), what
    # Claiming to be another host does not help: Caddy tells the check the host that was asked for.
    r = owner.request("GET", zip_url, cookies={SESSION_COOKIE: admin.session("bob.localhost")},
                      headers={"X-Forwarded-Host": "bob.localhost", "X-Forwarded-Uri": "/backups/"})
    assert r.status_code == 302
    assert owner.request("GET", zip_url).status_code == 200  # the real one still works
    # The check itself is not published: not on the fleet host, not on a tenant host.
    for host in ("fleet.localhost", "alice.localhost"):
        r = owner.request("GET", owner.url(host, "/auth/backups"), cookies={SESSION_COOKIE: real})
        assert r.status_code == 404 and "x-fleet-user" not in r.headers


@pytest.mark.e2e
def test_a_ticket_works_once_within_a_minute_on_its_own_host(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, _snaps = signed_fleet
    browser = _browser(fleet, OWNER)
    chain = browser.visit(browser.url("alice.localhost", "/backups/"), until=lambda u: "/auth/ticket" in u)
    ticket_url = chain[-1][0]
    assert urlsplit(ticket_url).hostname == "alice.localhost"
    nonce = browser.jar["alice.localhost"][NONCE_COOKIE]
    elsewhere = ticket_url.replace("alice.localhost", "bob.localhost")
    for headers in ({}, {"X-Forwarded-Host": "alice.localhost"}):
        refused = browser.request("GET", elsewhere, headers=headers)
        assert refused.status_code == 403 and "another game" in refused.text, headers
        assert SESSION_COOKIE not in browser.jar.get("bob.localhost", {})
    assert browser.request("GET", ticket_url).status_code == 302
    assert SESSION_COOKIE in browser.jar["alice.localhost"]
    assert NONCE_COOKIE not in browser.jar["alice.localhost"]  # spent with the ticket
    thief = _browser(fleet)
    replayed = thief.request("GET", ticket_url)
    assert replayed.status_code == 403 and "another browser" in replayed.text and not thief.jar
    # Even with the nonce of the browser it was made for, a ticket works once.
    replayed = thief.request("GET", ticket_url, cookies={NONCE_COOKIE: nonce})
    assert replayed.status_code == 403 and "already used" in replayed.text and not thief.jar

    tokens = LoginTokens.for_fleet(fleet.settings(), clock=lambda: time.time() - 120)
    old = tokens.make_ticket(OWNER, "alice.localhost", "/backups/", BIND)
    expired = thief.request("GET", thief.url("alice.localhost", "/auth/ticket?" + urlencode({"t": old})),
                            cookies={NONCE_COOKIE: NONCE})
    assert expired.status_code == 403 and "expired" in expired.text and not thief.jar
    fake_ticket = LoginTokens(b"e" * 64).make_ticket(OWNER, "alice.localhost", "/backups/", BIND)
    forged = thief.request("GET", thief.url("alice.localhost", "/auth/ticket?" + urlencode({"t": fake_ticket})))
    assert forged.status_code == 403 and not thief.jar
    # A ticket only the fleet could sign, redeemed on the fleet host itself, is for another host too.
    fresh = LoginTokens.for_fleet(fleet.settings()).make_ticket(OWNER, "alice.localhost", "/backups/", BIND)
    assert thief.request("GET", thief.url("fleet.localhost", "/auth/ticket?" + urlencode({"t": fresh}))).status_code == 404


@pytest.mark.e2e
def test_only_reading_is_allowed(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, snaps = signed_fleet
    admin = _browser(fleet, ADMIN)
    admin.sign_in("alice.localhost")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = admin.request(method, admin.url("alice.localhost", f"/backups/{snaps['alice']}.zip"),
                          headers={"X-Forwarded-Method": "GET"})  # what the check is told comes from Caddy
        assert r.status_code == 403, method
    # Not signed in, a POST is refused too (not sent off to sign in).
    assert _browser(fleet).request("POST", admin.url("alice.localhost", "/backups/")).status_code == 403


@pytest.mark.e2e
def test_logout_and_expiry_end_the_session(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, _snaps = signed_fleet
    browser = _browser(fleet, OWNER)
    browser.sign_in("alice.localhost")
    cookie = browser.session("alice.localhost")
    out = browser.sign_out("alice.localhost")
    assert out.status_code == 200 and SESSION_COOKIE not in browser.jar["alice.localhost"]
    again = browser.request("GET", browser.url("alice.localhost", "/backups/"), cookies={SESSION_COOKIE: cookie})
    assert again.status_code == 302 and "/auth/login?" in again.headers["location"]

    browser.sign_in("bob.localhost")  # OWNER is not bob's owner: signed in, but refused
    browser.sign_in("alice.localhost")
    fleet.sql("UPDATE web_sessions SET expires_at = 1 WHERE discord_user_id = ? AND host = 'alice.localhost'", OWNER)
    assert browser.request("GET", browser.url("alice.localhost", "/backups/")).status_code == 302


@pytest.mark.e2e
def test_sign_in_refuses_strange_hosts_and_paths_and_a_cancel(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, _snaps = signed_fleet
    browser = _browser(fleet, OWNER)
    for query in ({"host": "evil.example", "next": "/backups/"},
                  {"host": "alice.localhost", "next": "https://evil.example/"},
                  {"host": "alice.localhost", "next": "//evil.example/backups/"},
                  {"host": "alice.localhost", "next": "/backups/../-/"}):
        r = browser.request("GET", browser.url("fleet.localhost", "/auth/login?" + urlencode(query)))
        assert r.status_code == 400 and "location" not in r.headers, query
    cancelled = _browser(fleet, OWNER, deny=True).visit(browser.url("alice.localhost", "/backups/"))
    last_url, last = cancelled[-1]
    assert urlsplit(last_url).path == "/auth/callback" and last.status_code == 403
    assert "access_denied" in last.text and "alice.localhost" in last.text
    # A callback this browser did not start (someone else's link) signs nobody in.
    stray = browser.request("GET", browser.url("fleet.localhost", "/auth/callback?code=abc&state=" + "a" * 32))
    assert stray.status_code == 400 and "location" not in stray.headers



# --- login CSRF and sign-out CSRF -----------------------------------------------------------------


def test_a_ticket_opens_only_in_the_browser_that_asked_for_it(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    attackers = "A" * 43
    ticket = ticket_for(login, discord, STRANGER, nonce=attackers)  # the attacker's own sign-in, as themselves
    for victims in (None, "", NONCE, "A" * 42, "A" * 44):
        with pytest.raises(Forbidden, match="another browser"):
            login.redeem(ticket, "alice.localhost", victims)
    # Refusing it spent nothing: the browser it was made for can still use it, once.
    assert login.redeem(ticket, "alice.localhost", attackers).user == STRANGER
    # No sign-in starts without the tenant host's nonce, and a ticket without one is not valid.
    for bind in (None, "", "x" * 64, BIND.upper(), BIND[:-1]):
        with pytest.raises(InvalidInput, match="not started from your game's backups page"):
            login.begin("alice.localhost", "/backups/", bind)
    unbound = login.tokens().ticket.dumps({"id": "1", "user": OWNER, "host": "alice.localhost", "next": "/backups/"})
    with pytest.raises(Forbidden, match="not valid"):
        login.redeem(unbound, "alice.localhost", NONCE)


def test_a_sign_out_token_belongs_to_its_session(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    alice = sign_in(login, discord, OWNER)
    other = sign_in(login, discord, OWNER)
    token = login.logout_token(alice.cookie_value)
    assert login.logout_allowed(alice.cookie_value, token)
    assert not login.logout_allowed(other.cookie_value, token)
    assert not login.logout_allowed(alice.cookie_value, "")
    assert not login.logout_allowed(alice.cookie_value, "\u00e9\ud800" * 32)
    assert not login.logout_allowed(alice.cookie_value, LoginTokens(b"9" * 64).logout_token(alice.cookie_value))


@pytest.mark.e2e
def test_a_ticket_link_cannot_sign_a_victim_in_as_someone_else(
        signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, snaps = signed_fleet
    attacker = _browser(fleet, OTHER)
    chain = attacker.visit(attacker.url("alice.localhost", "/backups/"), until=lambda u: "/auth/ticket" in u)
    ticket_url = chain[-1][0]
    # The nonce: set by the tenant host itself, for that host alone, gone after the sign-in.
    (raw,) = [c for h, c in attacker.set_cookies if c.startswith(NONCE_COOKIE + "=")]
    assert [h for h, c in attacker.set_cookies if c.startswith(NONCE_COOKIE + "=")] == ["alice.localhost"]
    attributes = {a.strip().split("=")[0].lower() for a in raw.split(";")[1:]}
    assert {"httponly", "secure", "path", "samesite", "max-age"} <= attributes and "domain" not in attributes
    assert "max-age=660" in raw.lower() and "samesite=lax" in raw.lower()

    # The victim opens the attacker's link: with no sign-in of their own, and in the middle of one.
    fresh = _browser(fleet, OWNER)
    busy = _browser(fleet, OWNER)
    busy.visit(busy.url("alice.localhost", "/backups/"), until=lambda u: "/oauth2/authorize" in u)
    assert NONCE_COOKIE in busy.jar["alice.localhost"]
    for victim in (fresh, busy):
        r = victim.request("GET", ticket_url)
        assert r.status_code == 403 and "another browser" in r.text
        assert SESSION_COOKIE not in victim.jar.get("alice.localhost", {})
        listing = victim.request("GET", victim.url("alice.localhost", "/backups/"))
        assert listing.status_code == 302 and "/auth/login?" in listing.headers["location"]
    # The victim's own sign-in, started before, still completes as the victim.
    assert busy.sign_in("alice.localhost").status_code == 200
    # The attacker's own browser may still use the ticket (it is theirs): signed in as themselves.
    mine = attacker.request("GET", ticket_url)
    assert mine.status_code == 302 and SESSION_COOKIE in attacker.jar["alice.localhost"]
    refused = attacker.request("GET", attacker.url("alice.localhost", "/backups/"))
    assert refused.status_code == 403 and OTHER in refused.text
    assert snaps["alice"] not in refused.text


@pytest.mark.e2e
def test_no_other_page_can_sign_a_tenant_out(signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict]) -> None:
    fleet, _fake, _snaps = signed_fleet
    browser = _browser(fleet, OWNER)
    browser.sign_in("alice.localhost")
    session = browser.session("alice.localhost")
    token = browser.logout_token("alice.localhost")
    port = browser.port

    def still_signed_in() -> bool:
        return browser.request("GET", browser.url("alice.localhost", "/backups/")).status_code == 200

    # <img src="https://alice.../auth/logout">: a GET only asks.
    for method in ("GET", "HEAD"):
        asked = browser.request(method, browser.url("alice.localhost", "/auth/logout"))
        assert asked.status_code == 200 and "set-cookie" not in asked.headers, method
    assert "Sign out of this game&#x27;s backups?" in browser.request("GET", browser.url("alice.localhost", "/auth/logout")).text
    assert still_signed_in()
    # A form posted from elsewhere: another site, a sibling tenant host (same site!), no origin at all,
    # or the right origin without the page's token.
    attempts = {
        "another site": dict(headers={"Origin": "https://evil.example"}),
        "another tenant's host": dict(headers={"Origin": f"https://bob.localhost:{port}"}),
        "the fleet host": dict(headers={"Origin": f"https://fleet.localhost:{port}"}),
        "an opaque origin": dict(headers={"Origin": "null"}),
        "no origin, a foreign referer": dict(headers={"Origin": "", "Referer": f"https://bob.localhost:{port}/-/"}),
        "no origin, no referer": dict(headers={"Origin": ""}),
        "no token": dict(token=""),
        "a guessed token": dict(token="0" * 64),
        "a token that is not ASCII": dict(token="\u00e9" * 64),
        "another session's token": dict(token=LoginTokens.for_fleet(fleet.settings()).logout_token("x")),
        "not a form": dict(headers={"Content-Type": "application/json"}),
    }
    for what, attempt in attempts.items():
        r = browser.sign_out("alice.localhost", token=attempt.get("token", token), headers=attempt.get("headers"))
        assert r.status_code == 403 and "still signed in" in r.text, what
        assert "set-cookie" not in r.headers and browser.session("alice.localhost") == session, what
        assert still_signed_in(), what
    # The refusal shows the real button; an old browser that sends only a Referer may use it.
    retry = browser.sign_out("alice.localhost", token="", headers={"Origin": "https://evil.example"})
    assert "<button type=submit>Sign out</button>" in retry.text
    out = browser.sign_out("alice.localhost", headers={"Origin": "", "Referer": f"https://alice.localhost:{port}/backups/"})
    assert out.status_code == 200 and SESSION_COOKIE not in browser.jar["alice.localhost"]
    again = browser.request("GET", browser.url("alice.localhost", "/backups/"), cookies={SESSION_COOKIE: session})
    assert again.status_code == 302 and "/auth/login?" in again.headers["location"]

    # The button is on the listing, on every browsed folder, and on the page of a game that is not yours.
    browser.sign_in("alice.localhost")
    snapshot_page = browser.request("GET", browser.url("alice.localhost", "/backups/")).text
    first = re.search(r"href='/backups/([^/']+)/'", snapshot_page)
    assert first and browser.logout_token("alice.localhost", f"/backups/{first.group(1)}/")
    for page in ("/backups/", f"/backups/{first.group(1)}/"):
        assert browser.request("GET", browser.url("alice.localhost", page)).headers["referrer-policy"] == "same-origin"
    browser.sign_in("bob.localhost")  # not bob's owner
    assert browser.sign_out("bob.localhost", token=browser.logout_token("bob.localhost")).status_code == 200
    assert still_signed_in()  # signing out of bob's host leaves alice's alone


@pytest.mark.e2e
@needs_browser
def test_a_real_browser_signs_in_and_out_and_refuses_someone_elses_ticket(
        signed_fleet: tuple[FleetHarness, DiscordOAuthStandin, dict], tmp_path: Path) -> None:
    """Chromium's own rules (the __Host- cookies, SameSite, the Origin it sends with the sign-out form)
    with the fleet's: the whole flow as a person's browser goes through it."""
    fleet, fake, snaps = signed_fleet
    port = fleet.settings().edge.https_port
    ca = fleet.root / "edge" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    assert CHROMIUM is not None
    with Chromium(CHROMIUM, tmp_path, browser_home(tmp_path, ca)) as chromium:
        alice = f"https://alice.localhost:{port}"
        # Signed in at (the stand-in) Discord as the owner.
        chromium.send("Network.setCookie", name="discord_user", value=OWNER, url=fake.base + "/")
        listing = chromium.open(f"{alice}/backups/")
        assert snaps["alice"] in listing and "Sign out" in listing
        shoot(chromium, "backups-listing")
        cookies = chromium.cookies(f"{alice}/")
        assert SESSION_COOKIE in cookies and NONCE_COOKIE not in cookies  # the nonce went with the ticket
        session = cookies[SESSION_COOKIE]

        # Opening the sign-out address only asks; the button signs out.
        assert "Sign out of this game" in chromium.open(f"{alice}/auth/logout")
        assert chromium.cookies(f"{alice}/").get(SESSION_COOKIE) == session
        chromium.open(f"{alice}/backups/")
        chromium.evaluate("document.querySelector('form[action=\"/auth/logout\"] button').click()")
        assert "You are signed out" in chromium.settled(f"{alice}/auth/logout")
        assert SESSION_COOKIE not in chromium.cookies(f"{alice}/")
        old = _browser(fleet).request("GET", f"{alice}/backups/", cookies={SESSION_COOKIE: session})
        assert old.status_code == 302 and "/auth/login?" in old.headers["location"]

        # Someone else's ticket (bob's game master signed in as themselves) opened in this browser.
        attacker = _browser(fleet, OTHER)
        ticket_url = attacker.visit(attacker.url("alice.localhost", "/backups/"),
                                    until=lambda u: "/auth/ticket" in u)[-1][0]
        refused = chromium.open(ticket_url)
        assert "another browser" in refused
        assert SESSION_COOKIE not in chromium.cookies(f"{alice}/")
