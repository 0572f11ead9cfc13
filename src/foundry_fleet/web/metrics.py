"""GET /metrics: the fleet in Prometheus' text format.

On the fleet's web app (published at https://<fleet host>/metrics) a scraper sends the token
(`Authorization: Bearer ...`); on the `[metrics] listen` address, which config keeps to loopback and
private addresses, it does not.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from foundry_fleet.services.metrics.registry import Metrics


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def metrics_routes(metrics: Metrics | None, token_required: bool = True) -> list[Route]:
    """`metrics` None: no /metrics (404, as any path the app does not have)."""
    if metrics is None:
        return []

    async def scrape(request: Request) -> Response:
        if token_required:
            token = _bearer(request)
            if token is None or not metrics.admits(token):
                # The same answer for a missing and a wrong token, and never the token sent.
                return PlainTextResponse("a valid bearer token is needed (see README, Metrics)\n", status_code=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="foundry-fleet metrics"',
                                                  "Cache-Control": "no-store"})
        body = await asyncio.to_thread(metrics.scrape)
        return Response(body, headers={"Content-Type": metrics.content_type, "Cache-Control": "no-store"})

    return [Route("/metrics", scrape, methods=["GET"])]


def create_metrics_app(metrics: Metrics) -> Starlette:
    """The token-free door for `[metrics] listen`: /metrics and nothing else."""
    return Starlette(routes=metrics_routes(metrics, token_required=False))
