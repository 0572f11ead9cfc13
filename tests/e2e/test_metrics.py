"""/metrics on a real daemon: through the edge with the token, and on the `[metrics] listen` address without."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.edge_client import https, local_ca, wss
from tests.support.fleets import make_fleet, set_section
from tests.support.harness import wait_until
from tests.support.ports import port_is_free, single_port

pytestmark = pytest.mark.e2e


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_scraper_reads_the_fleet_through_the_edge_with_the_token(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path)
    door = single_port()
    set_section(h, "metrics", {"listen": f"127.0.0.1:{door}"})
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        token_file = h.root / "state" / "metrics.token"
        assert token_file.stat().st_mode & 0o777 == 0o600  # made by the daemon's first start
        token = token_file.read_text().strip()
        h.cli("instance", "create", "alice", "--release", "13.345")
        port, ca = h.settings().edge.https_port, local_ca(h.root)

        def scrape(headers: dict[str, str] | None = None) -> httpx.Response:
            return https(port, "fleet.localhost", "/metrics", ca, headers=headers)

        for headers in (None, {"Authorization": "Bearer " + "0" * 64}):
            refused = scrape(headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            assert token not in refused.text
        # Not on a tenant's host, token or not.
        assert https(port, "alice.localhost", "/metrics", ca,
                     headers={"Authorization": f"Bearer {token}"}).status_code == 404

        with wss(port, "alice.localhost", "/-/socket.io/", ca) as ws:
            ws.send("a player")
            assert ws.recv(timeout=10) == "a player"

            def players() -> dict | None:
                r = scrape({"Authorization": f"Bearer {token}"})
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
                got = _samples(r.text)
                seen = got.get(("foundry_fleet_instance_players", frozenset({("instance", "alice")})))
                return got if seen == 1 else None

            got = wait_until(players, 10, "the health check to count alice's player")
        assert got[("foundry_fleet_instance_state", frozenset({("instance", "alice"), ("state", "running")}))] == 1
        assert got[("foundry_fleet_instance_state", frozenset({("instance", "alice"), ("state", "stopped")}))] == 0
        assert got[("foundry_fleet_instances", frozenset({("state", "running")}))] == 1
        assert got[("foundry_fleet_players", frozenset())] == 1
        assert got[("foundry_fleet_metrics_read_ok", frozenset({("part", "instances")}))] == 1
        assert got[("foundry_fleet_metrics_read_ok", frozenset({("part", "backups")}))] == 1
        assert got[("process_open_fds", frozenset())] > 0

        # The private door: the same figures, no token.
        plain = httpx.get(f"http://127.0.0.1:{door}/metrics", timeout=10)
        assert plain.status_code == 200
        assert _samples(plain.text)[("foundry_fleet_instance_state",
                                     frozenset({("instance", "alice"), ("state", "running")}))] == 1
        assert httpx.get(f"http://127.0.0.1:{door}/health", timeout=10).status_code == 404

        h.stop_daemons()  # the door's server ends with the daemon, which still stops cleanly
        assert h.daemons[-1].returncode == 0, h.daemon_log()
        assert port_is_free(door, "127.0.0.1")
    finally:
        h.tear_down()
