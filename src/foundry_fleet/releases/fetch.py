"""Download a release zip over HTTPS, refusing anything the download policy does not allow.

The rules, checked on the first URL and again on every redirect hop:
HTTPS only; the host is on the allow-list; no address the host resolves to is loopback, private,
link-local, reserved, multicast or unspecified (unless the policy allows private addresses). After
connecting, the address actually connected to is checked again, so a DNS answer that changes between
our lookup and the connection (DNS rebinding) is still caught.

Timed URLs from foundryvtt.com carry their signature in the query string, so a URL is never shown,
logged or put in an error with its query: everything goes through `redact_url`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from foundry_fleet.domain.urls import redact_url
from foundry_fleet.domain.errors import ExternalFailure, FleetError, InvalidInput
from foundry_fleet.releases.policy import MIB, DownloadPolicy, ProgressCallback, normalise_host

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
_FRESH_LINK_HINT = (
    "timed download links from foundryvtt.com expire after 5 minutes: copy a fresh link from your "
    "foundryvtt.com account and try again"
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_kind(ip: IPAddress) -> str | None:
    """Why an address is not a public internet address ("loopback", "private", ...), or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address can smuggle an IPv4 one (::ffff:127.0.0.1, 6to4): judge the embedded one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return address_kind(embedded)
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    )
    for kind, flagged in checks:
        if flagged:
            return kind
    if not ip.is_global:  # shared address space (100.64/10) and other special-purpose blocks
        return "non-public"
    return None


