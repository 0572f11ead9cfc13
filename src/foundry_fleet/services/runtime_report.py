"""The runtime block of `status`: which driver runs the instances, what it offers, and what the daemon
found on this host when it opened it (health lines). Without a daemon the health is unknown: the
lines come from probing the host, which is the daemon's business, not a read's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.runtime.base import Capabilities, Capability, NodeInfo


@dataclass(frozen=True)
class RuntimeReport:
    driver: str
    capabilities: Capabilities | None  # None: the driver could not even be built from the configuration
    health: list[Capability] | None  # None: unknown (the daemon is not running)

    def to_dict(self) -> dict[str, object]:
        caps = self.capabilities
        return {
            "driver": self.driver,
            "isolation": caps.isolation if caps else None,
            "limits": caps.limits if caps else None,
            "needs_image": caps.needs_image if caps else None,
            "multi_node": caps.multi_node if caps else None,
            "health": [{"name": c.name, "available": c.available, "detail": c.detail} for c in self.health]
            if self.health is not None else None,
        }


async def node_report(
    nodes: Callable[[], Awaitable[list[NodeInfo]]],
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The runtime's nodes for `status` (name, address, health, instances, free memory), or why they are
    unknown (e.g. Nomad away): the rest of `status` answers either way."""
    try:
        return [node.to_dict() for node in await nodes()], None
    except FleetError as e:
        return None, e.message
