"""A fleet's sign-in services on their own (no daemon): the backups' WebLogin and the panel's sessions on
one database and key, for https://fleet.example.test, with the strict Discord stand-in."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from foundry_fleet.config import DiscordSection
from foundry_fleet.services.access import Access
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.panel_sessions import PanelSessions
from foundry_fleet.services.web_login import WebLogin
from foundry_fleet.store.database import open_database
from tests.support.discord_oauth_standin import DiscordOAuthStandin

CLIENT_ID = "1100000000000000001"
SECRET = "s3cr3t-client-secret-value"
OWNER = "200000000000000001"
ADMIN = "200000000000000009"
USERS = {OWNER: "alice", ADMIN: "gm"}
FLEET_HOST = "fleet.example.test"
ORIGIN = f"https://{FLEET_HOST}"
CALLBACK = f"{ORIGIN}/auth/callback"
TENANT_HOSTS = {"alice.example.test": "alice"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def standin() -> DiscordOAuthStandin:
    return DiscordOAuthStandin(CLIENT_ID, SECRET, redirect_uris={CALLBACK}, users=dict(USERS))


def make_login(tmp_path: Path, discord: DiscordOAuthStandin | None, clock: Callable[[], float] = time.time,
               **settings: object) -> WebLogin:
    """`discord` None: Discord sign-in is not configured."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    configured: dict[str, Any] = {} if discord is None else {
        "client_id": CLIENT_ID, "client_secret_file": secret, "oauth_base": discord.base, "api_base": discord.api}
    section = DiscordSection(**{"admin_users": [ADMIN], "session_hours": 1.0, **configured, **settings})
    return WebLogin(section, open_database(tmp_path / "state" / "fleet.sqlite"), tmp_path / "state" / "web-login.key",
                    FLEET_HOST, 443, TENANT_HOSTS.get, {"alice": OWNER}.get, clock=clock)


def make_panel(login: WebLogin, admin_users: frozenset[str] | None = None) -> PanelSessions:
    """The panel's sessions; `admin_users`: the config's [discord] admin_users (else the login's)."""
    admins = frozenset(login.settings.admin_users) if admin_users is None else admin_users
    # Access looks at instances only for instance decisions, which signing in never asks.
    return PanelSessions(login, Access(instances=None, admin_users=admins),  # type: ignore[arg-type]
                         EventLog(login.sessions, "daemon"))


def consent(authorize_url: str, user: str) -> str:
    """The browser at Discord, signed in there as `user`: the callback URL Discord sends it to."""
    r = httpx.get(authorize_url, headers={"Cookie": f"discord_user={user}"}, timeout=10)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(CALLBACK + "?"), location
    return location


def callback_query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
