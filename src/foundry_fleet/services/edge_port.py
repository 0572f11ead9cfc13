"""The edge as the services and the control API see it, whatever drives it (today Caddy: edge/driver.py)."""

from __future__ import annotations

from typing import Any, Protocol

from foundry_fleet.edge.driver import CertificateState, EdgeStatus


class EdgeSync(Protocol):
    """The edge as the operations see it: bring it up to date and wait until it serves the new state."""

    async def sync(self) -> None: ...


class FleetEdge(EdgeSync, Protocol):
    """The edge as the control API sees it: also what it serves and how it is doing."""

    def status(self) -> EdgeStatus: ...

    def certificate(self, host: str) -> CertificateState:
        """What `host` serves right now, asked over TLS like a browser."""

    def config(self) -> dict[str, Any]:
        """The configuration the edge serves."""
