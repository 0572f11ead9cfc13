"""The edge driver against a real Caddy: batching, no-op skipping, and changes kept while Caddy is away."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from tests.support.harness import wait_until_async
from tests.support.ports import port_block
from tests.support.caddy_routes import served_hosts
from foundry_fleet.edge.admin import CaddyAdmin
from foundry_fleet.edge.caddy_config import EdgeSettings, TenantSite
from foundry_fleet.edge.driver import Edge
from foundry_fleet.edge.process import ManagedCaddy, find_caddy
from foundry_fleet.runtime.cgroups import CGROUP_ROOT, EdgeCgroup, unified_mount


def _edge(tmp_path: Path, sites: list[TenantSite]) -> Edge:
    base = port_block()
    socket_path = tmp_path / "admin.sock"
    settings = EdgeSettings(http_port=base, https_port=base + 1, tls="internal", fleet_host="fleet.localhost",
                            web_dial="127.0.0.1:9", admin_listen=f"unix/{socket_path}")
    caddy = ManagedCaddy(find_caddy(None), tmp_path / "edge", socket_path, tmp_path / "caddy.log")
    return Edge(settings, caddy, CaddyAdmin(socket_path), lambda: list(sites))


def _hosts(config: dict | None) -> set[str]:
    return served_hosts(config)


def _site(i: int) -> TenantSite:
    return TenantSite(f"t{i}", (f"t{i}.localhost",), f"127.0.0.1:{30000 + i}", "running")


def test_changes_together_are_one_load_and_unchanged_config_sends_nothing(tmp_path: Path) -> None:
    sites = [_site(0)]
    edge = _edge(tmp_path, sites)

    async def scenario() -> None:
        await edge.start()
        try:
            first = edge.loads
            for i in range(1, 11):
                sites.append(_site(i))
                edge.request_update()
            await wait_until_async(lambda: edge.loads > first, 10, "the batch to be loaded")
            # A push now (under the push lock) would load whatever the batch left out: nothing.
            assert await edge.push()
            assert edge.loads == first + 1, "ten changes in one batch window make one load"
            assert {f"t{i}.localhost" for i in range(11)} <= _hosts(edge.admin.config())
            edge.request_update()
            await wait_until_async(lambda: not edge._dirty.is_set(), 10, "the pusher to take the request")
            assert await edge.push()
            assert edge.loads == first + 1, "an unchanged config is not sent again"
        finally:
            await edge.close(stop_caddy=True)

    asyncio.run(scenario())


def test_a_change_while_caddy_is_down_is_applied_when_it_is_back(tmp_path: Path) -> None:
    sites = [_site(0)]
    edge = _edge(tmp_path, sites)

    async def scenario() -> None:
        await edge.start()
        try:
            edge.caddy.stop()
            sites.append(_site(1))
            edge.request_update()  # Caddy is gone: kept, retried
            # The driver notices Caddy is gone, starts it again, and the change arrives.
            await wait_until_async(lambda: edge.caddy.alive() and edge.admin.ping()
                                   and "t1.localhost" in _hosts(edge.admin.config()), 10,
                                   "the change made while Caddy was down to reach it")
        finally:
            await edge.close(stop_caddy=True)

    asyncio.run(scenario())


@pytest.mark.skipif(os.geteuid() != 0 or unified_mount() is None,
                    reason="needs root and a cgroup v2 hierarchy to move Caddy into a group of its own")
def test_caddy_runs_in_a_group_of_its_own_which_goes_when_it_stops(tmp_path: Path) -> None:
    """Under systemd the daemon's group is the service's, and a restart of the service ends everything
    in it: the edge, like the tasks, must live elsewhere to keep serving across a restart."""
    group = EdgeCgroup(f"foundry-fleet-test-{secrets.token_hex(4)}")
    socket_path = tmp_path / "admin.sock"
    caddy = ManagedCaddy(find_caddy(None), tmp_path / "edge", socket_path, tmp_path / "caddy.log", group=group)
    pid = caddy.start()
    try:
        caddy.wait_ready(CaddyAdmin(socket_path).ping)
        assert group.pids() == {pid}
        own = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        assert [line for line in own if line.startswith("0::")] == [f"0::/{group.match_path()}"]
    finally:
        caddy.stop()
    assert group.directory is not None and not group.directory.exists(), "the edge's group outlived Caddy"
    if group.mount is not None and group.mount[0] != CGROUP_ROOT:  # a hybrid host: the parent held only it
        assert not group.directory.parent.exists()
