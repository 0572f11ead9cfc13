"""The runtime commands on real fleets: one made on podman, without a daemon (`init --runtime podman`,
the Node.js image made ahead of time by `runtime image` through the fleet's own podman service, which
it stops again, and not made twice; `status` saying what it can without the daemon; switching back),
and a running local fleet moved to podman, whose instance then runs in a container."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.services.init import init_fleet
from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness

pytestmark = pytest.mark.e2e
needs_podman = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("podman") is None,
                                  reason="needs root and podman (make test installs it)")


@needs_podman
def test_a_podman_fleet_makes_its_images_ahead_of_time_once_and_switches_back(
    tmp_path: Path, release_zips: dict[str, Path]
) -> None:
    fleet = FleetHarness(root=tmp_path / "fleet", config=init_fleet(tmp_path / "fleet", runtime="podman"))
    config = load_config(fleet.config)
    assert config.runtime.driver == "podman"
    fleet.cli("release", "add", str(release_zips["node"]))

    made = fleet.cli("runtime", "image", "--json").json()
    assert made["driver"] == "podman" and len(made["images"]) == 1, made
    image = made["images"][0]
    assert (image["generation"], image["releases"], image["present"]) == (13, ["13.345"], True), image
    assert image["image"].startswith("localhost/foundry-fleet/node:")
    again = fleet.cli("runtime", "image", "--json").json()["images"][0]
    assert image["source"] in ("built", "cached", "configured", "pulled")  # cached: another fleet built it
    assert (again["image"], again["present"]) == (image["image"], True)
    assert again["source"] in ("cached", "configured"), again  # reused: nothing built or pulled again

    # The service was started for the command and stopped after it: a read never starts one.
    run = config.paths.run / "podman"
    assert not (run / "podman.pid").exists()
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and f"unix://{run}".encode() in _cmdline(p)]
    status = fleet.cli("status", "--json").json()["runtime"]
    assert (status["driver"], status["isolation"], status["needs_image"], status["health"]) == \
        ("podman", "container", True, None)
    assert status["images"][0]["present"] is None and "does not answer" in status["images"][0]["detail"]
    shown = fleet.cli("status").out
    assert "runtime: podman (isolation container" in shown and "image unknown for Foundry v13" in shown

    switched = fleet.cli("runtime", "set", "local", "--json").json()
    assert (switched["previous"], switched["driver"], switched["changed"]) == ("podman", "local", True)
    assert fleet.cli("runtime", "image").out.startswith("the local runtime runs no image")
    events = fleet.cli("events", "--json").json()
    assert [(e["action"], e["outcome"], e["message"]) for e in events if e["action"] == "runtime.switch"] == \
        [("runtime.switch", "ok", "podman -> local")]


@needs_podman
def test_a_local_fleet_stopped_moves_to_podman_and_its_instance_runs_in_a_container(
    tmp_path: Path, release_zips: dict[str, Path]
) -> None:
    fleet = make_fleet(tmp_path)
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.up()
        fleet.cli("instance", "create", "sam", "--release", "13.345")
        assert fleet.instance("sam")["state"] == "running" and fleet.containers() == []
        fleet.stop_daemons()  # which stops sam, still wanted running
        assert fleet.instance("sam")["state"] == "stopped"

        switched = fleet.cli("runtime", "set", "podman", "--json").json()
        assert (switched["previous"], switched["driver"], switched["changed"]) == ("local", "podman", True)
        fleet.up()
        sam = fleet.wait_state("sam", "running")
        assert [c.name for c in fleet.containers("sam")] == [f"foundry-fleet-{fleet.fleet_id}-sam"]
        assert fleet.get(sam["port"], "/-/api/status").status_code == 200
        runtime = fleet.cli("status", "--json").json()["runtime"]
        assert runtime["driver"] == "podman" and {"rootful", "cgroup limits"} <= {h["name"] for h in runtime["health"]}
        assert [i["present"] for i in runtime["images"]] == [True]

        fleet.stop_daemons()
        assert fleet.containers("sam") == []  # stopped with the daemon, and removed
        assert fleet.cli("runtime", "set", "local", "--json").json()["changed"] is True
    finally:
        fleet.tear_down()


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