def download(
    url: str,
    dest: Path,
    policy: DownloadPolicy,
    progress: ProgressCallback | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[str, int]:
    """Stream `url` into `dest`; returns (sha256 hex, size in bytes).

    `transport` replaces the network (tests); by default a direct HTTPS connection is made that trusts
    the system's CAs plus `policy.extra_ca_file`. On any failure `dest` is removed if this call made it.
    """
    dest = Path(dest)
    created = False
    hops: list[str] = [url]  # every URL seen, so their query strings can be scrubbed from errors
    owns_transport = transport is None
    client = httpx.Client(
        transport=transport if transport is not None else _default_transport(policy),
        follow_redirects=False,  # each hop is re-checked against the policy below
        trust_env=False,  # no proxy from the environment: we check the address we connect to
        timeout=_TIMEOUT,
        headers={"Accept-Encoding": "identity"},
    )
    try:
        current = _parse(url)
        for _hop in range(MAX_REDIRECTS + 1):
            _check_url(current, policy)
            log.info("downloading %s", redact_url(current))
            with client.stream("GET", current) as response:
                _check_peer(response, current, policy)
                if response.status_code in _REDIRECT_STATUSES:
                    current = _next_hop(response, current)
                    hops.append(str(current))
                    log.info("redirected to %s", redact_url(current))
                    continue
                _check_status(response, current)
                total = _declared_length(response, policy, current)
                created = True
                return _stream_to_file(response, dest, total, policy, progress, redact_url(current))
        raise ExternalFailure(
            f"download of {redact_url(url)} was redirected more than {MAX_REDIRECTS} times",
            "the link is probably broken: fetch a fresh one",
        )
    except FleetError as err:
        _remove_partial(dest, created)
        err.message = _scrub(err.message, hops)
        err.hint = _scrub(err.hint, hops) if err.hint else err.hint
        err.args = (err.message,)
        raise
    except httpx.HTTPError as err:
        _remove_partial(dest, created)
        raise _network_failure(err, hops) from None
    except BaseException:
        _remove_partial(dest, created)
        raise
    finally:
        if owns_transport:
            client.close()  # a caller's transport stays open: the caller may reuse it


def check_download_url(url: str, policy: DownloadPolicy) -> str:
    """Refuse, before anything is downloaded, a URL the download itself would refuse (scheme, host, address);
    returns it as given."""
    _check_url(_parse(url), policy)
    return url


def check_request(url: httpx.URL, policy: DownloadPolicy) -> None:
    """The checks a download makes before each request, for other clients of the same sites (the account
    pages): https, an allowed host, a public address."""
    _check_url(url, policy)


def check_connected_peer(response: httpx.Response, url: httpx.URL, policy: DownloadPolicy) -> None:
    """The check a download makes after connecting (DNS rebinding); call it before reading the body."""
    _check_peer(response, url, policy)


def https_transport(policy: DownloadPolicy) -> httpx.HTTPTransport:
    """A transport trusting the system's CAs plus the policy's test-only CA, with no retries of its own."""
    return _default_transport(policy)


def _parse(url: str) -> httpx.URL:
    # The same parsed object is checked and requested, so no two URL parsers can disagree on the host.
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise InvalidInput(
            f"{redact_url(url)} is not a valid download URL",
            "paste the https:// link exactly as foundryvtt.com shows it",
        ) from None


def _check_url(url: httpx.URL, policy: DownloadPolicy) -> None:
    shown = redact_url(url)
    if url.scheme != "https":
        raise InvalidInput(
            f"refusing to download {shown}: only https:// downloads are allowed",
            "use the https:// link foundryvtt.com gives you",
        )
    host = normalise_host(url.raw_host.decode("ascii", errors="replace"))
    if not host:
        raise InvalidInput(f"refusing to download {shown}: the URL has no host", "check the link")
    if not policy.allows_host(host):
        allowed = ", ".join(policy.allowed_hosts) or "none"
        raise InvalidInput(
            f"refusing to download {shown}: {host} is not an allowed download host (allowed: {allowed})",
            "download release zips from foundryvtt.com, or add the host to [releases] allowed_hosts "
            "in fleet.toml if you trust it",
        )
    if policy.allow_private_addresses:
        return
    for ip in _resolve(host, url.port or 443):
        kind = address_kind(ip)
        if kind is not None:
            raise InvalidInput(
                f"refusing to download {shown}: {host} resolves to {ip}, a {kind} address",
                "release downloads must come from the public internet; "
                "[releases] allow_private_addresses is for tests only",
            )


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ExternalFailure(
            f"could not resolve download host {host}: {getattr(e, 'strerror', None) or e}",
            "check the host name and this server's DNS settings",
        ) from None
    # sockaddr[0] may carry an IPv6 zone ("fe80::1%eth0"); the zone does not change the address class.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _check_peer(response: httpx.Response, url: httpx.URL, policy: DownloadPolicy) -> None:
    """Judge the address we actually connected to (absent with test transports that have no socket)."""
    if policy.allow_private_addresses:
        return
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not peer:
        return
    ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    kind = address_kind(ip)
    if kind is not None:
        raise InvalidInput(
            f"refusing to download {redact_url(url)}: the connection went to {ip}, a {kind} address",
            "release downloads must come from the public internet",
        )


def _next_hop(response: httpx.Response, current: httpx.URL) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise ExternalFailure(
            f"{redact_url(current)} answered a redirect (HTTP {response.status_code}) without a Location",
            _FRESH_LINK_HINT,
        )
    try:
        return current.join(location)
    except (httpx.InvalidURL, ValueError):
        raise ExternalFailure(
            f"{redact_url(current)} redirected to an unreadable location", _FRESH_LINK_HINT
        ) from None


def _check_status(response: httpx.Response, url: httpx.URL) -> None:
    code = response.status_code
    if code == 200:
        return
    shown = redact_url(url)
    if code == 429:
        hint = "the server is rate limiting this host: wait a few minutes before trying again"
    elif code in (401, 403, 404, 410):
        hint = _FRESH_LINK_HINT
    else:
        hint = "the download server had a problem: try again later"
    raise ExternalFailure(f"download of {shown} failed: the server answered HTTP {code}", hint)


def _declared_length(response: httpx.Response, policy: DownloadPolicy, url: httpx.URL) -> int | None:
    """Content-Length, refused up front when it is already over the limit."""
    declared = response.headers.get("content-length", "")
    total = int(declared) if declared.isdigit() else None
    limit = policy.max_download_bytes
    if total is not None and total > limit:
        raise InvalidInput(
            f"refusing to download {redact_url(url)}: it is {_mb(total)}, "
            f"over the download limit of {_mb(limit)}",
            "raise [releases] max_download_mb in fleet.toml if this release really is that large",
        )
    return total


def _stream_to_file(
    response: httpx.Response,
    dest: Path,
    total: int | None,
    policy: DownloadPolicy,
    progress: ProgressCallback | None,
    shown: str,
) -> tuple[str, int]:
    limit = policy.max_download_bytes
    digest = hashlib.sha256()
    size = 0
    # O_NOFOLLOW: never write through a symlink someone left at the destination.
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        # iter_bytes counts what lands on disk, so a server ignoring our Content-Length or
        # Accept-Encoding cannot slip past the limit.
        for chunk in response.iter_bytes(_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise InvalidInput(
                    f"refusing to download {shown}: it grew past the download limit of {_mb(limit)}; "
                    "the partial file was removed",
                    "raise [releases] max_download_mb in fleet.toml if this release really is that large",
                )
            digest.update(chunk)
            out.write(chunk)
            if progress is not None:
                progress("download", size, total)
    if total is not None and size != total:
        raise ExternalFailure(
            f"download of {shown} ended early ({size} of {total} bytes)", "try again; the connection dropped"
        )
    log.info("downloaded %s (%d bytes)", shown, size)
    return digest.hexdigest(), size


def _default_transport(policy: DownloadPolicy) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(verify=_ssl_context(policy), retries=0)


def _ssl_context(policy: DownloadPolicy) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system's CAs
    try:
        import certifi  # httpx's own default trust store; present wherever httpx is

        context.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError, ssl.SSLError):
        pass  # the system store alone is still a sound default
    if policy.extra_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(policy.extra_ca_file))
        except (OSError, ssl.SSLError) as e:
            raise InvalidInput(
                f"the extra CA file {policy.extra_ca_file} could not be loaded ({e})",
                "point [releases] extra_ca_file at a PEM certificate, or remove the setting",
            ) from None
    return context


def _network_failure(err: httpx.HTTPError, hops: list[str]) -> ExternalFailure:
    shown = redact_url(hops[-1])
    detail = _scrub(str(err), hops) or type(err).__name__
    if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate" in detail.lower():
        hint = "the server's TLS certificate is not trusted by this host; check its CA certificates"
    elif isinstance(err, httpx.TimeoutException):
        hint = "the download server is slow or unreachable: try again later"
    else:
        hint = "check this server's network connection, then try again"
    return ExternalFailure(f"download of {shown} failed: {detail}", hint)


def _scrub(text: str, urls: list[str]) -> str:
    """Remove every query string and fragment of `urls` from `text` (belt and braces for messages
    that quote a library's error, which may contain the URL as it was requested)."""
    for url in urls:
        try:
            parts = urlsplit(str(url))
        except ValueError:
            continue
        for secret in (parts.query, parts.fragment):
            if secret:
                text = text.replace(secret, "[redacted]")
    return text


def _remove_partial(dest: Path, created: bool) -> None:
    if created:
        try:
            dest.unlink(missing_ok=True)
        except OSError:
            log.warning("could not remove the partial download %s", dest)


def _mb(size: int) -> str:
    return f"{size / MIB:.1f} MB"
