"""Which home each Nomad node keeps instances' data in: what decides where an instance may run and
whether `instance move` sends its data.

A home is a storage of its own ([[nomad.homes]] in fleet.toml: a ZFS pool, or a directory tree) that
the nodes it names see; every node named by none shares the fleet's own home, "fleet" (the fleet root,
as [nomad] node_root). Nodes of one home see the same files, so an instance moves between them by
re-pinning its job alone; to a node of another home its data is sent first (the operations' move).
"""

from __future__ import annotations

from collections.abc import Mapping

from foundry_fleet.domain.homes import MAIN_HOME


def storage_of(node_name: str, node_homes: Mapping[str, str]) -> str:
    """The home a node keeps instances' data in; `node_homes`: node name -> home name, as the
    configuration's homes list their nodes (a node in none shares the fleet's own home)."""
    return node_homes.get(node_name, MAIN_HOME)
