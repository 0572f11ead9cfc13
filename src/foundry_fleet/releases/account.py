"""A tenant's foundryvtt.com account: log in, ask for a timed release link, read the license keys.

The site is HTML meant for people, not an API, so everything that knows its pages lives here. Every
request obeys the download policy (https, allowed hosts, public addresses), the same as a download.

The credentials file (mode 0600, owned by the fleet's user) holds two lines: the username (or e-mail)
on the first, the password on the second. Neither is ever put in a message, a log line or an event.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput, NotFound
from foundry_fleet.domain.release import parse_version
from foundry_fleet.domain.urls import redact_url
from foundry_fleet.private_files import read_private_file
from foundry_fleet.releases.fetch import check_connected_peer, check_request, https_transport
from foundry_fleet.releases.policy import DownloadPolicy

log = logging.getLogger(__name__)

SITE = "foundryvtt.com"
_TIMEOUT = httpx.Timeout(30.0, connect=15.0)
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# The site answers 429 to hosts that log in too often; waiting politely is what gets us back in.
FIRST_WAIT_SECONDS = 120.0
MAX_TOTAL_WAIT_SECONDS = 900.0


class LoginRefused(InvalidInput):
    """The site refused the username or password (it answers with its login form again)."""


class SiteUnavailable(ExternalFailure):
    """The site kept answering `status`: 429 when this host logged in too often, 5xx when it is down."""

    def __init__(self, message: str, hint: str | None, status: int) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class AccountCredentials:
    username: str
    password: str = field(repr=False)
    source: Path | None = None  # the credentials file; None when a person typed them (the setup wizard)

    @classmethod
    def read(cls, path: Path) -> AccountCredentials:
        what = "the foundryvtt.com account file"
        text = read_private_file(Path(path), what, "--account")
        lines = [line.strip() for line in text.splitlines()]
        if len(lines) != 2 or not all(lines):
            # Not a word of the content: it may hold the password on the wrong line.
            raise InvalidInput(f"{what} {path} must hold two lines: the username, then the password",
                               f"write the username on the first line and the password on the second; chmod 600 {path}")
        return cls(lines[0], lines[1], Path(path))


class FoundryAccount:
    """One logged-in conversation with the site: cookies are kept between calls; logs in when first needed."""

    def __init__(
        self,
        credentials: AccountCredentials,
        policy: DownloadPolicy,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        max_total_wait: float = MAX_TOTAL_WAIT_SECONDS,
    ) -> None:
        self.credentials = credentials
        self.policy = policy
        self.site = httpx.URL(policy.account_site.rstrip("/") + "/")
        self.sleep = sleep
        self.jitter = jitter
        self.max_total_wait = max_total_wait
        self.account_name: str | None = None
        self.client = httpx.Client(
            transport=transport if transport is not None else https_transport(policy),
            follow_redirects=False,  # each hop is checked against the policy
            trust_env=False,
            timeout=_TIMEOUT,
        )

    @classmethod
    def from_file(cls, path: Path, policy: DownloadPolicy, **kwargs: object) -> FoundryAccount:
        return cls(AccountCredentials.read(path), policy, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> FoundryAccount:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the three things we ask of the site --------------------------------------------------------

    def login(self) -> str:
        """Log in; returns the account name (people may log in with their e-mail address)."""
        page = self._request("GET", "")
        token = _csrf_token(page.text)
        if token is None:
            raise ExternalFailure(f"the {SITE} login page had no CSRF token (csrfmiddlewaretoken)",
                                  f"the site may have changed or be down; try again later, or download the "
                                  f"zip from your {SITE} account and pass its path")
        form = {"csrfmiddlewaretoken": token, "next": "/", "username": self.credentials.username,
                "password": self.credentials.password}
        answer = self._request("POST", "auth/login/", data=form, headers={"Referer": str(self.site)})
        if not self.client.cookies.get("sessionid"):
            source = self.credentials.source
            if source is None:
                raise LoginRefused(f"{SITE} refused the username or password",
                                   "check them by logging in on the site")
            raise LoginRefused(f"{SITE} refused the username or password in {source}",
                               "check both lines of the file (username, then password) by logging in on the site")
        name = _account_name(answer.text)
        if name is None:
            name = _account_name(self._request("GET", "").text)
        if name is None:
            raise ExternalFailure(f"logged in to {SITE}, but its page did not name the account",
                                  "the site may have changed; try again later")
        self.account_name = name
        log.info("logged in to %s as %s", SITE, name)
        return name

    def presigned_url(self, version: str) -> str:
        """A timed download link for `version` (e.g. "13.345"); it carries its signature in the query."""
        _generation, build = parse_version(version)
        self._ensure_login()
        answer = self._request("GET", f"releases/download?build={build}&platform=node&response_type=json",
                               missing_ok=True)
        if answer.status_code == 404:
            raise NotFound(f"{SITE} has no release {version} (build {build}) for this account",
                           f"check the version on your {SITE} account's download page")
        try:
            url = json.loads(answer.text)["url"]
        except (ValueError, KeyError, TypeError):
            raise ExternalFailure(f"{SITE} answered the release link request for {version} with something "
                                  "other than a link", "try again later") from None
        if not isinstance(url, str):
            raise ExternalFailure(f"{SITE} sent no usable link for release {version}", "try again later")
        log.info("got a timed link for release %s: %s", version, redact_url(url))
        return url

    def license_keys(self) -> list[str]:
        """The account's license keys, dashes removed, in the order the site lists them."""
        name = self._ensure_login()
        keys = _license_keys(self._request("GET", f"community/{name}/licenses").text)
        return [key.replace("-", "").strip() for key in keys if key.strip()]

    def _ensure_login(self) -> str:
        return self.account_name if self.account_name is not None else self.login()

    # -- one request, politely ----------------------------------------------------------------------

    def _request(self, method: str, path: str, *, data: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, missing_ok: bool = False) -> httpx.Response:
        waited = 0.0
        wait = FIRST_WAIT_SECONDS
        while True:
            response = self._follow(method, self.site.join(path), data, headers)
            if response.status_code == 200 or (missing_ok and response.status_code == 404):
                return response
            shown = redact_url(response.url)
            if response.status_code != 429 and response.status_code < 500:
                raise ExternalFailure(f"{SITE} answered HTTP {response.status_code} to {method} {shown}",
                                      "try again later")
            pause = wait * (1.0 + 0.25 * self.jitter())
            if waited + pause > self.max_total_wait:
                raise SiteUnavailable(
                    f"{SITE} kept answering HTTP {response.status_code} to {method} {shown}; "
                    f"gave up after waiting {waited:.0f}s in all (the limit is {self.max_total_wait:.0f}s)",
                    f"{SITE} limits hosts that log in often: wait some minutes, then try again "
                    "(a release in the cache never logs in again)", response.status_code)
            log.warning("%s answered HTTP %d; waiting %.0fs before trying again", SITE, response.status_code, pause)
            self.sleep(pause)
            waited += pause
            wait *= 2

    def _follow(self, method: str, url: httpx.URL, data: dict[str, str] | None,
                headers: dict[str, str] | None) -> httpx.Response:
        for _hop in range(_MAX_REDIRECTS + 1):
            check_request(url, self.policy)
            try:
                with self.client.stream(method, url, data=data, headers=headers) as response:
                    check_connected_peer(response, url, self.policy)
                    response.read()
            except httpx.HTTPError as e:
                raise ExternalFailure(f"could not reach {SITE} ({redact_url(url)}): {type(e).__name__}",
                                      "check this server's network connection, then try again") from None
            if response.status_code not in _REDIRECTS:
                return response
            location = response.headers.get("location")
            if not location:
                return response
            url = url.join(location)
            method, data = "GET", None  # a redirect after the login form is a plain page load
        raise ExternalFailure(f"{SITE} redirected more than {_MAX_REDIRECTS} times", "try again later")


