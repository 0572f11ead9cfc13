"""Health, the on-demand TLS permission check, Discord sign-in for tenants' /backups/ (with the
forward_auth check Caddy asks before each request for them), /metrics for Prometheus, and the web panel.

Served on loopback only; Caddy publishes some of it at https://<fleet host>/ and calls the rest
directly (the TLS permission check only with the secret in its path: see services/tls_permission).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from foundry_fleet.domain.tenant_pages import Operator
from foundry_fleet.services.metrics.registry import Metrics
from foundry_fleet.services.tls_permission import PATH_PREFIX, is_caddy
from foundry_fleet.services.web_login import WebLogin
from foundry_fleet.services.wakes import Wakes
from foundry_fleet.web.auth import auth_routes
from foundry_fleet.web.metrics import metrics_routes
from foundry_fleet.web.panel.app import panel_routes
from foundry_fleet.web.panel.services import Panel
from foundry_fleet.web.wake import wake_routes


def not_found() -> Response:
    """Exactly what Starlette answers for a path it has no route for."""
    return PlainTextResponse("Not Found", status_code=404)


def create_web_app(known_hosts: Callable[[], set[str]], login: WebLogin | None = None,
                   tls_secret: str | None = None, wakes: Wakes | None = None,
                   metrics: Metrics | None = None, panel: Panel | None = None,
                   operator: Operator = Operator()) -> Starlette:
    """`login` None (or not configured in fleet.toml): nobody gets past the backups check.
    `tls_secret` None: nobody is told which hosts get a certificate on demand.
    `wakes` None: no wake handler (visits to instances that do not serve get 404 here).
    `metrics` None: no /metrics (with it, a scraper needs its token).
    `panel` None: no web panel (and no panel sign-in through the one Discord callback).
    `operator`: who hosts the fleet, on the pages tenants and players see."""

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def tls_permission(request: Request) -> Response:
        """Caddy asks before it gets a certificate on demand: only hosts the fleet serves get one.
        Anyone without the secret gets what a path that does not exist gets, whatever the domain."""
        if tls_secret is None or not is_caddy(tls_secret, request.path_params["secret"]):
            return not_found()
        domain = request.query_params.get("domain", "").strip().lower().rstrip(".")
        hosts = await asyncio.to_thread(known_hosts)
        if domain and domain in hosts:
            return PlainTextResponse("ok")
        return PlainTextResponse("not a host of this fleet", status_code=403)

    return Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route(PATH_PREFIX + "{secret}", tls_permission, methods=["GET"]),
        *auth_routes(login, panel.sessions if panel is not None else None, operator),
        *wake_routes(wakes, operator=operator),
        *metrics_routes(metrics),
        *(panel_routes(panel) if panel is not None else []),
    ])


def by_socket(unix_socket: str, over_unix: ASGIApp, over_tcp: ASGIApp) -> ASGIApp:
    """One server, two doors: requests that came in over `unix_socket` go to one app, the rest to
    the other. (A unix socket's scope["server"] is (path, None).)"""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if server and server[1] is None and server[0] == unix_socket:
            await over_unix(scope, receive, send)
        else:
            await over_tcp(scope, receive, send)

    return app
