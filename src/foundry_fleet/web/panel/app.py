"""The panel's routes, on the fleet's web app (the edge publishes them on the fleet host only)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from foundry_fleet.domain.web_paths import PANEL_STATIC
from foundry_fleet.web.panel.admin import AdminPages
from foundry_fleet.web.panel.instances import InstancePages
from foundry_fleet.web.panel.live import LiveStreams
from foundry_fleet.web.panel.login import login_routes
from foundry_fleet.web.panel.render import STATIC_DIR
from foundry_fleet.web.panel.services import Panel


class _Static(StaticFiles):
    """The panel's own files; cached for an hour, then revalidated by their ETag."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_cached(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"cache-control", b"public, max-age=3600"),
                                      (b"x-content-type-options", b"nosniff")]
            await send(message)

        await super().__call__(scope, receive, send_cached)


def panel_routes(panel: Panel) -> list[BaseRoute]:
    return [
        *login_routes(panel.sessions),
        *InstancePages(panel).routes(),
        *AdminPages(panel).routes(),
        *LiveStreams(panel).routes(),
        Mount(PANEL_STATIC, app=_Static(directory=STATIC_DIR), name="panel-static"),
    ]
