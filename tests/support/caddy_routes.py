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
    """The route that handles `host` + `path`, as Caddy would get to it: through the tenant hosts' subroute,
    and for `/-/` through the tenant map (its outputs put in for its placeholders, as Caddy does per request)."""
    route = _first_route(config["apps"]["http"]["servers"]["edge"]["routes"], host, path, {})
    handle = route["handle"]
    if handle[0]["handler"] == "subroute" and any(r["handle"][0]["handler"] == "map" for r in handle[0]["routes"]):
        route = _first_route(handle[0]["routes"], host, path, {})  # the tenant hosts' routes
        handle = route["handle"]
    if handle[0]["handler"] == "map":
        tenant_map, subroute = handle
        mapping = next((m["outputs"] for m in tenant_map["mappings"] if m["input"] == host), tenant_map["defaults"])
        variables = dict(zip(tenant_map["destinations"], mapping, strict=True))
        chosen = json.dumps(_first_route(subroute["routes"], host, path, variables))
        for placeholder, value in variables.items():
            chosen = chosen.replace(placeholder, value)
        route = json.loads(chosen)
    return route
