"""Discord sign-in for tenants' backup pages, and who may see which host's backups.

The flow (Discord allows only a few redirect URIs per app, so there is one callback, on the fleet host):

1. A request for https://<tenant host>/backups/... without a session gets a random nonce in a
   short-lived host-only cookie of the tenant host, and is sent to
   https://<fleet host>/auth/login?host=<tenant host>&next=<path>&bind=<hash of the nonce>, which
   remembers `state`, the PKCE verifier, the host, the path and the hash in a short-lived signed
   cookie on the fleet host and sends the browser to Discord (scope `identify`, PKCE S256).
2. Discord sends the browser back to https://<fleet host>/auth/callback; the state is checked against
   that cookie, the code is exchanged (client authentication + verifier) and the Discord user read.
3. The fleet host hands the tenant host a signed ticket (60 s, single use) bound to the user, the
   tenant host, the path and the nonce's hash: https://<tenant host>/auth/ticket?t=...
4. The tenant host redeems it only for the browser holding the nonce (so a ticket someone got for
   themselves cannot sign a victim in as them): a session row in the database, and the signed
   session id in a host-only cookie of its own. No cookie ever works on another host.

Every request for /backups/ is then decided here: GET (or HEAD) by the instance's owner or an admin.
The decisions take plain values, so they are tested without HTTP.

The web panel on the fleet host signs in through the same callback: its flow cookie says so (`kind`),
and `finish` then hands back who signed in (services/panel_sessions.py makes the session) instead of a
ticket for another host.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import DiscordSection, FleetConfig
from foundry_fleet.files.atomic import create_atomic
from foundry_fleet.private_files import read_private_file
from foundry_fleet.domain.errors import ExternalFailure, FleetError, Forbidden, InvalidInput, Unsupported
from foundry_fleet.domain.web_paths import PANEL_LOGIN
from foundry_fleet.store.models import UsedTicketRow, WebSessionRow

log = logging.getLogger("foundry_fleet.web_login")

# `__Host-`: browsers accept the cookie only without a Domain attribute, with Path=/ and Secure, so a
# sibling tenant host can never plant one here.
SESSION_COOKIE = "__Host-fleet_backups"
LOGIN_COOKIE_PREFIX = "__Host-fleet_login_"  # + the flow's state: several sign-ins may run at once
LOGIN_SECONDS = 600  # from /auth/login to Discord's callback
TICKET_SECONDS = 60
# On the tenant host, from the first redirect to the ticket: the browser that asked to sign in.
NONCE_COOKIE = "__Host-fleet_signin"
NONCE_SECONDS = LOGIN_SECONDS + TICKET_SECONDS
_NONCE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
_BIND = re.compile(r"^[0-9a-f]{64}$")  # its SHA-256
SCOPE = "identify"
KEY_FILE = "web-login.key"
READ_METHODS = frozenset({"GET", "HEAD"})
_STATE = re.compile(r"^[A-Za-z0-9]{32}$")
_SNOWFLAKE = re.compile(r"^[0-9]{15,21}$")
_MAX_NEXT = 2000
PANEL_FLOW = "panel"  # the flow cookie's `kind` for a sign-in to the panel; absent: one for backups


# --- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    user: str  # the Discord id the backups app is told


@dataclass(frozen=True)
class SignIn:
    location: str  # where the browser goes to sign in
    nonce: str = ""  # the tenant host's NONCE_COOKIE to set (the location carries its hash)


@dataclass(frozen=True)
class Deny:
    status: int
    message: str
    user: str | None = None  # who is signed in, when someone is


Decision = Allow | SignIn | Deny


@dataclass(frozen=True)
class LoginStart:
    authorize_url: str
    cookie_name: str
    cookie_value: str
    max_age: int


@dataclass(frozen=True)
class LoginDone:
    location: str  # the ticket, on the tenant host
    cookie_name: str  # the flow's cookie, to be cleared


@dataclass(frozen=True)
class PanelLoginDone:
    """Discord said who signed in to the panel: the panel's own session is made from this."""

    user: str
    next: str  # a panel path, checked when the flow began
    cookie_name: str  # the flow's cookie, to be cleared


@dataclass(frozen=True)
class SignedIn:
    cookie_value: str
    next: str
    max_age: int
    user: str


def normalise_host(value: str) -> str:
    """`Alice.Example.org:8443.` -> `alice.example.org` (what Caddy's host matcher compares)."""
    return value.strip().lower().split(":", 1)[0].rstrip(".")


def is_backups_path(path: str) -> bool:
    return path == "/backups" or path.startswith("/backups/")


