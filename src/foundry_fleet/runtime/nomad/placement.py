"""Where a new instance goes: the ready, eligible node with the most free memory (or the one named).

Pure: it reads Nomad's node stubs (`/v1/nodes?resources=true`) and allocation stubs as they are, so
the same rules give `status` its free memory and placement its choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from foundry_fleet.domain.errors import Conflict, NotFound

ACTIVE_CLIENT_STATUSES = ("pending", "running")


def node_healthy(node: Mapping[str, Any]) -> bool:
    """Nomad would place a new allocation there: ready, eligible and not draining."""
    return (node.get("Status") == "ready" and node.get("SchedulingEligibility", "eligible") == "eligible"
            and not node.get("Drain", False))


def alloc_active(alloc: Mapping[str, Any]) -> bool:
    """The allocation holds its node's resources (it runs or is about to)."""
    return alloc.get("DesiredStatus", "run") == "run" and alloc.get("ClientStatus") in ACTIVE_CLIENT_STATUSES


def alloc_memory_mb(alloc: Mapping[str, Any], job_memory: Mapping[str, int]) -> int:
    """The memory an allocation holds: its AllocatedResources when the stub carries them, else what
    the job asked for (the fleet knows its own jobs' MemoryMB), else nothing known."""
    tasks = ((alloc.get("AllocatedResources") or {}).get("Tasks") or {})
    if tasks:
        return sum(int(((t or {}).get("Memory") or {}).get("MemoryMB") or 0) for t in tasks.values())
    return int(job_memory.get(str(alloc.get("JobID", "")), 0))


def node_memory_mb(node: Mapping[str, Any]) -> int | None:
    total = ((node.get("NodeResources") or {}).get("Memory") or {}).get("MemoryMB")
    if not isinstance(total, int):
        return None
    reserved = ((node.get("ReservedResources") or {}).get("Memory") or {}).get("MemoryMB") or 0
    return total - int(reserved)


def free_memory_mb(node: Mapping[str, Any], allocs: Iterable[Mapping[str, Any]],
                   job_memory: Mapping[str, int]) -> int | None:
    """The node's memory less what Nomad reserves there and what its active allocations hold."""
    usable = node_memory_mb(node)
    if usable is None:
        return None
    held = sum(alloc_memory_mb(a, job_memory) for a in allocs if a.get("NodeID") == node.get("ID") and alloc_active(a))
    return usable - held


def choose_node(nodes: Iterable[Mapping[str, Any]], allocs: Iterable[Mapping[str, Any]],
                job_memory: Mapping[str, int], wanted: str | None = None) -> Mapping[str, Any]:
    """The node a new instance's data and job go to: `wanted` (a node's name or id) when given and
    healthy, else the healthy node with the most free memory (ties: by name, so the choice is stable)."""
    nodes, allocs = list(nodes), list(allocs)
    if wanted is not None:
        match = [n for n in nodes if wanted in (n.get("Name"), n.get("ID"))]
        if not match:
            known = ", ".join(sorted(str(n.get("Name")) for n in nodes)) or "none"
            raise NotFound(f"Nomad has no node named {wanted!r}", f"the nodes are: {known}")
        if not node_healthy(match[0]):
            raise Conflict(f"node {wanted} is {node_condition(match[0])}: no instance can be placed there",
                           "choose another node, or make this one ready and eligible again")
        return match[0]
    healthy = [n for n in nodes if node_healthy(n)]
    if not healthy:
        seen = "; ".join(f"{n.get('Name')} is {node_condition(n)}" for n in nodes) or "Nomad has no client nodes"
        raise Conflict(f"no Nomad node can take a new instance ({seen})",
                       "start a Nomad client, or mark a node eligible (nomad node eligibility -enable)")
    return min(healthy, key=lambda n: (-(free_memory_mb(n, allocs, job_memory) or 0), str(n.get("Name"))))


def node_condition(node: Mapping[str, Any]) -> str:
    """Why a node takes no new allocation, in a word or two (its status, draining, ineligible)."""
    if node.get("Status") != "ready":
        return str(node.get("Status") or "unknown")
    if node.get("Drain"):
        return "draining"
    return str(node.get("SchedulingEligibility") or "ineligible")

