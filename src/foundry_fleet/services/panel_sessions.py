"""Who is signed in to the web panel at https://<fleet host>/, and the ways in.

Two ways in, both ending in a session row (the WebSessionRow table, host = the fleet host) whose id
the panel's cookie carries, signed:

- Discord, through the one callback the backups' sign-in registered (services/web_login.py): the
  flow cookie says it is the panel's, and the callback sets the panel's cookie itself (no ticket: it
  already is on the fleet host).
- A single-use link the fleet's own user asks for (`foundry-fleet panel login`): an admin without a
  Discord id, for a fleet whose Discord sign-in is not set up (or an admin without Discord at hand).

A session records who signed in, never whether they are an admin: that is asked of `Access` (the
config's [discord] admin_users) at every request, so taking someone off the list takes effect at once.

State-changing forms carry a token derived from the session cookie (HMAC, a key of its own): a page of
another site cannot know it, and it is worthless with any other session.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from foundry_fleet.domain.errors import Forbidden, InvalidInput
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.web_paths import PANEL_LOGIN
from foundry_fleet.services.access import ADMIN_LINK_ACTOR, Access, Principal
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.web_login import (
    LoginStart,
    PanelLoginDone,
    SignedIn,
    WebLogin,
    load_or_create_key,
    safe_next,
    timed_serializer,
)
from foundry_fleet.store.models import UsedTicketRow, WebSessionRow

log = logging.getLogger("foundry_fleet.panel_sessions")

# `__Host-`: only without Domain, with Path=/ and Secure, so no tenant host can plant or read it.
PANEL_COOKIE = "__Host-fleet_panel"
LINK_SECONDS = 600
LINK_PATH = PANEL_LOGIN + "/link"
# What a link session's row holds instead of a Discord id (never a snowflake, so never mistaken for one).
LINK_USER = ADMIN_LINK_ACTOR
_SNOWFLAKE = re.compile(r"^[0-9]{15,21}$")
_LINK_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_COOKIE = 1000
ANOTHER_LINK = "a fleet admin makes a new one with `foundry-fleet panel login`"


def is_panel_path(path: str) -> bool:
    return path in ("/", "/instances", "/admin") or path.startswith(("/instances/", "/admin/"))


def safe_panel_next(value: str | None) -> str | None:
    """`value` when it is a relative path of the panel's pages (`/`, `/instances/...`, `/admin/...`)."""
    return safe_next(value, is_panel_path)


@dataclass(frozen=True)
class PanelUser:
    principal: Principal
    label: str  # who is signed in, as the page header shows it

    @property
    def admin(self) -> bool:
        return self.principal.admin


def _row_id(sid: str) -> str:
    """Rows hold a hash of the session id: a copy of the database alone signs nobody in."""
    return hashlib.sha256(sid.encode()).hexdigest()


