"""Placement of a new instance on Nomad's nodes, from the stubs Nomad answers with."""

from __future__ import annotations

import pytest

from foundry_fleet.domain.errors import Conflict, NotFound
from foundry_fleet.runtime.nomad.placement import alloc_memory_mb, choose_node, free_memory_mb, node_healthy


def node(name: str, memory: int, reserved: int = 0, status: str = "ready", eligibility: str = "eligible",
         drain: bool = False) -> dict:
    return {"ID": f"id-{name}", "Name": name, "Status": status, "SchedulingEligibility": eligibility, "Drain": drain,
            "NodeResources": {"Memory": {"MemoryMB": memory}}, "ReservedResources": {"Memory": {"MemoryMB": reserved}}}


def alloc(node_name: str, job: str, memory: int | None = None, client: str = "running", desired: str = "run") -> dict:
    stub = {"ID": f"{job}-{node_name}-{client}", "NodeID": f"id-{node_name}", "JobID": job, "ClientStatus": client,
            "DesiredStatus": desired}
    if memory is not None:
        stub["AllocatedResources"] = {"Tasks": {"foundry": {"Memory": {"MemoryMB": memory}}}}
    return stub


def test_the_node_with_the_most_free_memory_wins_counting_reserved_memory_and_running_allocations() -> None:
    a, b = node("node-a", 8192, reserved=512), node("node-b", 8192)
    assert choose_node([a, b], [], {})["Name"] == "node-b"
    allocs = [alloc("node-b", "fvtt-alice", 1024)]  # b: 7168 free, a: 7680
    assert free_memory_mb(b, allocs, {}) == 7168 and free_memory_mb(a, allocs, {}) == 7680
    assert choose_node([a, b], allocs, {})["Name"] == "node-a"
    # Allocations that no longer hold memory (stopped, failed, lost, on their way out) do not count.
    gone = [alloc("node-a", "fvtt-x", 4096, client="complete"), alloc("node-a", "fvtt-y", 4096, client="lost"),
            alloc("node-a", "fvtt-z", 4096, desired="stop"), *allocs]
    assert choose_node([a, b], gone, {})["Name"] == "node-a"


def test_a_stub_without_resources_counts_what_the_fleet_registered_for_that_job() -> None:
    a, b = node("node-a", 4096), node("node-b", 4096)
    allocs = [alloc("node-a", "fvtt-alice")]
    assert alloc_memory_mb(allocs[0], {}) == 0 and alloc_memory_mb(allocs[0], {"fvtt-alice": 1000}) == 1000
    assert choose_node([a, b], allocs, {"fvtt-alice": 1000})["Name"] == "node-b"
    assert free_memory_mb({"ID": "x", "Name": "x"}, allocs, {}) is None  # a node that tells no memory


def test_equal_nodes_give_a_stable_choice_by_name() -> None:
    assert choose_node([node("node-b", 4096), node("node-a", 4096)], [], {})["Name"] == "node-a"


def test_only_ready_eligible_undrained_nodes_take_new_instances() -> None:
    down, ineligible, draining = node("a", 9000, status="down"), node("b", 9000, eligibility="ineligible"), \
        node("c", 9000, drain=True)
    ok = node("d", 1000)
    assert [node_healthy(n) for n in (down, ineligible, draining, ok)] == [False, False, False, True]
    assert choose_node([down, ineligible, draining, ok], [], {})["Name"] == "d"
    with pytest.raises(Conflict) as info:
        choose_node([down, ineligible, draining], [], {})
    assert info.value.message == ("no Nomad node can take a new instance (a is down; b is ineligible; c is draining)")
    with pytest.raises(Conflict) as none:
        choose_node([], [], {})
    assert "Nomad has no client nodes" in none.value.message


def test_a_named_node_is_taken_when_healthy_and_refused_with_the_reason_otherwise() -> None:
    a, b = node("node-a", 1000), node("node-b", 9000, status="down")
    assert choose_node([a, b], [], {}, wanted="node-a")["Name"] == "node-a"
    assert choose_node([a, b], [], {}, wanted="id-node-a")["Name"] == "node-a"
    with pytest.raises(Conflict) as down:
        choose_node([a, b], [], {}, wanted="node-b")
    assert down.value.message == "node node-b is down: no instance can be placed there"
    with pytest.raises(NotFound) as unknown:
        choose_node([a, b], [], {}, wanted="node-c")
    assert unknown.value.message == "Nomad has no node named 'node-c'" and unknown.value.hint == \
        "the nodes are: node-a, node-b"
