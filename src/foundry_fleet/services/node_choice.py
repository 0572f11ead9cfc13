"""Placement by hand (`instance create --node NODE`): the node asked for is checked against what the
runtime says of its nodes at the moment of asking, so a typo or a node that is down is refused at
create, naming the nodes that would do, instead of failing at the instance's first start."""

from __future__ import annotations

from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound, Unsupported
from foundry_fleet.runtime.base import NodeInfo


def checked_node(wanted: str, nodes: list[NodeInfo], runtime: str, multi_node: bool) -> str:
    """`wanted` when the runtime can place an instance there now; else a clear refusal."""
    wanted = wanted.strip()
    if not wanted:
        raise InvalidInput("the node asked for is empty", "name a node as `foundry-fleet status` lists it, "
                                                          "or leave --node out to let the runtime choose")
    names = [n.name for n in nodes]
    if not multi_node:
        if wanted in names:
            return wanted
        here = names[0] if names else "this host"
        raise Unsupported(f"the {runtime} runtime runs every instance on this host ({here}): it cannot place "
                          f"one on {wanted!r}", "leave --node out; placing instances on other nodes needs the "
                                                "nomad runtime ([runtime] driver = \"nomad\")")
    ready = ", ".join(sorted(n.name for n in nodes if n.healthy)) or "none"
    match = next((n for n in nodes if n.name == wanted), None)
    if match is None:
        raise NotFound(f"the {runtime} runtime has no node named {wanted!r}", f"the ready nodes are: {ready}")
    if not match.healthy:
        raise Conflict(f"node {wanted} is {match.status}: no new instance can be placed there now",
                       f"the ready nodes are: {ready}")
    return wanted


def checked_move(name: str, wanted: str, source: str | None, nodes: list[NodeInfo], runtime: str,
                 multi_node: bool, sends_data: bool = False) -> str:
    """The node to move `name` to, `source` the node holding its data now (None: none yet), when the
    runtime can take it there now; else a clear refusal.

    Between nodes that name the same storage its data follows by re-pinning alone; between nodes that
    name different homes ([[nomad.homes]]) the move sends it (services/moves.py), when the fleet can
    (`sends_data`: it has homes). A node whose storage the runtime cannot tell (None) is refused: whether
    its data could follow is unknown."""
    if not multi_node:
        raise Unsupported(f"the {runtime} runtime runs every instance on this host: there is no other node to "
                          f"move {name} to", "moving instances between nodes needs the nomad runtime "
                                             "([runtime] driver = \"nomad\")")
    target = checked_node(wanted, nodes, runtime, multi_node)
    if source is None or source == target:
        return target
    held = next((n for n in nodes if n.name == source), None)
    if held is None:
        raise Conflict(f"the data of {name} is on node {source}, which the {runtime} runtime no longer lists: "
                       f"whether it can follow to {target} cannot be told", "bring that node back first")
    storage = next(n.storage for n in nodes if n.name == target)
    if held.storage is None or storage is None:
        unknown = source if held.storage is None else target
        raise Unsupported(f"moving {name} from node {source} to node {target} cannot be done: where node {unknown} "
                          "keeps instances' data is not known to the fleet",
                          "list the node in a [[nomad.homes]] of fleet.toml (or leave it in none: it then shares "
                          "the fleet root), then move again")
    if held.storage != storage and not sends_data:
        raise Unsupported(f"moving {name} from node {source} to node {target} would need its data sent from one "
                          "node's storage to the other's, and this fleet has no [[nomad.homes]] to send it between",
                          "move it to a node that sees the same fleet root ([nomad] node_root), or describe each "
                          "node's storage as a [[nomad.homes]] in fleet.toml")
    return target
