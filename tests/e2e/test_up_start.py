"""`up` on a host that is not ready for it: a port it needs is taken. It says so in one line, and what it
had set up before it found out (the firewall, control groups, Caddy, sockets) is gone again."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cgroups import fleet_firewall_chain, groups_under
from tests.support.harness import FleetHarness, pids_with_arg, wait_until

pytestmark = pytest.mark.e2e
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, iptables)")


@contextmanager
def held(port: int, host: str = "0.0.0.0") -> Iterator[None]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen()
        yield


def assert_nothing_left(fleet: FleetHarness) -> None:
    chain = fleet_firewall_chain(fleet.cgroup_parent)
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout
    assert chain not in rules, rules  # neither the chain nor INPUT's jump to it
    # As after a clean stop: at most the fleet's own empty top groups, no group of Caddy or the forwarders.
    left = groups_under(fleet.cgroup_parent)
    assert [group for group in left if group.name != fleet.cgroup_parent] == [], left
    assert all(not (group / "cgroup.procs").read_text().strip() for group in left), left
    assert pids_with_arg(str(fleet.root / "edge")) == []  # no Caddy
    assert not fleet.socket.exists() and not (fleet.root / "run" / "backups.sock").exists()


@needs_root
def test_a_taken_https_port_is_one_line_naming_its_holder_and_up_leaves_nothing(fleet: FleetHarness) -> None:
    port = fleet.settings().edge.https_port
    me = Path("/proc/self/comm").read_text().strip()
    with held(port):
        result = fleet.cli("up", check=False, timeout=60)
    assert result.code == 4, result.err
    line = (f"port {port} (https) is in use by {me} (pid {os.getpid()}): set [edge] https_port in fleet.toml, "
            "or init --https-port")
    assert line in " ".join(result.err.split()), result.err
    assert '"level"' not in result.err + result.out  # none of Caddy's JSON log
    assert_nothing_left(fleet)
    fleet.up()  # the port free again, the same fleet starts, and says where it serves and what comes next
    https = f"https://fleet.localhost:{port}/"
    told = wait_until(lambda: " ".join(fleet.daemon_log().split()) if https in fleet.daemon_log() else None, 10,
                      "what to do next")
    assert f"the fleet serves its panel at {https}" in told and "no instances yet:" in told
    assert "foundry-fleet trust" in told


@needs_root
def test_a_taken_web_port_after_the_firewall_was_set_up_leaves_nothing(fleet: FleetHarness) -> None:
    port = fleet.settings().edge.web_port
    with held(port, "127.0.0.1"):
        result = fleet.cli("up", check=False, timeout=60)
    assert result.code == 4, result.err
    assert f"port {port} (web) is in use by" in " ".join(result.err.split()), result.err
    assert_nothing_left(fleet)
