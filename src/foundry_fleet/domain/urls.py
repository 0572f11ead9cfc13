"""URLs as they may be shown: a download link's query string can be a credential (foundryvtt.com's timed
links are), so messages, logs, manifests and cache keys carry only scheme, host, port and path."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: object) -> str:
    """`scheme://host[:port]/path` of a URL: no user info, query string or fragment.

    This is the only form of a URL that may appear in messages, logs, manifests or cache keys.
    """
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unreadable URL>"
    scheme = parts.scheme.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    default_port = {"https": 443, "http": 80}.get(scheme)
    netloc = host if port is None or port == default_port else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path}"
