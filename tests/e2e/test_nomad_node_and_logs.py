"""A fleet on the nomad runtime (the stand-in Nomad, two nodes), through its CLI: an instance placed on
the node asked for (an unknown one refused at create, naming the ready ones), its log followed while
it runs, and its host volumes released when it is deleted."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.fleets import NOMAD_TOKEN, make_fleet
from tests.support.harness import BIN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_an_instance_goes_to_the_node_asked_for_its_log_is_followed_and_deleting_it_releases_its_volumes(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path, runtime="nomad")
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        refused = h.cli("instance", "create", "ghost", "--release", "13.345", "--node", "node-x", check=False)
        assert refused.code != 0
        assert "the nomad runtime has no node named 'node-x'" in refused.err
        assert "the ready nodes are: node-a, node-b" in refused.err

        # node-a would be chosen (it has as much room and comes first): node-b is asked for.
        h.cli("instance", "create", "bob", "--release", "13.345", "--node", "node-b")
        bob = h.wait_state("bob", "running", timeout=60)
        assert bob["node"] == "node-b"
        assert any(line.split() == ["node", "node-b"] for line in h.cli("instance", "show", "bob").out.splitlines())
        node_b = h.nomad.node_id("node-b")
        assert h.nomad.jobs["fvtt-bob"]["Constraints"][0]["RTarget"] == node_b

        # Followed: the supervisor's health checks keep adding lines while the command runs.
        follower = subprocess.Popen([str(BIN), "--config", str(h.config), "instance", "logs", "bob", "-n", "1",
                                     "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert follower.stdout is not None
            lines, deadline = [], time.monotonic() + 60
            while len(lines) < 4 and time.monotonic() < deadline:
                lines.append(follower.stdout.readline())
            assert len(lines) == 4 and all("GET /-/api/status" in line for line in lines[1:]), lines
            assert follower.poll() is None  # still following
        finally:
            follower.terminate()
            follower.wait(10)

        with httpx.Client(base_url=h.nomad.url, headers={"X-Nomad-Token": NOMAD_TOKEN}) as nomad:
            def volumes() -> set[tuple[str, str]]:
                return {(v["Name"], v["NodeID"]) for v in nomad.get("/v1/volumes", params={"type": "host"}).json()}

            assert {("fvtt-bob-data", node_b), ("fvtt-bob-install", node_b)} <= volumes()
            h.cli("instance", "delete", "bob", "--yes")
            assert not {name for name, _ in volumes()} & {"fvtt-bob-data", "fvtt-bob-install"}
        assert "fvtt-bob" not in h.nomad.jobs
        events = [e for e in h.cli("events", "--json").json() if e["target"] == "bob"]
        assert any(e["action"] == "instance.released" and "on node node-b" in e["message"] for e in events), events
    finally:
        h.tear_down()
