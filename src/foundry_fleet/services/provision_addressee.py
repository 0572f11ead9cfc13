"""Which node a fvtt-provision dispatch is for, read without loading the provisioning itself.

Every node runs every dispatch of the sysbatch job and all but one only answer "not this node", so that
answer reads the payload and nothing else: no fleet.toml, no storage driver, no SQLAlchemy or pydantic
(services/node_provisioning.py is imported by the one node that acts).
"""

from __future__ import annotations

from pathlib import Path

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.runtime.nomad.provision_payload import MAX_PAYLOAD_BYTES, ProvisionPayload


def payload_for_another_node(path: Path, node_id: str) -> ProvisionPayload | None:
    """The payload when it is valid and names another node than `node_id`. None otherwise: a payload for
    this node is acted on, and an unreadable or invalid one is read again by the provisioning
    (node_provisioning.read_payload), which says what is wrong with it."""
    try:
        with open(path, "rb") as f:
            wanted = ProvisionPayload.from_bytes(f.read(MAX_PAYLOAD_BYTES + 1))
    except (OSError, FleetError):
        return None
    return wanted if wanted.node != node_id else None
