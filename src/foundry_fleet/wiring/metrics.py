"""The daemon's /metrics: its registry, the fleet's figures in it, and the token-free door on `[metrics] listen`."""

from __future__ import annotations

import asyncio
import errno
import socket
import time

import uvicorn

from foundry_fleet import __version__
from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.certificates import CertificateWatch
from foundry_fleet.services.metrics.fleet_collector import FleetCollector, Players, ResourceSamples
from foundry_fleet.services.metrics.instance_figures import InstanceFigureReads
from foundry_fleet.services.metrics.registry import Metrics
from foundry_fleet.services.metrics.scrape_token import load_or_create_token, token_path
from foundry_fleet.web.metrics import create_metrics_app
from foundry_fleet.wiring.services import FleetServices


def make_metrics(config: FleetConfig) -> Metrics:
    """Made at the daemon's start, so the token file is there for the operator from the first start on."""
    return Metrics(load_or_create_token(token_path(config)), __version__, time.time())


def fleet_collector(services: FleetServices, players: Players, backups: Backups, certificates: CertificateWatch,
                    samples: ResourceSamples | None = None) -> FleetCollector:
    return FleetCollector(InstanceFigureReads(services.sessions).all, players,
                          backups.figures, certificates, samples)


class MetricsDoor:
    """/metrics without a token on the `[metrics] listen` address, by a server of its own (the fleet's web
    app stays on loopback, behind the edge). Nothing when no address is set."""

    def __init__(self, address: tuple[str, int] | None, metrics: Metrics) -> None:
        self._sock = _bind(address) if address is not None else None
        self._server = uvicorn.Server(uvicorn.Config(create_metrics_app(metrics), log_level="warning",
                                                     lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock])) if self._sock else None

    async def close(self) -> None:
        if self._task is None or self._sock is None:
            return
        self._server.should_exit = True
        await self._task
        self._sock.close()


def _bind(address: tuple[str, int]) -> socket.socket:
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        why = "no interface of this host has that address" if e.errno == errno.EADDRNOTAVAIL else e.strerror
        raise Conflict(f"[metrics] listen {shown} cannot be used: {why}",
                       "set [metrics] listen in fleet.toml to a free port on one of this host's private "
                       "addresses, or to \"\" for none") from None
    sock.listen(64)
    return sock
