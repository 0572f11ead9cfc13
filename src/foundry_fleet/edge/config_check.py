"""What the fleet checks in a Caddy config before sending it (pure: no I/O).

Caddy refuses a whole config for one host repeated in a matcher, and then keeps the old one for every
tenant; a placeholder in a host matcher or an empty host list would match hosts the fleet does not
serve; one host in two routes that match alike, or twice in the tenant map, is served by whichever
comes first. Each is a bug upstream of the builder (the fleet refuses colliding hostnames): found here,
it is reported and the config is not sent, instead of being found by Caddy, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def config_problems(config: dict[str, Any]) -> list[str]:
    """Everything wrong with `config` that this check knows of; empty when it may be sent."""
    problems: list[str] = []
    servers = config.get("apps", {}).get("http", {}).get("servers", {})
    for server_name, server in servers.items():
        problems += _route_problems(f"server {server_name}", server.get("routes", []))
    problems += _tls_problems(config.get("apps", {}).get("tls", {}))
    return problems


def _route_problems(where: str, routes: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    # (what the route matches besides hosts) -> host -> the route that has it first
    seen: dict[str, dict[str, int]] = {}
    for index, route in enumerate(routes):
        for matcher in route.get("match") or []:
            if "host" not in matcher:
                continue
            hosts = matcher["host"]
            if not hosts:
                problems.append(f"{where}, route {index}: a host matcher without hosts matches every host")
            rest = json.dumps({k: v for k, v in matcher.items() if k != "host"}, sort_keys=True)
            named, said = _names(hosts, f"{where}, route {index}", "host", "is repeated in one matcher")
            problems += said
            for host, key in named:
                first = seen.setdefault(rest, {}).setdefault(key, index)
                if first != index:
                    problems.append(f"{where}: host {host} is in route {first} and route {index}, which match alike")
        for handler in route.get("handle") or []:
            if handler.get("handler") == "map":
                problems += _map_problems(f"{where}, route {index}", handler)
        for sub_where, sub_routes in _subroutes(f"{where}, route {index}", route):
            problems += _route_problems(sub_where, sub_routes)
    return problems


def _map_problems(where: str, handler: dict[str, Any]) -> list[str]:
    """The tenant map: Caddy refuses an input given twice; the same host in other letter case is the same
    name to DNS and to browsers (which send it in lower case): an entry never used."""
    inputs = [mapping.get("input") for mapping in handler.get("mappings") or []]
    return _names(inputs, where, "host", "is mapped twice")[1]


def _names(names: list[Any], where: str, what: str, twice: str,
           keys: set[str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """The hostnames among `names` with the form they are compared in, and what is wrong: a placeholder
    where a hostname should be, or one name given twice (as browsers compare names; `keys`: those seen
    before, when the names go on from an earlier list)."""
    named: list[tuple[str, str]] = []
    problems: list[str] = []
    keys = set() if keys is None else keys
    for name in names:
        if not isinstance(name, str) or "{" in name or "}" in name:
            problems.append(f"{where}: {what} {name!r} is a placeholder, not a hostname")
            continue
        key = _comparable(name)
        if key in keys:
            problems.append(f"{where}: {what} {name} {twice}")
        keys.add(key)
        named.append((name, key))
    return named, problems


def _subroutes(where: str, route: dict[str, Any]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for handler in route.get("handle") or []:
        if handler.get("handler") == "subroute":
            yield f"{where} (subroute)", handler.get("routes", [])


def _tls_problems(tls: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    subjects: set[str] = set()  # across the policies: a name has one policy
    for index, policy in enumerate(tls.get("automation", {}).get("policies", [])):
        problems += _names(policy.get("subjects") or [], f"TLS policy {index}", "subject", "is certified twice",
                           subjects)[1]
    return problems


def _comparable(host: str) -> str:
    return host.strip().lower().removesuffix(".")