# -- reading the pages ------------------------------------------------------------------------------


class _PageReader(HTMLParser):
    """Collects what we read of the site's pages; tolerant of the rest of the markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.csrf: str | None = None
        self.welcome_href: str | None = None
        self.keys: list[str] = []
        self._in_welcome = False
        self._in_key_pre = False
        self._key: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and a.get("name") == "csrfmiddlewaretoken" and self.csrf is None:
            self.csrf = a.get("value") or None
        if a.get("id") == "login-welcome":
            self._in_welcome = True
        elif tag == "a" and self._in_welcome and self.welcome_href is None:
            self.welcome_href = a.get("href")
        if tag == "pre" and "key-code" in a.get("class", "").split():
            self._in_key_pre = True
        elif tag == "code" and self._in_key_pre:
            self._key = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._key is not None:
            self.keys.append("".join(self._key))
            self._key = None
        elif tag == "pre":
            self._in_key_pre = False

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self._key.append(data)


def _read(html: str) -> _PageReader:
    reader = _PageReader()
    reader.feed(html)
    reader.close()
    return reader


def _csrf_token(html: str) -> str | None:
    return _read(html).csrf


def _account_name(html: str) -> str | None:
    href = _read(html).welcome_href
    if not href or "/community/" not in href:
        return None
    name = href.rstrip("/").rsplit("/", 1)[-1]
    return name or None


def _license_keys(html: str) -> list[str]:
    return _read(html).keys
