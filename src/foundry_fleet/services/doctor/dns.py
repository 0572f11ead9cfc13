"""DNS: the fleet's own host and any tenant host (`*.<domain>`, asked as a random name under it) resolve to
this host, and only to it: a record pointing elsewhere sends some players to another machine.

This host's addresses are those of its interfaces; a host behind NAT (a cloud VM with a private address)
is told its public one with `--public-address`. Without that, a name resolving to an address no interface
has, on a host whose interfaces have no public address, is a warning: it may be the NAT's, which cannot be
told from here. The resolver and the addresses are passed in, so the judging is tested without a network.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry_fleet.services.doctor.report import Check, failed, passed, skipped, warned

DNS_TIMEOUT = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# name -> its addresses; raises socket.gaierror (no such name), TimeoutError, or another OSError.
Resolver = Callable[[str], list[str]]


def system_resolver(timeout: float = DNS_TIMEOUT, getaddrinfo: Callable[..., list[Any]] = socket.getaddrinfo
                    ) -> Resolver:
    """The host's own resolver (getaddrinfo: /etc/hosts, then DNS), given `timeout` seconds a name. A
    lookup that takes longer is left to finish in a daemon thread, which does not keep the CLI alive."""

    def resolve(name: str) -> list[str]:
        answer: dict[str, object] = {}

        def ask() -> None:
            try:
                infos = getaddrinfo(name, None, type=socket.SOCK_STREAM)
                answer["addresses"] = sorted({str(info[4][0]).partition("%")[0] for info in infos})
            except OSError as e:
                answer["error"] = e

        lookup = threading.Thread(target=ask, name=f"resolve {name}", daemon=True)
        lookup.start()
        lookup.join(timeout)
        if lookup.is_alive():
            raise TimeoutError(f"no answer within {timeout:.0f} s")
        if "error" in answer:
            raise answer["error"]  # type: ignore[misc]
        return answer["addresses"]  # type: ignore[return-value]

    return resolve


def interface_addresses(proc: Path = Path("/proc")) -> set[IPAddress]:
    """This host's own addresses (every interface's, loopback too): IPv4 from the kernel's local routes
    (/proc/net/fib_trie), IPv6 from /proc/net/if_inet6."""
    found: set[IPAddress] = set()
    try:
        last = None
        for line in (proc / "net" / "fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith("|-- "):
                last = text[4:]
            elif text == "/32 host LOCAL" and last is not None:
                found.add(ipaddress.IPv4Address(last))
    except (OSError, ValueError):
        pass
    try:
        for line in (proc / "net" / "if_inet6").read_text().splitlines():
            fields = line.split()
            if fields:
                found.add(ipaddress.IPv6Address(int(fields[0], 16)))
    except (OSError, ValueError):
        pass
    return found


@dataclass(frozen=True)
class HostAddresses:
    own: frozenset[IPAddress]  # the interfaces'
    public: frozenset[IPAddress] = frozenset()  # told by the operator: a NAT in front of this host forwards them

    @classmethod
    def of(cls, own: Iterable[IPAddress | str], public: Iterable[IPAddress | str] = ()) -> HostAddresses:
        return cls(frozenset(ipaddress.ip_address(a) for a in own), frozenset(ipaddress.ip_address(a) for a in public))

    @property
    def reachable(self) -> list[IPAddress]:
        """The addresses a DNS record should name: the public ones told, else the interfaces' global ones."""
        return _sorted(self.public or {a for a in self.own if a.is_global})

    def __contains__(self, address: object) -> bool:
        return address in self.own or address in self.public


def is_local_domain(domain: str) -> bool:
    """`localhost` and names under it resolve to this machine without DNS (RFC 6761): nothing to check."""
    return domain == "localhost" or domain.endswith(".localhost")


