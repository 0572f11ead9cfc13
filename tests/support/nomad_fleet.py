"""What a test of a fleet on the nomad runtime reads: the allocations the stand-in Nomad holds of an
instance's job, what players get through the edge, and the instance's events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.edge_client import https, local_ca
from tests.support.harness import FleetHarness, wait_until

LIVE = ("pending", "running")  # an allocation's ClientStatus while it is not over


def allocations(fleet: FleetHarness, name: str) -> list[dict[str, Any]]:
    """The allocations Nomad holds of the instance's job, oldest first."""
    found = [a for a in fleet.nomad.allocations.values() if a["JobID"] == f"fvtt-{name}"]
    return sorted(found, key=lambda a: a["CreateIndex"])


def live_allocation(fleet: FleetHarness, name: str) -> dict[str, Any]:
    """The instance's one running allocation (fails if it has none running, or more than one not over)."""
    live = [a for a in allocations(fleet, name) if a["ClientStatus"] in LIVE]
    assert [a["ClientStatus"] for a in live] == ["running"], f"{name}'s live allocations: {live}"
    return live[0]


def none_live(fleet: FleetHarness, name: str) -> bool:
    return all(a["ClientStatus"] not in LIVE for a in allocations(fleet, name))


def edge(fleet: FleetHarness) -> tuple[int, Path]:
    return fleet.settings().edge.https_port, local_ca(fleet.root)


def version_through_the_edge(fleet: FleetHarness, name: str) -> str | None:
    """The release the instance says it runs, asked through Caddy; None while the edge does not pass the
    request on."""
    port, ca = edge(fleet)
    try:
        r = https(port, f"{name}.localhost", "/-/api/status", ca)
    except httpx.HTTPError:
        return None
    return r.json()["version"] if r.status_code == 200 else None


def served_through_the_edge(fleet: FleetHarness, name: str, version: str = "13.345", timeout: float = 10) -> None:
    wait_until(lambda: version_through_the_edge(fleet, name) == version, timeout,
               f"the edge to serve {name} {version}")


def actions(fleet: FleetHarness, name: str) -> list[str]:
    return [e["action"] for e in fleet.cli("events", "--instance", name, "--json").json()]
