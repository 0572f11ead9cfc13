"""Where a door without a lock may listen: an IP literal that the internet does not route to (pure: no I/O).

A name is refused too: what it resolves to may change, or be public, after the check.
"""

from __future__ import annotations

import ipaddress
import re

from foundry_fleet.domain.errors import InvalidInput

_PORT = re.compile(r"^[0-9]{1,5}$")
_EXAMPLE = '"127.0.0.1:9464", "10.0.0.5:9464" or "[fd00::5]:9464"'


def private_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); InvalidInput saying why when the host is no
    loopback or private address."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise InvalidInput(f"{text!r} is not HOST:PORT with a port from 1 to 65535", f"e.g. {_EXAMPLE}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidInput(f"{text!r}: an IPv6 address is written in brackets", 'e.g. "[fd00::5]:9464"')
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"{host!r} is not an IP address",
                           "give a loopback or private IP address: a name may resolve to a public one") from None
    if ip.is_unspecified:
        raise InvalidInput(f"{host} listens on every address of the host, public ones included",
                           f"give one loopback or private address, e.g. {_EXAMPLE}")
    if ip.is_global or ip.is_multicast:
        raise InvalidInput(f"{host} is a public address: anyone could read the fleet's metrics there without a token",
                           "give a loopback or private address, or scrape https://<fleet host>/metrics with the token")
    return str(ip), int(port)