def safe_next(value: str | None, allowed: Callable[[str], bool] = is_backups_path) -> str | None:
    """`value` when it is a relative path `allowed` accepts (under /backups/ unless told otherwise),
    with an optional query, else None.

    Anything else could send a freshly signed-in browser somewhere else: another site
    (`//evil.example`, `https://...`, `/\\evil`), or out of the allowed paths by way of `..`.
    """
    if not value or len(value) > _MAX_NEXT:
        return None
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.fragment or value.startswith("//"):
        return None
    path = unquote(parts.path)
    if "\\" in path or "\x00" in path:
        return None
    if not allowed(path):
        return None
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return value


def nonce_hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode(errors="replace")).hexdigest()


def usable_nonce(value: str | None) -> str:
    """The browser's sign-in nonce when it has a well-formed one (two tabs signing in share it), else
    a new one."""
    return value if value and _NONCE.match(value) else secrets.token_urlsafe(32)


def is_under_backups(uri: str) -> bool:
    return is_backups_path(urlsplit(uri).path)


# --- the signing key and what it signs ----------------------------------------------------------


def key_path(config: FleetConfig) -> Path:
    return config.paths.database.parent / KEY_FILE


def load_or_create_key(path: Path, what: str = "the sign-in signing key",
                       when_deleted: str = "everybody signs in again") -> bytes:
    """A fleet secret (the signing key for sign-in, by default): 64 random hex digits in a 0600
    file, made on first use. `when_deleted`: what a new one means, for the hint.

    Made beside the file and linked into place, so two processes starting at once agree on one key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        create_atomic(path, secrets.token_hex(32) + "\n", 0o600)  # made by another process first: theirs
    text = read_private_file(path, what, f"{path} (delete it: a new one is made)")
    if len(text) < 64:
        raise InvalidInput(f"{what} {path} is too short",
                           f"delete {path}: the fleet makes a new one ({when_deleted})")
    return text.encode()


def timed_serializer(key: bytes, salt: str, clock: Callable[[], float] = time.time) -> URLSafeTimedSerializer:
    """Signs values with the time (itsdangerous, HMAC-SHA256); `salt` keeps each kind of value apart."""

    class _Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

    return URLSafeTimedSerializer(key, salt=salt, signer=_Signer,
                                  signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256})


class LoginTokens:
    """What the fleet signs: the flow's cookie, tickets and session cookies (itsdangerous, HMAC-SHA256).

    Each kind has its own salt, so one is never accepted as another. `clock` makes ages testable.
    """

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        def serializer(salt: str) -> URLSafeTimedSerializer:
            return timed_serializer(key, salt, clock)

        self.login = serializer("foundry-fleet login flow")
        self.ticket = serializer("foundry-fleet backups ticket")
        self.session = serializer("foundry-fleet backups session")
        self._logout_key = hmac.new(key, b"foundry-fleet logout form", hashlib.sha256).digest()

    @classmethod
    def for_fleet(cls, config: FleetConfig, clock: Callable[[], float] = time.time) -> LoginTokens:
        return cls(load_or_create_key(key_path(config)), clock)

    def make_ticket(self, user: str, host: str, next_path: str, bind: str) -> str:
        """`bind`: the hash of the nonce of the browser that asked to sign in."""
        return self.ticket.dumps({"id": secrets.token_hex(16), "user": user, "host": host, "next": next_path,
                                  "bind": bind})

    def logout_token(self, session_cookie: str | None) -> str:
        """The token a sign-out form carries: only pages of this fleet, shown to this session, have it."""
        return hmac.new(self._logout_key, (session_cookie or "").encode(), hashlib.sha256).hexdigest()


def _session_row_id(sid: str) -> str:
    """Rows hold a hash of the session id: a copy of the database alone signs nobody in."""
    return hashlib.sha256(sid.encode()).hexdigest()


# --- the service --------------------------------------------------------------------------------


class WebLogin:
    """Sign-in and access decisions for https://<tenant host>/backups/."""

    def __init__(
        self,
        settings: DiscordSection,
        sessions: sessionmaker[Session],
        key_file: Path,
        fleet_host: str,
        https_port: int,
        instance_for_host: Callable[[str], str | None],
        owner_of: Callable[[str], str | None],
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.key_file = key_file
        self.fleet_host = fleet_host
        self.port_suffix = "" if https_port == 443 else f":{https_port}"
        self.instance_for_host = instance_for_host
        self.owner_of = owner_of
        self.clock = clock
        self.transport = transport
        self._tokens: LoginTokens | None = None

    # configuration ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.settings.login_enabled

    @property
    def session_seconds(self) -> int:
        return int(self.settings.session_hours * 3600)

    @property
    def redirect_uri(self) -> str:
        """The one callback registered with Discord (it must match exactly)."""
        return self.url(self.fleet_host, "/auth/callback")

    def url(self, host: str, path: str) -> str:
        return f"https://{host}{self.port_suffix}{path}"

    def tokens(self) -> LoginTokens:
        if self._tokens is None:
            self._tokens = LoginTokens(load_or_create_key(self.key_file), self.clock)
        return self._tokens

    def _client_secret(self) -> str:
        assert self.settings.client_secret_file is not None  # only called when enabled
        return read_private_file(self.settings.client_secret_file, "the Discord client secret file",
                                 "[discord] client_secret_file in fleet.toml")

    def problem(self) -> str | None:
        """What keeps sign-in from working, said once at start-up (None: nothing, or not configured)."""
        if not self.enabled:
            return None
        try:
            self._client_secret()
            self.tokens()
        except FleetError as e:
            return f"{e.message} ({e.hint})" if e.hint else e.message
        return None

    def _not_configured(self) -> Unsupported:
        return Unsupported("Discord sign-in is not set up on this fleet",
                           "the fleet's admin sets [discord] client_id and client_secret_file in fleet.toml")

    # 1. /auth/login on the fleet host ------------------------------------------------------------

    def begin(self, host: str, next_path: str | None, bind: str | None) -> LoginStart:
        """`bind`: the hash of the nonce the tenant host gave the browser (see `decide`)."""
        if not self.enabled:
            raise self._not_configured()
        host = normalise_host(host or "")
        if not host or self.instance_for_host(host) is None:
            raise InvalidInput(f"{host or 'no host'!r} is not a game on this fleet",
                               "open the backups page of your game: https://<your game's host>/backups/")
        nxt = safe_next(next_path or "/backups/")
        if nxt is None:
            raise InvalidInput("after signing in, only a page under /backups/ can be shown",
                               f"open {self.url(host, '/backups/')}")
        if not bind or not _BIND.match(bind):
            raise InvalidInput("this sign-in was not started from your game's backups page",
                               f"open {self.url(host, '/backups/')}")
        return self._to_discord({"host": host, "next": nxt, "bind": bind})

    def begin_panel(self, next_path: str) -> LoginStart:
        """A sign-in to the panel on the fleet host; `next_path` is a panel path the caller checked."""
        if not self.enabled:
            raise self._not_configured()
        return self._to_discord({"kind": PANEL_FLOW, "host": self.fleet_host, "next": next_path})

    def _to_discord(self, flow: dict[str, str]) -> LoginStart:
        """Send the browser to Discord; `flow` is kept in the signed cookie for the callback."""
        try:
            self._client_secret()  # before the browser goes to Discord, not after
        except FleetError as e:
            log.error("Discord sign-in cannot work: %s", e.message)
            raise ExternalFailure("Discord sign-in is not working on this fleet right now",
                                  "the fleet's admin can see why in the daemon's log") from None
        assert self.settings.client_id is not None
        state = generate_token(32)
        verifier = generate_token(64)  # RFC 7636: 43-128 unreserved characters
        authorize_url = prepare_grant_uri(
            f"{self.settings.oauth_base.rstrip('/')}/oauth2/authorize",
            client_id=self.settings.client_id,
            response_type="code",
            redirect_uri=self.redirect_uri,
            scope=SCOPE,
            state=state,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
            prompt="none",  # Discord skips its consent screen for a user who already agreed
        )
        cookie = self.tokens().login.dumps({**flow, "state": state, "verifier": verifier})
        return LoginStart(authorize_url, LOGIN_COOKIE_PREFIX + state, cookie, LOGIN_SECONDS)

    # 2. /auth/callback on the fleet host ---------------------------------------------------------

    def finish(self, query: Mapping[str, str], cookies: Mapping[str, str]) -> LoginDone | PanelLoginDone:
        if not self.enabled:
            raise self._not_configured()
        state = query.get("state", "")
        again = "go back to your game's backups page and sign in again"
        raw = cookies.get(LOGIN_COOKIE_PREFIX + state) if _STATE.match(state) else None
        if raw is None:
            raise InvalidInput("this sign-in was not started in this browser, or took more than 10 minutes", again)
        try:
            flow = self.tokens().login.loads(raw, max_age=LOGIN_SECONDS)
        except SignatureExpired:
            raise InvalidInput("this sign-in took more than 10 minutes", again) from None
        except BadSignature:
            raise InvalidInput("this sign-in was not started by this fleet", again) from None
        if not isinstance(flow, dict) or not hmac.compare_digest(str(flow.get("state", "")), state):
            raise InvalidInput("this sign-in does not match the one started in this browser", again)
        host, nxt, bind = str(flow["host"]), str(flow["next"]), str(flow.get("bind", ""))
        panel = flow.get("kind") == PANEL_FLOW
        start_page = self.url(self.fleet_host, PANEL_LOGIN) if panel else self.url(host, "/backups/")
        back = f"to try again, open {start_page}"
        if "error" in query:
            raise Forbidden(f"Discord did not sign you in ({query.get('error', '')[:100]})", back)
        code = query.get("code", "")
        if not code or len(code) > 512:
            raise InvalidInput("Discord sent no sign-in code", back)
        if panel:
            # No ticket: the callback is on the fleet host, where the panel's session belongs.
            user = self._discord_user(code, str(flow["verifier"]), back)
            return PanelLoginDone(user, nxt, LOGIN_COOKIE_PREFIX + state)
        if not _BIND.match(bind):
            raise InvalidInput("this sign-in was not started from your game's backups page", back)
        user = self._discord_user(code, str(flow["verifier"]))
        ticket = self.tokens().make_ticket(user, host, nxt, bind)
        return LoginDone(self.url(host, "/auth/ticket?" + urlencode({"t": ticket})), LOGIN_COOKIE_PREFIX + state)

    def _discord_user(self, code: str, verifier: str,
                      again: str = "sign in again from your game's backups page") -> str:
        """Exchange the code (client authentication + PKCE verifier) and read who signed in. `again`: the
        hint when it did not work."""
        assert self.settings.client_id is not None
        try:
            secret = self._client_secret()
        except FleetError as e:
            log.error("Discord sign-in cannot work: %s", e.message)
            raise ExternalFailure("Discord sign-in is not working on this fleet right now",
                                  "the fleet's admin can see why in the daemon's log") from None
        token_url = f"{self.settings.api_base.rstrip('/')}/oauth2/token"
        body = prepare_token_request("authorization_code", redirect_uri=self.redirect_uri, code=code,
                                     code_verifier=verifier)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        _uri, headers, body = ClientAuth(self.settings.client_id, secret, "client_secret_basic").prepare(
            "POST", token_url, headers, body)
        try:
            with httpx.Client(transport=self.transport, timeout=15.0) as http:
                answer = http.post(token_url, content=body, headers=headers)
                if answer.status_code == 401:
                    log.error("Discord refused the fleet's client id or secret (HTTP 401 from %s)", token_url)
                    raise ExternalFailure("Discord refused this fleet's sign-in credentials",
                                          "the fleet's admin can see why in the daemon's log")
                if answer.status_code != 200:
                    raise ExternalFailure(f"Discord did not accept the sign-in ({_oauth_error(answer)})", again)
                token = _json(answer)
                access = token.get("access_token")
                if not isinstance(access, str) or str(token.get("token_type", "")).lower() != "bearer":
                    raise ExternalFailure("Discord's answer had no access token", again)
                me = http.get(f"{self.settings.api_base.rstrip('/')}/users/@me",
                              headers={"Authorization": f"Bearer {access}", "Accept": "application/json"})
        except httpx.HTTPError as e:
            raise ExternalFailure(f"Discord could not be reached ({type(e).__name__})", again) from None
        if me.status_code != 200:
            raise ExternalFailure(f"Discord did not say who signed in (HTTP {me.status_code})", again)
        user = _json(me).get("id")
        if not isinstance(user, str) or not _SNOWFLAKE.match(user):
            raise ExternalFailure("Discord's answer had no user id", again)
        return user

    # 3. /auth/ticket on the tenant host ----------------------------------------------------------

    def redeem(self, ticket: str, host: str, nonce: str | None) -> SignedIn:
        """Sign in the browser that holds `nonce` (its NONCE_COOKIE), if the ticket was made for it."""
        if not self.enabled:
            raise self._not_configured()
        host = normalise_host(host)
        again = f"open {self.url(host, '/backups/')} to sign in again"
        try:
            data = self.tokens().ticket.loads(ticket, max_age=TICKET_SECONDS)
        except SignatureExpired:
            raise Forbidden(f"this sign-in link has expired (they work for {TICKET_SECONDS} seconds)", again) from None
        except BadSignature:
            raise Forbidden("this sign-in link is not valid", again) from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str)
                                                 for k in ("id", "user", "host", "next", "bind")):
            raise Forbidden("this sign-in link is not valid", again)
        if data["host"] != host:
            raise Forbidden("this sign-in link is for another game", again)
        # Login CSRF: someone's own ticket, sent to a victim, would sign the victim in as them.
        if not nonce or not hmac.compare_digest(nonce_hash(nonce), data["bind"]):
            raise Forbidden("this sign-in link was opened in another browser than the one that asked to sign in",
                            f"sign in from your own browser: {again}")
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        try:
            with self.sessions() as s, s.begin():
                s.execute(delete(UsedTicketRow).where(UsedTicketRow.expires_at < now))
                s.execute(delete(WebSessionRow).where(WebSessionRow.expires_at < now))
                if s.get(UsedTicketRow, data["id"]) is not None:
                    raise Forbidden("this sign-in link was already used", again)
                # Kept past the ticket's own expiry, after which its signature refuses it anyway.
                s.add(UsedTicketRow(id=data["id"], expires_at=now + TICKET_SECONDS + 5))
                s.add(WebSessionRow(id=_session_row_id(sid), discord_user_id=data["user"], host=host,
                                    created_at=now, expires_at=now + self.session_seconds))
        except IntegrityError:
            raise Forbidden("this sign-in link was already used", again) from None
        cookie = self.tokens().session.dumps({"sid": sid, "host": host})
        return SignedIn(cookie, safe_next(data["next"]) or "/backups/", self.session_seconds, data["user"])

    # sessions ------------------------------------------------------------------------------------

    def session_user(self, cookie: str | None, host: str) -> str | None:
        """The Discord id signed in on `host` with this cookie; None for no, forged, expired, or another
        host's cookie."""
        sid = self._session_id(cookie, normalise_host(host))
        if sid is None:
            return None
        with self.sessions() as s:
            row = s.get(WebSessionRow, _session_row_id(sid))
            if row is None or row.host != normalise_host(host) or row.expires_at <= self.clock():
                return None
            return row.discord_user_id

    def _session_id(self, cookie: str | None, host: str) -> str | None:
        if not cookie or len(cookie) > 1000 or not self.enabled:
            return None
        try:
            data: Any = self.tokens().session.loads(cookie, max_age=self.session_seconds + 60)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("host") != host or not isinstance(data.get("sid"), str):
            return None
        return data["sid"]

    def logout_token(self, cookie: str | None) -> str:
        return self.tokens().logout_token(cookie)

    def logout_allowed(self, cookie: str | None, token: str) -> bool:
        """Was this sign-out sent from a page the fleet showed this session (not from another site)?"""
        return self.enabled and hmac.compare_digest(self.logout_token(cookie).encode(), token.encode(errors="replace"))

    def logout(self, cookie: str | None, host: str) -> None:
        sid = self._session_id(cookie, normalise_host(host))
        if sid is None:
            return
        with self.sessions() as s, s.begin():
            s.execute(delete(WebSessionRow).where(WebSessionRow.id == _session_row_id(sid)))

    # the forward_auth check ----------------------------------------------------------------------

    def login_url(self, host: str, next_path: str, bind: str) -> str:
        query = urlencode({"host": host, "next": safe_next(next_path) or "/backups/", "bind": bind})
        return self.url(self.fleet_host, f"/auth/login?{query}")

    def may_read(self, user: str, instance: str) -> bool:
        return user in self.settings.admin_users or user == self.owner_of(instance)

    def decide(self, cookie: str | None, host: str, method: str, uri: str, nonce: str | None = None) -> Decision:
        """May this request for https://<host><uri> reach the backups? `nonce`: the browser's
        NONCE_COOKIE, reused when a sign-in is needed."""
        if not self.enabled:
            return Deny(403, "Sign-in for backups is not available on this fleet.")
        host = normalise_host(host)
        instance = self.instance_for_host(host) if host else None
        if instance is None:
            return Deny(404, "There is no game at this address.")
        if not is_under_backups(uri):
            return Deny(403, "Only the backups pages are behind this sign-in.")
        if method.upper() not in READ_METHODS:
            return Deny(403, "Backups can only be read here.")
        user = self.session_user(cookie, host)
        if user is None:
            nonce = usable_nonce(nonce)
            return SignIn(self.login_url(host, uri, nonce_hash(nonce)), nonce)
        if not self.may_read(user, instance):
            return Deny(403, "You are signed in with a Discord account that does not own this game.", user)
        return Allow(user)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _oauth_error(response: httpx.Response) -> str:
    data = _json(response)
    error = data.get("error")
    return f"HTTP {response.status_code}: {str(error)[:100]}" if error else f"HTTP {response.status_code}"
