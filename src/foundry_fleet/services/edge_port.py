"""The edge as the services and the control API see it, whatever drives it (today Caddy: edge/driver.py)."""

from __future__ import annotations

from typing import Any, Protocol

from foundry_fleet.edge.driver import CertificateState, EdgeStatus


class FleetEdge(Protocol):
    async def sync(self) -> None:
        """Bring the edge up to date and return once it serves the new state."""

    def status(self) -> EdgeStatus: ...

    def certificate(self, host: str) -> CertificateState:
        """What `host` serves right now, asked over TLS like a browser."""

    def config(self) -> dict[str, Any]:
        """The configuration the edge serves."""
