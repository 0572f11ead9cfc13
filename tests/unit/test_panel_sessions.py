"""Sessions of the web panel on the fleet host: single-use admin links, Discord sign-in through the
backups' callback, and what keeps a panel session and a backups session apart."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from foundry_fleet.domain.errors import Forbidden, InvalidInput, Unsupported
from foundry_fleet.services.panel_sessions import LINK_SECONDS, PanelSessions, safe_panel_next
from foundry_fleet.services.web_login import (
    LoginDone,
    LoginTokens,
    PanelLoginDone,
    SignIn,
    WebLogin,
    _session_row_id,
    nonce_hash,
)
from foundry_fleet.store.models import WebSessionRow
from tests.support.discord_oauth_standin import DiscordOAuthStandin
from tests.support.panel_login import (
    ADMIN,
    FLEET_HOST,
    OWNER,
    SECRET,
    Clock,
    callback_query,
    consent,
    make_login,
    make_panel,
    standin,
)

NONCE = "N" * 43


@pytest.fixture
def discord() -> Iterator[DiscordOAuthStandin]:
    with standin() as fake:
        yield fake


def link_token(panel: PanelSessions) -> str:
    url = urlsplit(panel.make_link("cli:root"))
    assert (url.scheme, url.netloc, url.path) == ("https", panel.fleet_host, "/login/link")
    return parse_qs(url.query)["t"][0]


def panel_by_discord(login: WebLogin, panel: PanelSessions, user: str, next_path: str = "/") -> str:
    start = panel.begin_discord(next_path)
    done = login.finish(callback_query(consent(start.authorize_url, user)), {start.cookie_name: start.cookie_value})
    assert isinstance(done, PanelLoginDone) and done.user == user and done.cookie_name == start.cookie_name
    signed_in = panel.finish_discord(done)
    assert signed_in.next == next_path and signed_in.max_age == 3600
    return signed_in.cookie_value


def backups_by_discord(login: WebLogin, user: str, host: str = "alice.example.test") -> str:
    start = login.begin(host, "/backups/", nonce_hash(NONCE))
    done = login.finish(callback_query(consent(start.authorize_url, user)), {start.cookie_name: start.cookie_value})
    assert isinstance(done, LoginDone) and done.location.startswith(f"https://{host}/auth/ticket?t=")
    return login.redeem(parse_qs(urlsplit(done.location).query)["t"][0], host, NONCE).cookie_value


def test_a_link_signs_an_admin_in_once(tmp_path: Path) -> None:
    login = make_login(tmp_path, None)  # no Discord at all: the link is the way in
    panel = make_panel(login)
    token = link_token(panel)
    panel.check_link(token)
    panel.check_link(token)  # looking at it (a chat app's preview) uses nothing up
    cookie, max_age = panel.redeem_link(token)
    assert max_age == 3600
    user = panel.user(cookie)
    assert user is not None and user.admin and user.principal.discord_id is None
    assert user.principal.actor == "panel:admin-link" and user.label
    with pytest.raises(Forbidden, match="already used"):
        panel.redeem_link(token)
    with pytest.raises(Forbidden, match="already used"):
        panel.check_link(token)
    # A second link is a second sign-in; the first session is untouched.
    other, _ = panel.redeem_link(link_token(panel))
    assert panel.user(other) is not None and panel.user(cookie) is not None
    recorded = [(e.action, e.actor) for e in panel.events.recent()]  # type: ignore[union-attr]
    assert ("panel.link", "cli:root") in recorded and ("panel.sign-in", "panel:admin-link") in recorded
    assert not any(token in e.message for e in panel.events.recent())  # type: ignore[union-attr]


def test_a_link_expires_after_ten_minutes(tmp_path: Path) -> None:
    clock = Clock()
    panel = make_panel(make_login(tmp_path, None, clock))
    late, in_time = link_token(panel), link_token(panel)
    clock.now += LINK_SECONDS - 1
    assert panel.user(panel.redeem_link(in_time)[0]) is not None
    clock.now += 2
    with pytest.raises(Forbidden, match="expired .*10 minutes"):
        panel.check_link(late)
    with pytest.raises(Forbidden, match="expired"):
        panel.redeem_link(late)


def test_forged_links_sign_nobody_in(tmp_path: Path) -> None:
    login = make_login(tmp_path, None)
    panel = make_panel(login)
    real = link_token(panel)
    i = len(real) - 8
    tampered = real[:i] + ("A" if real[i] != "A" else "B") + real[i + 1:]
    other_fleet = link_token(make_panel(make_login(tmp_path / "other", None)))
    ticket = login.tokens().make_ticket(OWNER, FLEET_HOST, "/backups/", nonce_hash(NONCE))  # another kind
    session = login.tokens().session.dumps({"sid": "x", "host": FLEET_HOST})
    for token in ("", "garbage", tampered, other_fleet, ticket, session, "x" * 5000):
        with pytest.raises(Forbidden, match="not valid"):
            panel.redeem_link(token)
    assert panel.user(panel.redeem_link(real)[0]) is not None


def test_a_backups_session_is_not_a_panel_session_nor_the_other_way(tmp_path: Path,
                                                                      discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    panel = make_panel(login)
    backups = backups_by_discord(login, ADMIN)
    assert login.session_user(backups, "alice.example.test") == ADMIN
    assert panel.user(backups) is None
    panel_cookie = panel_by_discord(login, panel, ADMIN)
    assert panel.user(panel_cookie) is not None
    assert login.session_user(panel_cookie, FLEET_HOST) is None
    assert login.session_user(panel_cookie, "alice.example.test") is None
    assert isinstance(login.decide(panel_cookie, "alice.example.test", "GET", "/backups/"), SignIn)
    # Even a backups cookie made out for the fleet host, with its row there, is no panel session.
    sid = secrets.token_urlsafe(32)
    with login.sessions() as s, s.begin():
        s.add(WebSessionRow(id=_session_row_id(sid), discord_user_id=ADMIN, host=FLEET_HOST,
                            created_at=login.clock(), expires_at=login.clock() + 3600))
    assert panel.user(login.tokens().session.dumps({"sid": sid, "host": FLEET_HOST})) is None
    # Logging out of one leaves the other.
    panel.logout(backups)
    login.logout(panel_cookie, FLEET_HOST)
    assert panel.user(panel_cookie) is not None and login.session_user(backups, "alice.example.test") == ADMIN


def test_sessions_end_and_belong_to_the_fleet_host(tmp_path: Path) -> None:
    clock = Clock()
    login = make_login(tmp_path, None, clock)
    panel = make_panel(login)
    cookie, _ = panel.redeem_link(link_token(panel))
    other_key = LoginTokens(b"0" * 64)  # another fleet's key signs nothing here
    forged = [other_key.session.dumps({"sid": "x", "host": FLEET_HOST}), cookie[:-3] + "AAA", "garbage", "",
              None, "x" * 5000]
    assert [panel.user(c) for c in forged] == [None] * len(forged)
    # The same fleet's panel cookie, made out for another host (as if the fleet host were renamed).
    elsewhere = PanelSessions(make_login(tmp_path, None, clock), panel.access)
    elsewhere.fleet_host = "other.example.test"
    assert panel.user(elsewhere.redeem_link(link_token(elsewhere))[0]) is None
    clock.now += 3600 - 1
    assert panel.user(cookie) is not None
    clock.now += 2
    assert panel.user(cookie) is None
    clock.now -= 2
    assert panel.user(cookie) is not None
    panel.logout(cookie)
    assert panel.user(cookie) is None


def test_the_csrf_token_is_bound_to_its_session(tmp_path: Path) -> None:
    login = make_login(tmp_path, None)
    panel = make_panel(login)
    first, _ = panel.redeem_link(link_token(panel))
    second, _ = panel.redeem_link(link_token(panel))
    token = panel.csrf_token(first)
    assert len(token) == 64 and token == panel.csrf_token(first) and token != panel.csrf_token(second)
    assert panel.csrf_ok(first, token)
    assert not panel.csrf_ok(second, token)
    assert not panel.csrf_ok(first, panel.csrf_token(second))
    assert not panel.csrf_ok(first, "") and not panel.csrf_ok(None, token) and not panel.csrf_ok(first, None)
    assert not panel.csrf_ok(first, token[:-1]) and not panel.csrf_ok(first, token + "0")
    # Nothing of the sign-out token of backups pages, made from the same key.
    assert token != login.logout_token(first)
    assert panel.csrf_token(None) == ""


def test_admin_status_follows_the_config_at_each_request(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    panel = make_panel(login)
    admin, owner = panel_by_discord(login, panel, ADMIN, "/admin/events"), panel_by_discord(login, panel, OWNER)
    admin_user, owner_user = panel.user(admin), panel.user(owner)
    assert admin_user is not None and admin_user.admin and admin_user.principal.discord_id == ADMIN
    assert owner_user is not None and not owner_user.admin and owner_user.principal.actor == f"discord:{OWNER}"
    assert OWNER in owner_user.label
    # The same sessions once the config names other admins.
    changed = make_panel(login, frozenset({OWNER}))
    assert changed.user(admin).admin is False  # type: ignore[union-attr]
    assert changed.user(owner).admin is True  # type: ignore[union-attr]


def test_the_discord_sign_in_to_the_panel_ends_on_a_panel_page(tmp_path: Path, discord: DiscordOAuthStandin) -> None:
    login = make_login(tmp_path, discord)
    panel = make_panel(login)
    start = panel.begin_discord("/instances/alice?tab=logs")
    query = parse_qs(urlsplit(start.authorize_url).query)
    assert query["redirect_uri"] == ["https://fleet.example.test/auth/callback"]  # the one callback
    assert SECRET not in start.authorize_url
    for bad in ("https://evil.example/", "//evil.example/", "/backups/", "/login", "/panel/events", "/instances/../x"):
        with pytest.raises(InvalidInput, match="page of the panel"):
            panel.begin_discord(bad)
    assert panel.begin_discord(None).cookie_name.startswith("__Host-fleet_login_")
    not_set_up = make_panel(make_login(tmp_path / "plain", None))
    with pytest.raises(Unsupported, match="not set up"):
        not_set_up.begin_discord("/")


@pytest.mark.parametrize("value", ["/", "/?x=1", "/instances", "/instances/alice", "/instances/alice/logs?n=5",
                                   "/admin/invites", "/admin"])
def test_panel_paths_to_come_back_to(value: str) -> None:
    assert safe_panel_next(value) == value


@pytest.mark.parametrize("value", ["", "https://evil.example/", "//evil.example/", "/\\evil.example", "/backups/",
                                   "/login", "/logout", "/panel/static/x.css", "/instancesx", "/admin/../login",
                                   "/instances/%2e%2e/login", "/x#frag", "instances/alice", "/\r\n", "/" + "a" * 3000])
def test_paths_that_leave_the_panel(value: str) -> None:
    assert safe_panel_next(value) is None