class PanelSessions:
    """Sessions of the panel on the fleet host. Shares the backups' sign-in (its Discord settings, key
    file, database and clock) but none of its cookies: each kind of signed value has its own salt."""

    def __init__(self, login: WebLogin, access: Access, events: EventLog | None = None) -> None:
        self.login = login
        self.access = access
        self.events = events
        self.fleet_host = login.fleet_host
        self._signers: tuple[URLSafeTimedSerializer, URLSafeTimedSerializer, bytes] | None = None

    # configuration ------------------------------------------------------------------------------

    @property
    def discord_enabled(self) -> bool:
        return self.login.enabled

    @property
    def session_seconds(self) -> int:
        return self.login.session_seconds

    @property
    def origin(self) -> str:
        """The fleet host's origin, as browsers send it with a form: https://<fleet host>[:port]."""
        return self.login.url(self.fleet_host, "")

    def url(self, path: str) -> str:
        return self.login.url(self.fleet_host, path)

    def _keys(self) -> tuple[URLSafeTimedSerializer, URLSafeTimedSerializer, bytes]:
        if self._signers is None:
            key = load_or_create_key(self.login.key_file)
            self._signers = (
                timed_serializer(key, "foundry-fleet panel session", self.login.clock),
                timed_serializer(key, "foundry-fleet panel link", self.login.clock),
                hmac.new(key, b"foundry-fleet panel form", hashlib.sha256).digest(),
            )
        return self._signers

    # sessions -----------------------------------------------------------------------------------

    def user(self, cookie: str | None) -> PanelUser | None:
        """Who is signed in with this cookie; None for no, forged, expired or another host's cookie."""
        sid = self._session_id(cookie)
        if sid is None:
            return None
        with self.login.sessions() as s:
            row = s.get(WebSessionRow, _row_id(sid))
            if row is None or row.host != self.fleet_host or row.expires_at <= self.login.clock():
                return None
            who = row.discord_user_id
        if who == LINK_USER:
            return PanelUser(Principal(None, admin=True), "admin (sign-in link)")
        if not _SNOWFLAKE.match(who):
            return None
        return PanelUser(self.access.principal(who), f"Discord user {who}")

    def _session_id(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        try:
            data: Any = self._keys()[0].loads(cookie, max_age=self.session_seconds + 60)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("host") != self.fleet_host or not isinstance(data.get("sid"), str):
            return None
        return data["sid"]

    def _add_session(self, s: Session, who: str, now: float) -> str:
        """A new session for `who` (a Discord id, or LINK_USER), in `s`'s transaction; the cookie's value."""
        sid = secrets.token_urlsafe(32)
        s.execute(delete(WebSessionRow).where(WebSessionRow.expires_at < now))
        s.add(WebSessionRow(id=_row_id(sid), discord_user_id=who, host=self.fleet_host, created_at=now,
                            expires_at=now + self.session_seconds))
        return self._keys()[0].dumps({"sid": sid, "host": self.fleet_host})

    def logout(self, cookie: str | None) -> None:
        sid = self._session_id(cookie)
        if sid is None:
            return
        with self.login.sessions() as s, s.begin():
            s.execute(delete(WebSessionRow).where(WebSessionRow.id == _row_id(sid),
                                                  WebSessionRow.host == self.fleet_host))

    # forms --------------------------------------------------------------------------------------

    def csrf_token(self, cookie: str | None) -> str:
        """The token the panel's forms carry for this session ("" without one: no form is accepted)."""
        if not cookie:
            return ""
        return hmac.new(self._keys()[2], cookie.encode(errors="replace"), hashlib.sha256).hexdigest()

    def csrf_ok(self, cookie: str | None, token: str | None) -> bool:
        """Was this form sent from a page the panel showed this session?"""
        if not cookie or not token:
            return False
        return hmac.compare_digest(self.csrf_token(cookie).encode(), token.encode(errors="replace"))

    # Discord ------------------------------------------------------------------------------------

    def begin_discord(self, next_path: str | None) -> LoginStart:
        nxt = safe_panel_next(next_path or "/")
        if nxt is None:
            raise InvalidInput("after signing in, only a page of the panel can be shown", f"open {self.url('/')}")
        return self.login.begin_panel(nxt)

    def finish_discord(self, done: PanelLoginDone) -> SignedIn:
        """The session for whom Discord signed in (`done` comes from WebLogin.finish, on the callback)."""
        with self.login.sessions() as s, s.begin():
            cookie = self._add_session(s, done.user, self.login.clock())
        log.info("Discord user %s signed in to the panel", done.user)
        return SignedIn(cookie, safe_panel_next(done.next) or "/", self.session_seconds, done.user)

    # single-use links ---------------------------------------------------------------------------

    def make_link(self, actor: str = "daemon") -> str:
        """https://<fleet host>/login/link?t=...: signs in an admin once, within LINK_SECONDS."""
        token = self._keys()[1].dumps({"id": secrets.token_hex(16)})
        if self.events is not None:
            self.events.record("panel.link", self.fleet_host, Outcome.OK,
                               f"a sign-in link for the panel, valid {LINK_SECONDS // 60} minutes", actor=actor)
        return self.url(LINK_PATH + "?" + urlencode({"t": token}))

    def _link_id(self, token: str) -> str:
        again = ANOTHER_LINK
        if not token or len(token) > _MAX_COOKIE:
            raise Forbidden("this sign-in link is not valid", again)
        try:
            data: Any = self._keys()[1].loads(token, max_age=LINK_SECONDS)
        except SignatureExpired:
            raise Forbidden(f"this sign-in link has expired (links work for {LINK_SECONDS // 60} minutes)",
                            again) from None
        except BadSignature:
            raise Forbidden("this sign-in link is not valid", again) from None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not _LINK_ID.match(data["id"]):
            raise Forbidden("this sign-in link is not valid", again)
        return "panel-link:" + data["id"]

    def check_link(self, token: str) -> None:
        """Raise Forbidden for a link that would not sign anyone in; uses nothing up."""
        used_id = self._link_id(token)
        with self.login.sessions() as s:
            if s.get(UsedTicketRow, used_id) is not None:
                raise Forbidden("this sign-in link was already used", ANOTHER_LINK)

    def redeem_link(self, token: str) -> tuple[str, int]:
        """Sign in with a link, once: (the panel cookie's value, its max-age)."""
        used_id = self._link_id(token)
        now = self.login.clock()
        try:
            with self.login.sessions() as s, s.begin():
                s.execute(delete(UsedTicketRow).where(UsedTicketRow.expires_at < now))
                if s.get(UsedTicketRow, used_id) is not None:
                    raise Forbidden("this sign-in link was already used", ANOTHER_LINK)
                # Kept past the link's own expiry, after which its signature refuses it anyway.
                s.add(UsedTicketRow(id=used_id, expires_at=now + LINK_SECONDS + 5))
                cookie = self._add_session(s, LINK_USER, now)
        except IntegrityError:  # redeemed at the same moment elsewhere
            raise Forbidden("this sign-in link was already used", ANOTHER_LINK) from None
        if self.events is not None:
            self.events.record("panel.sign-in", self.fleet_host, Outcome.OK, "with a sign-in link",
                               actor=ADMIN_LINK_ACTOR)
        return cookie, self.session_seconds

