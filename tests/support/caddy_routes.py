"""Which route of the fleet's Caddy config handles a request, worked out the way Caddy does for the few
matchers and handlers the config uses (host, path, vars; subroute, map), so unit tests can say what a host
gets without starting Caddy. The end-to-end edge tests check the same against a real Caddy."""

from __future__ import annotations

import json


def _path_matches(paths: list[str] | None, path: str) -> bool:
    return paths is None or any(p == path or (p.endswith("/*") and path.startswith(p[:-1])) for p in paths)


def _first_route(routes: list[dict], host: str, path: str, variables: dict[str, str]) -> dict:
    """The first route Caddy would pick (first match wins; routes are terminal). Host matching ignores
    letter case, as Caddy's host matcher does; a `vars` matcher compares the map's outputs."""
    for route in routes:
        matchers = route.get("match")
        if not matchers:
            return route
        m = matchers[0]
        if "host" in m and host.lower() not in m["host"]:
            continue
        if any(variables.get(key, "") not in wanted for key, wanted in m.get("vars", {}).items()):
            continue
        if _path_matches(m.get("path"), path):
            return route
        # (a route that is not terminal, as the tenant map's, is left for the next when nothing in it matches)
    raise AssertionError(f"no route for {host}{path}")


def route_for(config: dict, host: str, path: str) -> dict:
    """The route that handles `host` + `path`, as Caddy would get to it: the tenant map (the first route,
    for every request) sets its placeholders, the tenant hosts' subroute is entered, and for `/-/` the way
    the map chose; the map's outputs are put in for its placeholders, as Caddy does per request."""
    routes = config["apps"]["http"]["servers"]["edge"]["routes"]
    variables: dict[str, str] = {}
    while routes and not routes[0].get("match") and routes[0]["handle"][0]["handler"] == "map":
        (tenant_map,) = routes[0]["handle"]
        outputs = next((m["outputs"] for m in tenant_map["mappings"] if m["input"] == host), tenant_map["defaults"])
        variables = dict(zip(tenant_map["destinations"], outputs, strict=True))
        routes = routes[1:]
    route = _first_route(routes, host, path, variables)
    if _is_tenant_hosts(route):
        inner = route["handle"][0]["routes"]
        route = _first_route(inner, host, path, variables)
        if _chooses_by_map(route):
            chosen = [r for r in route["handle"][0]["routes"] if _matches_vars(r, variables)]
            # Not terminal: where the map chose nothing, the request goes on to the routes after it.
            route = chosen[0] if chosen else _first_route(inner[inner.index(route) + 1:], host, path, variables)
    text = json.dumps(route)
    for placeholder, value in variables.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def _is_tenant_hosts(route: dict) -> bool:
    handle = route["handle"]
    return handle[0]["handler"] == "subroute" and any(
        ["/-", "/-/*"] == (r.get("match") or [{}])[0].get("path") for r in handle[0]["routes"])


def _chooses_by_map(route: dict) -> bool:
    handle = route["handle"]
    return handle[0]["handler"] == "subroute" and all("vars" in r["match"][0] for r in handle[0]["routes"])


def _matches_vars(route: dict, variables: dict[str, str]) -> bool:
    return all(variables.get(key, "") in wanted for key, wanted in route["match"][0]["vars"].items())