def dns_checks(domain: str, fleet_host: str, resolve: Resolver, host: HostAddresses, edge_elsewhere: bool = False,
               probe_label: str | None = None) -> list[Check]:
    """The fleet's own host `<fleet_host>.<domain>`, and `*.<domain>` asked as `<probe_label>.<domain>` (a
    random `doctor-...` label by default, so no real record answers in the wildcard's place).
    `edge_elsewhere`: the edge runs on a Nomad node, not necessarily this host: the names must resolve,
    but to which node is not judged."""
    if is_local_domain(domain):
        return [skipped("dns", f"[fleet] domain is {domain}: tenant hosts resolve to this machine only, with no "
                               "public DNS to check")]
    label = probe_label or f"doctor-{secrets.token_hex(4)}"
    return [
        judge(f"dns *.{domain}", f"{label}.{domain}", _ask(resolve, f"{label}.{domain}"), host, edge_elsewhere,
              record=f"*.{domain}"),
        judge(f"dns {fleet_host}.{domain}", f"{fleet_host}.{domain}", _ask(resolve, f"{fleet_host}.{domain}"), host,
              edge_elsewhere, record=f"{fleet_host}.{domain} (or *.{domain})"),
    ]


def _ask(resolve: Resolver, name: str) -> list[str] | OSError:
    try:
        return resolve(name)
    except OSError as e:  # TimeoutError and socket.gaierror are OSErrors
        return e


def judge(check: str, name: str, answer: list[str] | OSError, host: HostAddresses, edge_elsewhere: bool = False,
          record: str | None = None) -> Check:
    """One name's answer against this host's addresses. `record`: the DNS record a fix names."""
    record = record or name
    here = ", ".join(map(str, host.reachable)) or "this host's public address"
    add = f"add a DNS record {record} -> {here} (A for IPv4, AAAA for IPv6) at the domain's DNS provider"
    if isinstance(answer, socket.gaierror) and answer.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
        return failed(check, f"{name} does not resolve (no such name)", add)
    if isinstance(answer, TimeoutError):
        return failed(check, f"{name}: the resolver gave {answer}",
                      "check this host's resolver (/etc/resolv.conf) and that the domain's name servers answer")
    if isinstance(answer, OSError):
        return failed(check, f"{name} could not be resolved: {answer}", "check this host's resolver (/etc/resolv.conf)")
    addresses = {ipaddress.ip_address(a) for a in answer}
    shown = ", ".join(map(str, _sorted(addresses)))
    if not addresses:
        return failed(check, f"{name} resolves to no address", add)
    if all(a.is_loopback for a in addresses):
        return failed(check, f"{name} resolves to {shown}, a loopback address: no player elsewhere reaches it",
                      f"point {record} at {here} (check /etc/hosts too)")
    if edge_elsewhere:
        return passed(check, f"{name} resolves to {shown} (the edge runs on a Nomad node: which one is not "
                             "judged here)")
    foreign = _sorted(a for a in addresses if a not in host)
    if not foreign:
        return passed(check, f"{name} resolves to {shown} (this host)")
    elsewhere = ", ".join(map(str, foreign))
    if len(foreign) < len(addresses):
        return failed(check, f"{name} resolves to {shown}, and {elsewhere} is not this host: the players sent "
                             "there do not reach the fleet", f"remove the records of {name} that name {elsewhere}")
    if not host.public and not any(a.is_global for a in host.own):
        return warned(check, f"{name} resolves to {shown}, which no interface of this host has; this host has only "
                             "private addresses, so that may be a NAT forwarding to it (not told from here)",
                      f"if {elsewhere} forwards ports 80 and 443 here, say so: `foundry-fleet doctor "
                      f"--public-address {foreign[0]}`; else point {record} at this host")
    return failed(check, f"{name} resolves to {shown}, which is not this host (its addresses: {here})",
                  f"point {record} at {here}, or run `foundry-fleet doctor --public-address ADDRESS` if a NAT "
                  "forwards that address here")


def _sorted(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return sorted(addresses, key=lambda a: (a.version, a))
