"""A strict stand-in for Discord's OAuth2 endpoints, on a loopback port.

  GET  /oauth2/authorize     the consent step. The browser's Discord login is the `discord_user`
                             cookie (a Discord id); `discord_consent=deny` plays "Cancel".
  POST /api/oauth2/token     authorization_code grant: client authentication (HTTP Basic or form
                             fields, not both), a single-use code bound to its client and
                             redirect_uri, and the PKCE verifier checked against the challenge.
  GET  /api/users/@me        needs a Bearer token with the `identify` scope.

It refuses what Discord refuses, with Discord's status codes and error names, so a client that
gets through here sends what Discord expects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

# Discord's OAuth2 scopes (developer docs, "OAuth2 Scopes").
KNOWN_SCOPES = frozenset({
    "activities.read", "activities.write", "applications.builds.read", "applications.builds.upload",
    "applications.commands", "applications.commands.update", "applications.commands.permissions.update",
    "applications.entitlements", "applications.store.update", "bot", "connections", "dm_channels.read", "email",
    "gdm.join", "guilds", "guilds.join", "guilds.members.read", "identify", "messages.read",
    "relationships.read", "role_connections.write", "rpc", "rpc.activities.write", "rpc.notifications.read",
    "rpc.voice.read", "rpc.voice.write", "voice", "webhook.incoming",
})
VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 section 4.1
CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")  # base64url of a SHA-256, unpadded
CODE_SECONDS = 600
TOKEN_SECONDS = 604800


@dataclass
class Grant:
    client_id: str
    user: str
    redirect_uri: str
    scopes: frozenset[str]
    challenge: str | None
    expires_at: float
    used: bool = False


@dataclass
class DiscordOAuthStandin:
    client_id: str
    client_secret: str
    redirect_uris: set[str] = field(default_factory=set)
    users: dict[str, str] = field(default_factory=dict)  # id -> username
    require_pkce: bool = True  # as an app whose sign-in must use PKCE: no challenge, no code
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, tuple[str, frozenset[str], float]] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (method, path, headers)
    token_bodies: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> DiscordOAuthStandin:
        fake = self

        class Handler(_Handler):
            discord = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # stop() waits for serve_forever to look again: every 0.05 s, not its default 0.5 s.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> DiscordOAuthStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api(self) -> str:
        return f"{self.base}/api"

    # the endpoints ----------------------------------------------------------------------------

    def authorize(self, query: dict[str, str], cookies: dict[str, str]) -> tuple[int, dict[str, str], dict]:
        """Discord shows an error page (no redirect) for a bad client or redirect_uri; errors about the
        request itself go back to the redirect_uri."""
        if query.get("client_id") != self.client_id:
            return 400, {}, {"client_id": ["Unknown application"]}
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in self.redirect_uris:
            return 400, {}, {"redirect_uri": ["Invalid OAuth2 redirect_uri"]}
        state = query.get("state")

        def back(**params: str) -> tuple[int, dict[str, str], dict]:
            if state is not None:
                params["state"] = state
            sep = "&" if "?" in redirect_uri else "?"
            return 302, {"Location": f"{redirect_uri}{sep}{urlencode(params)}"}, {}

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type", error_description="Unsupported response type")
        scopes = frozenset(query.get("scope", "").split())
        if not scopes or not scopes <= KNOWN_SCOPES:
            return back(error="invalid_scope", error_description="The requested scope is invalid, unknown, or malformed.")
        if query.get("prompt") not in (None, "consent", "none"):
            return 400, {}, {"prompt": ["Value must be one of ('consent', 'none')."]}
        challenge, method = query.get("code_challenge"), query.get("code_challenge_method")
        if challenge is not None or method is not None or self.require_pkce:
            if method != "S256" or not challenge or not CHALLENGE.match(challenge):
                return back(error="invalid_request", error_description="Invalid code_challenge")
        user = cookies.get("discord_user")
        if user not in self.users:
            return 401, {}, {"message": "Log in to Discord first"}
        if cookies.get("discord_consent") == "deny":
            return back(error="access_denied", error_description="The resource owner or authorization server denied the request")
        code = secrets.token_urlsafe(22)
        with self._lock:
            self.codes[code] = Grant(self.client_id, user, redirect_uri, scopes, challenge, time.time() + CODE_SECONDS)
        return back(code=code)

    def token(self, headers: dict[str, str], body: str) -> tuple[int, dict]:
        self.token_bodies.append(body)
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return 400, {"error": "invalid_request", "error_description": "Invalid content type"}
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        basic = _basic_credentials(headers.get("authorization", ""))
        in_body = "client_secret" in form
        if basic is not None and in_body:
            return 400, {"error": "invalid_request", "error_description": "Multiple client authentication methods"}
        client_id, secret = basic if basic is not None else (form.get("client_id", ""), form.get("client_secret", ""))
        if basic is None and not in_body:
            return 401, {"error": "invalid_client"}
        if client_id != self.client_id or not hmac.compare_digest(secret.encode(), self.client_secret.encode()):
            return 401, {"error": "invalid_client"}
        if "client_id" in form and form["client_id"] != client_id:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            grant = self.codes.get(form.get("code", ""))
            if grant is None or grant.used or grant.expires_at < time.time() or grant.client_id != client_id:
                return 400, {"error": "invalid_grant", "error_description": 'Invalid "code" in request.'}
            grant.used = True  # one attempt per code, right or wrong: no guessing the verifier
        if form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": 'Invalid "redirect_uri" in request.'}
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            if not VERIFIER.match(verifier):
                return 400, {"error": "invalid_request", "error_description": "Invalid code_verifier"}
            computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not hmac.compare_digest(computed, grant.challenge):
                return 400, {"error": "invalid_grant", "error_description": "Invalid code verifier"}
        elif "code_verifier" in form:
            return 400, {"error": "invalid_request", "error_description": "Unexpected code_verifier"}
        access = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[access] = (grant.user, grant.scopes, time.time() + TOKEN_SECONDS)
        return 200, {"access_token": access, "token_type": "Bearer", "expires_in": TOKEN_SECONDS,
                     "refresh_token": secrets.token_urlsafe(24), "scope": " ".join(sorted(grant.scopes))}

    def me(self, headers: dict[str, str]) -> tuple[int, dict]:
        auth = headers.get("authorization", "")
        kind, _, access = auth.partition(" ")
        found = self.tokens.get(access) if kind.lower() == "bearer" else None
        if found is None or found[2] < time.time() or "identify" not in found[1]:
            return 401, {"message": "401: Unauthorized", "code": 0}
        user = found[0]
        return 200, {"id": user, "username": self.users[user], "discriminator": "0", "global_name": self.users[user],
                     "avatar": None}


def _basic_credentials(header: str) -> tuple[str, str] | None:
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


class _Handler(BaseHTTPRequestHandler):
    discord: DiscordOAuthStandin

    def _answer(self, status: int, headers: dict[str, str], data: dict) -> None:
        body = json.dumps(data).encode() if data else b""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        headers = self._headers()
        self.discord.calls.append(("GET", url.path, headers))
        if url.path == "/oauth2/authorize":
            query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            jar = SimpleCookie()
            jar.load(headers.get("cookie", ""))
            self._answer(*self.discord.authorize(query, {k: m.value for k, m in jar.items()}))
        elif url.path == "/api/users/@me":
            status, data = self.discord.me(headers)
            self._answer(status, {}, data)
        else:
            self._answer(404, {}, {"message": "404: Not Found", "code": 0})

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        headers = self._headers()
        self.discord.calls.append(("POST", url.path, headers))
        body = self.rfile.read(int(headers.get("content-length", "0") or 0)).decode("latin-1")
        if url.path == "/api/oauth2/token":
            status, data = self.discord.token(headers, body)
            self._answer(status, {}, data)
        else:
            self._answer(405 if url.path in ("/oauth2/authorize", "/api/users/@me") else 404, {},
                         {"message": "405: Method Not Allowed", "code": 0})

    def log_message(self, *args: object) -> None:
        pass
