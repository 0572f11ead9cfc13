"""A strict stand-in of the foundryvtt.com pages the account adapter uses, over HTTPS on loopback.

Strict where the site is (FIELD-NOTES.md, "Account download"): the login needs the form's CSRF token,
the csrftoken cookie and a Referer; a wrong password answers 200 with the form again and no sessionid;
the timed link JSON needs a session; a timed link works once and expires.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.releases import make_certificate

USERNAME = "gm@example.org"
PASSWORD = "correct horse battery staple"
ACCOUNT = "gamemaster"
KEYS = ("ABCD-EFGH-IJKL-MNOP-QRST-UVWX", "ZZZZ-YYYY-XXXX-WWWW-VVVV-UUUU")
SIGNATURE = "X-Amz-Signature=SECRET-SIGNATURE"


@dataclass
class SiteState:
    zips: dict[int, bytes] = field(default_factory=dict)  # build -> zip bytes
    rate_limited: int = 0  # how many login POSTs answer 429 before one is judged
    down: bool = False  # every page answers 503, as when the site is down
    keys: tuple[str, ...] = KEYS  # the account's license keys, as its licenses page shows them
    link_lifetime: float = 300.0
    form_without_token: bool = False  # the site changed its login form
    logins: int = 0  # successful ones
    requests: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)  # csrf tokens handed out with a cookie
    sessions: set[str] = field(default_factory=set)
    links: dict[str, tuple[int, float]] = field(default_factory=dict)  # one-use token -> (build, expiry)


def _form(token: str) -> str:
    return (f'<html><body><form id="login-form" method="post" action="/auth/login/">'
            f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
            '<input name="username"><input type="password" name="password"></form></body></html>')


def _welcome() -> str:
    return (f'<html><body><div id="login-welcome"><span>Welcome</span> <a href="/community/{ACCOUNT}">'
            f'{ACCOUNT}</a></div></body></html>')


class FoundrySite:
    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.state = SiteState()
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                site._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                site._handle(self, "POST")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.state = SiteState()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for r in self.state.requests if r.startswith(prefix))

    # -- the pages -----------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        cookies = SimpleCookie(h.headers.get("Cookie", ""))
        jar = {k: m.value for k, m in cookies.items()}
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        with self._lock:
            s = self.state
            s.requests.append(f"{method} {url.path}")
            logged_in = jar.get("sessionid") in s.sessions
            if s.down:
                return _send(h, 503, "Service Unavailable")
            if method == "GET" and url.path == "/":
                if logged_in:
                    return _send(h, 200, _welcome())
                token = secrets.token_hex(16)
                s.tokens.add(token)
                page = _form("").replace(' name="csrfmiddlewaretoken" value=""', "") if s.form_without_token else _form(token)
                return _send(h, 200, page, cookies={"csrftoken": token})
            if method == "POST" and url.path == "/auth/login/":
                if s.rate_limited > 0:
                    s.rate_limited -= 1
                    return _send(h, 429, "Too Many Requests")
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                token = form.get("csrfmiddlewaretoken")
                if (not token or token not in s.tokens or jar.get("csrftoken") != token
                        or not h.headers.get("Referer", "").startswith(self.base)):
                    return _send(h, 403, "CSRF verification failed. Request aborted.")
                if form.get("username") not in (USERNAME, ACCOUNT) or form.get("password") != PASSWORD:
                    return _send(h, 200, _form(token))
                session = secrets.token_hex(16)
                s.sessions.add(session)
                s.logins += 1
                return _send(h, 302, "", cookies={"sessionid": session}, location=form.get("next") or "/")
            if method == "GET" and url.path == "/releases/download":
                if not logged_in:
                    return _send(h, 302, "", location="/")
                query = parse_qs(url.query)
                if query.get("platform") != ["node"] or query.get("response_type") != ["json"]:
                    return _send(h, 400, "bad request")
                build = int(query.get("build", ["0"])[0])
                if build not in s.zips:
                    return _send(h, 404, "Not Found")
                one_use = secrets.token_hex(8)
                s.links[one_use] = (build, time.monotonic() + s.link_lifetime)
                link = f"{self.base}/presigned/{one_use}/FoundryVTT-Node-13.{build}.zip?{SIGNATURE}"
                return _send(h, 200, json.dumps({"url": link, "lifetime": s.link_lifetime}),
                             content_type="application/json")
            if method == "GET" and url.path.startswith("/presigned/"):
                one_use = url.path.split("/")[2]
                build, expiry = s.links.pop(one_use, (0, 0.0))
                if not build or time.monotonic() > expiry or SIGNATURE not in url.query:
                    return _send(h, 403, "AccessDenied")
                return _send(h, 200, s.zips[build], content_type="application/zip")
            if method == "GET" and url.path == f"/community/{ACCOUNT}/licenses":
                if not logged_in:
                    return _send(h, 302, "", location="/")
                keys = "".join(f'<div class="license"><pre class="key-code"><code>{k}</code></pre></div>' for k in s.keys)
                return _send(h, 200, f"<html><body>{keys}</body></html>")
            return _send(h, 404, "Not Found")


def _send(h: BaseHTTPRequestHandler, status: int, body: str | bytes, *, cookies: dict[str, str] | None = None,
          location: str | None = None, content_type: str = "text/html; charset=utf-8") -> None:
    data = body.encode() if isinstance(body, str) else body
    h.send_response(status)
    for name, value in (cookies or {}).items():
        h.send_header("Set-Cookie", f"{name}={value}; Path=/; Secure; HttpOnly")
    if location:
        h.send_header("Location", location)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def write_account_file(path: Path, username: str = USERNAME, password: str = PASSWORD) -> Path:
    path.write_text(f"{username}\n{password}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def foundry_site_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FoundrySite]:
    cert, key = make_certificate(tmp_path_factory.mktemp("site-tls"))
    site = FoundrySite(cert, key)
    yield site
    site.close()


@pytest.fixture
def foundry_site(foundry_site_session: FoundrySite) -> FoundrySite:
    foundry_site_session.reset()
    return foundry_site_session
