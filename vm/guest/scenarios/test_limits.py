"""[limits] on a cgroup v2 host: memory, CPU and pids limits written to each instance's own control group
and enforced there; a memory hog is OOM-killed in its own group, its neighbour is left alone."""

from __future__ import annotations

from pathlib import Path

import httpx

from lanekit import cgroup_of, daemon, in_instance, new_fleet, pid_alive, release_zip, wait_until

MIB = 1024 * 1024


def test_limits_are_applied_and_enforced_in_each_instances_own_group() -> None:
    fleet = new_fleet(Path("/srv/fleet-limits"), **{
        "memory_mb = 2048": "memory_mb = 160", "\ncpu_percent = 100": "\ncpu_percent = 30", "pids = 512": "pids = 64",
        "backoff_initial = 1.0": "backoff_initial = 0.5"})
    fleet.cli("release", "add", str(release_zip()))
    with daemon(fleet, "fleet-limits"):
        for name in ("alice", "bob"):
            fleet.cli("instance", "create", name, "--release", "12.331")
        alice, bob = fleet.wait_state("alice", "running"), fleet.wait_state("bob", "running")
        group, neighbour = cgroup_of(alice["pid"]), cgroup_of(bob["pid"])
        assert group != neighbour and group.parent == neighbour.parent
        assert (group / "memory.max").read_text().strip() == str(160 * MIB)
        assert (group / "memory.swap.max").read_text().strip() == "0"
        assert (group / "cpu.max").read_text().split() == ["30000", "100000"]
        assert (group / "pids.max").read_text().strip() == "64"

        # pids: forks past the limit fail inside the instance, and only there.
        forks = in_instance(alice, "for i in $(seq 100); do sleep 20 & done 2>/dev/null; wait")
        events = dict(line.split() for line in (group / "pids.events").read_text().splitlines())
        assert int(events["max"]) > 0, f"no fork was refused: {forks}"
        assert int(dict(line.split() for line in (neighbour / "pids.events").read_text().splitlines())["max"]) == 0

        # CPU: a busy loop is throttled to its share.
        before = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        in_instance(alice, "const end = Date.now() + 4000; while (Date.now() < end) {}", node=True)
        after = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        assert int(after["nr_throttled"]) > int(before["nr_throttled"]), (before, after)

        # Memory: the hog is killed by the kernel in its own group; the fleet says so and starts it again.
        try:
            httpx.get(f"http://{alice['address']}/-/__alloc?mb=400", timeout=120)
        except Exception:  # noqa: BLE001 - the server is killed while answering
            pass
        wait_until(lambda: not pid_alive(alice["pid"]), 120, "the hog to be killed")
        said = fleet.cli("events", "--instance", "alice").stdout
        wait_until(lambda: "out of memory" in fleet.cli("events", "--instance", "alice").stdout, 120,
                   f"the fleet to say alice ran out of memory (events so far:\n{said})")
        again = fleet.wait_state("alice", "running")
        assert again["pid"] != alice["pid"]
        assert pid_alive(bob["pid"]) and fleet.instance("bob")["pid"] == bob["pid"]
        assert "oom_kill 0" in (neighbour / "memory.events").read_text()
