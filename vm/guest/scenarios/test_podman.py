"""The podman runtime on a cgroup v2 host with crun, Debian's default OCI runtime there: an instance
runs in a container with the fleet's limits on its control group, answers through the edge, and a
crash inside is restarted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from lanekit import cgroup_of, daemon, journal, new_fleet, pid_alive, release_zip, run, serves, wait_until

MIB = 1024 * 1024


def _containers(fleet_root: Path) -> list[dict]:
    conf = fleet_root / "run" / "podman" / "containers.conf"
    env = {**os.environ, "CONTAINERS_CONF": str(conf)} if conf.exists() else None
    out = run("podman", "ps", "--format", "json", "--filter", "label=foundry-fleet.instance=alice", env=env).stdout
    return json.loads(out or "[]")


def test_an_instance_runs_in_a_crun_container_with_its_limits_and_is_restarted_after_a_crash() -> None:
    fleet = new_fleet(Path("/srv/fleet-podman"), "--runtime", "podman", **{
        "memory_mb = 2048": "memory_mb = 192", "pids = 512": "pids = 128"})
    fleet.cli("release", "add", str(release_zip()))
    with daemon(fleet, "fleet-podman"):
        fleet.cli("instance", "create", "alice", "--release", "12.331", timeout=1200)
        alice = fleet.wait_state("alice", "running", timeout=600)
        [container] = _containers(fleet.root)
        inspect = json.loads(run("podman", "inspect", container["Id"]).stdout)[0]
        assert inspect["OCIRuntime"] == "crun", inspect["OCIRuntime"]
        assert "NOT available: oci runtime" not in journal("fleet-podman")
        group = cgroup_of(alice["pid"])
        assert (group / "memory.max").read_text().strip() == str(192 * MIB), group
        assert (group / "pids.max").read_text().strip() == "128"
        wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge")

        try:
            httpx.get(f"http://{alice['address']}/-/__crash", timeout=30)
        except httpx.HTTPError:
            pass  # the server goes away while answering
        wait_until(lambda: not pid_alive(alice["pid"]), 120, "the crashed server to be gone")
        crashed_at = time.monotonic()

        def restarted() -> dict | None:
            shown = fleet.instance("alice")
            return shown if shown["restarts"] >= 1 and shown["state"] == "running" else None
        again = wait_until(restarted, 300, "alice to be restarted after the crash")
        print(f"restarted {time.monotonic() - crashed_at:.1f} s after the crash")
        assert again["pid"] != alice["pid"] and pid_alive(again["pid"]), again
        wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge after the crash")
        fleet.cli("instance", "stop", "alice")
        wait_until(lambda: not _containers(fleet.root), 120, "the container to be gone")
