"""Which route of the fleet's Caddy config handles a request, worked out the way Caddy does for the few
matchers and handlers the config uses (host, path, vars, not; subroute, map), so unit tests can say what a
host gets without starting Caddy. The end-to-end edge tests check the same against a real Caddy."""

from __future__ import annotations

import json


def _path_matches(paths: list[str] | None, path: str) -> bool:
    return paths is None or any(p == path or (p.endswith("/*") and path.startswith(p[:-1])) for p in paths)


def _matches(matcher: dict, host: str, path: str, variables: dict[str, str]) -> bool:
    """One matcher set (all of its parts must match). Host matching ignores letter case, as Caddy's host
    matcher does; a `vars` matcher compares what the map set."""
    if "host" in matcher and host.lower() not in matcher["host"]:
        return False
    if any(variables.get(key, "") not in wanted for key, wanted in matcher.get("vars", {}).items()):
        return False
    if any(_matches(inner, host, path, variables) for inner in matcher.get("not", [])):
        return False
    return _path_matches(matcher.get("path"), path)


def _first_route(routes: list[dict], host: str, path: str, variables: dict[str, str]) -> dict:
    """The first route Caddy would pick (first match wins; the config's routes are terminal)."""
    for route in routes:
        if not route.get("match") or any(_matches(m, host, path, variables) for m in route["match"]):
            return route
    raise AssertionError(f"no route for {host}{path}")


def _chooses_by_map(route: dict) -> bool:
    """A route whose subroute picks by what the map set (the tenant hosts', and their `/-/`)."""
    handle = route["handle"]
    if handle[0]["handler"] != "subroute":
        return False
    tenant_hosts = any("not" in m for m in route.get("match", []))  # "a host the map holds"
    return tenant_hosts or any("vars" in json.dumps(r.get("match", [])) for r in handle[0]["routes"])


def route_for(config: dict, host: str, path: str) -> dict:
    """The route that handles `host` + `path`, as Caddy would get to it: the tenant map (the first route,
    for every request) sets its placeholders, the subroutes that pick by them are entered, and the map's
    outputs are put in for its placeholders, as Caddy does per request."""
    routes = config["apps"]["http"]["servers"]["edge"]["routes"]
    variables: dict[str, str] = {}
    while routes and not routes[0].get("match") and routes[0]["handle"][0]["handler"] == "map":
        (tenant_map,) = routes[0]["handle"]
        outputs = next((m["outputs"] for m in tenant_map["mappings"] if m["input"] == host), tenant_map["defaults"])
        variables.update(zip(tenant_map["destinations"], outputs, strict=True))
        routes = routes[1:]
    route = _first_route(routes, host, path, variables)
    while _chooses_by_map(route):
        route = _first_route(route["handle"][0]["routes"], host, path, variables)
    text = json.dumps(route)
    for placeholder, value in variables.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def served_hosts(config: dict | None) -> set[str]:
    """Every host the edge's HTTPS server has a route for: the tenant map's, and those of host matchers."""
    routes = (config or {}).get("apps", {}).get("http", {}).get("servers", {}).get("edge", {}).get("routes", [])
    hosts = {h for r in routes for m in r.get("match", []) for h in m.get("host", [])}
    for route in routes:
        for handler in route.get("handle", []):
            if handler.get("handler") == "map":
                hosts |= {m["input"] for m in handler["mappings"]}
    return hosts
