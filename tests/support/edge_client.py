"""Talking to the edge like a browser would: HTTPS and wss to 127.0.0.1 with the tenant's name as SNI."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.tls_relay import tls_relay


def local_ca(fleet_root: Path) -> Path:
    return fleet_root / "edge" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"


def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def https(port: int, host: str, path: str, ca: Path, method: str = "GET", headers: dict[str, str] | None = None,
          timeout: float = 10.0) -> httpx.Response:
    """One request over a fresh connection (httpx pools per origin, and the origin is always 127.0.0.1)."""
    with httpx.Client(verify=tls_context(ca), timeout=timeout) as client:
        return client.request(method, f"https://127.0.0.1:{port}{path}", headers={"Host": host, **(headers or {})},
                              extensions={"sni_hostname": host})


def http(port: int, host: str, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=10)


def wss(port: int, host: str, path: str, ca: Path) -> ClientConnection:
    """A websocket to `host` through the edge. The TLS is held by a relay of its own (tls_relay.py):
    websockets' sync client would read and write one ssl socket from two threads, which loses data."""
    relayed = tls_relay(port, host, tls_context(ca))
    # The same request a wss:// URI makes (Host is `host:port`); the relay adds the TLS.
    return connect(f"ws://{host}:{port}{path}", sock=relayed, open_timeout=10, close_timeout=2)


def served_certificate(port: int, host: str, ca: Path) -> dict:
    """The certificate Caddy presents for `host`, verified against the local CA (raises if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with tls_context(ca).wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert()


def certificate_or_none(port: int, host: str, ca: Path) -> dict | None:
    """`served_certificate`, or None when Caddy presents none for `host` (the handshake fails)."""
    try:
        return served_certificate(port, host, ca)
    except (ssl.SSLError, OSError):
        return None


def serves_certificate(port: int, host: str, ca: Path) -> bool:
    """Does the edge complete a TLS handshake for `host` with a certificate `ca` vouches for?"""
    try:
        served_certificate(port, host, ca)
    except (OSError, ssl.SSLError):
        return False
    return True
