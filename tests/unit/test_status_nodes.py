"""`status` shows the runtime's nodes: name, address, health, instances, free memory, and the home holding
the data of the instances placed there (where the runtime has homes)."""

from __future__ import annotations

import pytest

from foundry_fleet.cli.render import print_runtime
from foundry_fleet.runtime.base import NodeInfo
from foundry_fleet.services.runtime_report import RuntimeReport


def block(**more: object) -> dict:
    return {"driver": "nomad", "isolation": "chroot (nomad exec)", "limits": True, "needs_image": False,
            "health": [], "images": None, **more}


def test_each_node_is_one_line_with_its_health_instances_and_free_memory(capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [NodeInfo("node-a", "10.0.0.1", True, "ready", 3, 5120),
             NodeInfo("node-b", "10.0.0.2", False, "down", 1, None, storage="pool-b"),
             NodeInfo("this-host", "127.0.0.1", True, "ready", 0, 900, storage=None)]
    print_runtime(block(nodes=[n.to_dict() for n in nodes], nodes_problem=None))
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["  node node-a (10.0.0.1): healthy, 3 instances, free memory 5120 MB",
                         "  node node-b (10.0.0.2): down, 1 instance, free memory unknown, home pool-b",
                         "  node this-host (127.0.0.1): healthy, 0 instances, free memory 900 MB"]


def test_nodes_that_could_not_be_listed_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    print_runtime(block(nodes=None, nodes_problem="Nomad at http://10.0.0.9:4646 did not answer"))
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  nodes unknown: Nomad at http://10.0.0.9:4646 did not answer"]


def test_the_runtime_block_without_a_daemon_has_no_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    print_runtime(block(**RuntimeReport("local", None, None).to_dict(), nodes=None, nodes_problem=None))
    assert "node " not in capsys.readouterr().out


def test_the_node_report_says_why_nodes_are_unknown_instead_of_failing_status() -> None:
    import asyncio

    from foundry_fleet.domain.errors import ExternalFailure
    from foundry_fleet.services.runtime_report import node_report

    async def listed() -> list[NodeInfo]:
        return [NodeInfo("node-a", "10.0.0.1", True, "ready", 0, 100)]

    async def away() -> list[NodeInfo]:
        raise ExternalFailure("Nomad at http://10.0.0.9:4646 did not answer")

    assert asyncio.run(node_report(listed)) == ([{"name": "node-a", "address": "10.0.0.1", "healthy": True,
                                                  "status": "ready", "instances": 0, "free_memory_mb": 100,
                                                  "home": None}], None)
    assert asyncio.run(node_report(away)) == (None, "Nomad at http://10.0.0.9:4646 did not answer")
