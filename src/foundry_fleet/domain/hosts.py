"""Hostnames the edge serves: one spelling per host, never an IP address, and each host served for one
instance only (pure: no I/O).

A host is compared the way Caddy's host matcher and a browser compare it: case-insensitively, without
a trailing dot, and internationalised names in their ASCII (punycode) form. Anything a browser would
read as an IP address is refused: besides the usual forms, WHATWG URLs read every host whose last
label is a number (`127.1`, `0x7f.1`, `2130706433`) as IPv4.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

import idna

from foundry_fleet.domain.errors import InvalidInput

MAX_HOST = 253
_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# The WHATWG URL standard's "ends in a number": decimal digits, or 0x and hex digits (even none).
_NUMBER = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


def normalise_hostname(text: str, what: str = "hostname", min_labels: int = 1, max_length: int = MAX_HOST) -> str:
    """`text` as the one spelling the fleet stores and compares (lowercase ASCII, no trailing dot);
    InvalidInput saying why if it is not a DNS name a browser would treat as one."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{what} is empty", "give a hostname such as games.example.org")
    raw = text.strip()
    shown = raw[:80]
    if raw.startswith("[") or ":" in raw or _is_ip(raw):
        raise InvalidInput(f"{what} {shown!r} is an IP address (or has a port), not a hostname",
                           "give a DNS name that points at this server, such as games.example.org")
    host = raw[:-1] if raw.endswith(".") else raw
    if not host.isascii():
        try:
            # UTS 46, as browsers map what is typed: case, full-width forms, then punycode.
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise InvalidInput(f"{what} {shown!r} is not a valid internationalised name: {e}",
                               "check the spelling, or give its punycode (xn--) form") from None
    host = host.lower()
    if _is_ip(host):
        raise InvalidInput(f"{what} {shown!r} is an IP address, not a hostname",
                           "give a DNS name that points at this server, such as games.example.org")
    labels = host.split(".")
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise InvalidInput(f"{what} {shown!r} has an invalid label {label[:70]!r}",
                               "use letters, digits and dashes between the dots (not starting or ending with a dash)")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise InvalidInput(f"{what} {shown!r} has an invalid punycode label {label!r}",
                                   "give the name as it is spelled, or its correct xn-- form") from None
    if _NUMBER.match(labels[-1]):
        raise InvalidInput(f"{what} {shown!r} ends in a number, so browsers read it as an IP address",
                           "give a DNS name such as games.example.org")
    if len(host) > max_length:
        raise InvalidInput(f"{what} {shown!r} is {len(host)} characters long; at most {max_length} fit",
                           "choose a shorter name")
    if len(labels) < min_labels:
        raise InvalidInput(f"{what} {shown!r} is not a full hostname", "give e.g. games.example.org")
    return host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def validate_host_label(text: str, what: str = "host label") -> str:
    """One DNS label (e.g. the fleet's own `fleet` in `fleet.<domain>`), lowercased."""
    label = text.strip().lower() if isinstance(text, str) else ""
    if not _LDH_LABEL.match(label):
        raise InvalidInput(f"{what} {str(text)[:70]!r} is not a DNS label",
                           "use 1-63 letters, digits and dashes (no dots, not starting or ending with a dash)")
    return label


# --- who serves which host ---------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceHosts:
    """The hosts one instance asks for: its own `<name>.<domain>` and its extra hostnames, as stored.

    `age` orders instances (older first: e.g. creation time and row id)."""

    name: str
    own: str
    extra: tuple[str, ...]
    age: tuple[float, int]


@dataclass(frozen=True)
class HostConflict:
    """A host one instance asks for but is not served for it."""

    host: str
    instance: str  # whose claim is not served
    holder: str | None  # who is served that host: an instance, or None for the fleet itself / nobody
    why: str

    def describe(self) -> str:
        return f"{self.host} is not served for {self.instance}: {self.why}"


def assign_hosts(fleet_host: str, instances: Iterable[InstanceHosts]) -> tuple[dict[str, tuple[str, ...]], list[HostConflict]]:
    """Which hosts the edge serves for each instance, and the claims it does not serve.

    New claims are refused when they collide (see services/hostnames.py); this settles a state database that holds
    collisions from before that check, so the edge never gets a config with a host twice. The rules,
    the same whatever order the instances come in: the fleet keeps its own host; an instance's own
    `<name>.<domain>` (the address its tenant was given) wins over another's extra hostname; between
    extra hostnames the older instance keeps it. Hostnames that are not valid are dropped.
    """
    ordered = sorted(instances, key=lambda i: (i.age, i.name))
    holder: dict[str, str | None] = {fleet_host: None}
    kinds: dict[str, str] = {fleet_host: "the fleet's own host"}
    served: dict[str, list[str]] = {i.name: [] for i in ordered}
    conflicts: list[HostConflict] = []

    def claim(inst: str, host: str, kind: str) -> None:
        if host in holder:
            if holder[host] == inst:
                return  # listed twice by the same instance: serve it once
            owner = holder[host]
            why = f"it is {kinds[host]}" if owner is None else f"it is {kinds[host]} of {owner}"
            conflicts.append(HostConflict(host, inst, owner, why))
            return
        holder[host], kinds[host] = inst, kind
        served[inst].append(host)

    for inst in ordered:
        claim(inst.name, comparable_host(inst.own), "the own host")
    for inst in ordered:
        for raw in inst.extra:
            try:
                host = normalise_hostname(str(raw), "extra hostname", min_labels=2)
            except InvalidInput as e:
                conflicts.append(HostConflict(str(raw), inst.name, None, e.message))
                continue
            claim(inst.name, host, "an extra hostname")
    return {name: tuple(hosts) for name, hosts in served.items()}, conflicts


def comparable_host(host: str) -> str:
    """A host as stored or as a request names it, in the form hosts are compared in (no validation)."""
    return host.strip().lower().removesuffix(".")


# Names no public CA certifies (certmagic's SubjectIsInternal): Caddy gives them certificates from its
# local CA whatever the TLS mode, and so does the fleet's config.
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")


def is_internal_name(host: str) -> bool:
    """A name that only a local CA can certify (localhost and the like)."""
    name = comparable_host(host)
    return name == "localhost" or name.endswith(_INTERNAL_SUFFIXES)
