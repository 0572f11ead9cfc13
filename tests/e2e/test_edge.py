"""The edge through real Caddy and real HTTPS: routes, state pages, auth, TLS modes, reloads, restarts."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from foundry_fleet.api.client import ControlClient
from foundry_fleet.edge.admin import CaddyAdmin
from foundry_fleet.edge.caddy_config import IDENTITY_HEADERS, EdgeSettings, TenantSite, build_caddy_config
from foundry_fleet.edge.process import ManagedCaddy, find_caddy
from tests.support.fleets import make_fleet
from tests.support.caddy_routes import served_hosts
from tests.support.edge_client import certificate_or_none, http, https, local_ca, served_certificate, serves_certificate, wss
from tests.support.harness import FleetHarness, wait_until
from tests.support.ports import port_block

pytestmark = pytest.mark.e2e


def _ports(fleet: FleetHarness) -> tuple[int, int]:
    cfg = fleet.settings()
    return cfg.edge.http_port, cfg.edge.https_port


def _running_fleet(fleet: FleetHarness, release_zips: dict[str, Path], *names: str) -> ControlClient:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    client = ControlClient(fleet.socket)
    for name in names:
        assert client.create_instance(name=name, release="13.345")["instance"]["state"] == "running"
    return client


def test_routes_redirects_and_state_pages(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    client = _running_fleet(fleet, release_zips, "alice")
    http_port, https_port = _ports(fleet)
    ca = local_ca(fleet.root)

    root = https(https_port, "alice.localhost", "/", ca)
    assert root.status_code == 302 and root.headers["location"] == "/-/"
    status = https(https_port, "alice.localhost", "/-/api/status", ca)
    assert status.status_code == 200 and status.json()["version"] == "13.345"
    page = https(https_port, "alice.localhost", "/-/", ca)
    assert page.status_code == 200 and "Foundry Virtual Tabletop" in page.text

    plain = http(http_port, "alice.localhost", "/-/join?x=1")
    assert plain.status_code == 308
    assert plain.headers["location"] == f"https://alice.localhost:{https_port}/-/join?x=1"

    # The fleet host serves the fleet's health, never the control API.
    assert https(https_port, "fleet.localhost", "/health", ca).json() == {"ok": True}
    for path in ("/v1/status", "/v1/instances", "/openapi.json"):
        assert https(https_port, "fleet.localhost", path, ca).status_code == 404

    # A host the fleet does not serve gets no certificate at all: the TLS handshake fails.
    with pytest.raises(httpx.ConnectError, match="alert"):
        https(https_port, "mallory.localhost", "/", ca)

    client.action("alice", "stop")
    stopped = https(https_port, "alice.localhost", "/-/", ca)
    assert stopped.status_code == 503 and stopped.headers["retry-after"].isdigit()
    assert "This table is closed right now" in stopped.text
    client.action("alice", "start")
    assert https(https_port, "alice.localhost", "/-/api/status", ca).status_code == 200

    # Extra hostnames are routed and certified too.
    client.set_hosts("alice", ["games.alice.localhost"])
    wait_until(lambda: _status(https_port, "games.alice.localhost", ca) == 200, 15, "the extra host to serve")
    client.close()


def _status(port: int, host: str, ca: Path) -> int | None:
    try:
        return https(port, host, "/-/api/status", ca).status_code
    except (httpx.HTTPError, ssl.SSLError, OSError):
        return None


def test_websocket_survives_other_tenants_changing(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    client = _running_fleet(fleet, release_zips, "alice")
    _http_port, https_port = _ports(fleet)
    ca = local_ca(fleet.root)
    caddy = CaddyAdmin(fleet.root / "run" / "caddy-admin.sock")  # what Caddy itself has loaded

    def loaded() -> str:
        return json.dumps(caddy.config(), sort_keys=True)

    def caddy_serves(config: str) -> bool:
        return loaded() == config

    before = json.dumps(client.edge_config(), sort_keys=True)
    wait_until(lambda: caddy_serves(before), 10, "Caddy to serve the fleet's config")
    assert "alice.localhost" in before and "bob.localhost" not in before
    with wss(https_port, "alice.localhost", "/-/socket.io/", ca) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        for i in range(20):
            client.create_instance(name="bob", release="13.345")
            with_bob = json.dumps(client.edge_config(), sort_keys=True)
            # Each step is a real load of a different config: Caddy routes bob, then no longer does.
            wait_until(lambda config=with_bob: caddy_serves(config), 10, "Caddy to load bob's route")
            assert with_bob != before and "bob.localhost" in with_bob
            client.action("bob", "stop")
            client.action("bob", "start")
            client.delete_instance("bob", purge=True)
            wait_until(lambda: caddy_serves(before), 10, "Caddy to drop bob's route")
            ws.send(f"still here {i}")
            assert ws.recv(timeout=5) == f"still here {i}"
    assert json.dumps(client.edge_config(), sort_keys=True) == before
    caddy.close()
    client.close()


def test_caddy_killed_is_restarted_with_the_full_config(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    client = _running_fleet(fleet, release_zips, "alice", "bob")
    _http_port, https_port = _ports(fleet)
    ca = local_ca(fleet.root)
    serial = served_certificate(https_port, "alice.localhost", ca)["serialNumber"]
    pid = int((fleet.root / "edge" / "caddy.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: int((fleet.root / "edge" / "caddy.pid").read_text().split()[0]) != pid, 15, "a new Caddy")
    for host in ("alice.localhost", "bob.localhost"):
        wait_until(lambda h=host: _status(https_port, h, ca) == 200, 15, f"{host} through the new Caddy")
    # Certificates live under the fleet root: the new Caddy serves the same one, not a new one.
    assert served_certificate(https_port, "alice.localhost", ca)["serialNumber"] == serial
    client.close()


def test_caddy_survives_a_daemon_crash_and_is_adopted(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    client = _running_fleet(fleet, release_zips, "alice")
    _http_port, https_port = _ports(fleet)
    ca = local_ca(fleet.root)
    pid = int((fleet.root / "edge" / "caddy.pid").read_text().split()[0])
    with wss(https_port, "alice.localhost", "/-/socket.io/", ca) as ws:
        fleet.daemons[-1].send_signal(signal.SIGKILL)
        fleet.daemons[-1].wait()
        ws.send("players stay connected")
        assert ws.recv(timeout=5) == "players stay connected"
        fleet.up()
        assert int((fleet.root / "edge" / "caddy.pid").read_text().split()[0]) == pid
        ws.send("and after the daemon is back")
        assert ws.recv(timeout=5) == "and after the daemon is back"
    client.close()


def test_on_demand_certificates_only_for_instance_hosts(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    fleet = make_fleet(tmp_path, **{'tls = "internal"': 'tls = "on-demand"'})
    try:
        client = _running_fleet(fleet, release_zips, "alice")
        _http_port, https_port = _ports(fleet)
        ca = local_ca(fleet.root)
        cert = wait_until(lambda: certificate_or_none(https_port, "alice.localhost", ca), 20, "an on-demand certificate")
        assert ("DNS", "alice.localhost") in cert["subjectAltName"]
        with pytest.raises(ssl.SSLError):
            served_certificate(https_port, "stranger.localhost", ca)
        assert https(https_port, "alice.localhost", "/-/api/status", ca).status_code == 200
        status = client.status()
        by_host = {h["host"]: h for h in status["hosts"]}
        assert by_host["alice.localhost"]["state"] == "valid"
        client.close()
    finally:
        fleet.tear_down()


def test_status_and_edge_show(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    _running_fleet(fleet, release_zips, "alice")
    status = fleet.cli("status", "--json").json()
    hosts = {h["host"]: h for h in status["hosts"]}
    assert hosts["alice.localhost"]["state"] == "valid" and hosts["alice.localhost"]["not_after"]
    assert "Caddy Local Authority" in hosts["alice.localhost"]["issuer"]
    assert "fleet.localhost" in hosts
    shown = fleet.cli("edge", "show").json()
    assert {"alice.localhost", "fleet.localhost"} <= served_hosts(shown)
    fleet.stop_daemons()
    # Without the daemon the config is built from the database: same hosts, alice now stopped.
    offline = fleet.cli("edge", "show").json()
    assert served_hosts(offline) == served_hosts(shown)
    assert "This table is closed right now" in json.dumps(offline)


# --- forward_auth, with real Caddy and a stand-in auth service -------------------------------


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []
    answer: tuple[int, dict[str, str]] = (403, {})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/auth/"):
            status, headers = type(self).answer
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        type(self).seen.append({k: v for k, v in self.headers.items()})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"backup listing")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_and_backend() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    # shutdown() waits for serve_forever to look again: every 0.05 s, not its default 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _Recorder.seen = []
    yield server
    server.shutdown()


def test_backups_need_the_auth_services_consent_and_forged_identity_never_passes(
    tmp_path: Path, auth_and_backend: ThreadingHTTPServer
) -> None:
    base = port_block()
    dial = f"127.0.0.1:{auth_and_backend.server_address[1]}"
    admin_socket = tmp_path / "admin.sock"
    settings = EdgeSettings(http_port=base, https_port=base + 1, tls="internal", fleet_host="fleet.localhost",
                            web_dial=dial, admin_listen=f"unix/{admin_socket}", backups_dial=dial)
    sites = [TenantSite("alice", ("alice.localhost",), f"127.0.0.1:{base + 2}", "running")]
    caddy = ManagedCaddy(find_caddy(None), tmp_path / "edge", admin_socket, tmp_path / "caddy.log")
    caddy.write_config(build_caddy_config(settings, sites))
    caddy.start()
    admin = CaddyAdmin(admin_socket)
    try:
        caddy.wait_ready(admin.ping)
        ca = caddy.local_ca_root()
        wait_until(lambda: ca.exists(), 10, "the local CA")
        # The site's certificate is issued moments after the CA: until then the handshake fails.
        wait_until(lambda: serves_certificate(base + 1, "alice.localhost", ca), 20, "alice's certificate")
        forged = {h: "mallory" for h in IDENTITY_HEADERS}

        _Recorder.answer = (403, {})
        denied = https(base + 1, "alice.localhost", "/backups/", ca, headers=forged)
        assert denied.status_code == 403 and _Recorder.seen == []

        _Recorder.answer = (200, {})
        allowed = https(base + 1, "alice.localhost", "/backups/", ca, headers=forged)
        assert allowed.status_code == 200 and allowed.text == "backup listing"
        assert not any(h.lower() in {k.lower() for k in _Recorder.seen[-1]} for h in IDENTITY_HEADERS)

        _Recorder.answer = (200, {"X-Fleet-User": "alice-owner"})
        https(base + 1, "alice.localhost", "/backups/x.tar.zst", ca, headers=forged)
        got = {k.lower(): v for k, v in _Recorder.seen[-1].items()}
        assert got["x-fleet-user"] == "alice-owner"
        assert "x-fleet-role" not in got and "x-fleet-instance" not in got
    finally:
        admin.close()
        caddy.stop()


@pytest.mark.parametrize("tls", ["internal", "acme", "on-demand"])
def test_caddy_accepts_every_generated_config(tmp_path: Path, tls: str) -> None:
    settings = EdgeSettings(http_port=80, https_port=443, tls=tls, fleet_host="fleet.games.example.org",
                            web_dial="127.0.0.1:8099", admin_listen=f"unix/{tmp_path}/admin.sock",
                            acme_email="gm@example.org", acme_staging=True)
    sites = [TenantSite("alice", ("alice.games.example.org", "alice.example.net"), "127.0.0.1:30000", "running"),
             TenantSite("bob", ("bob.games.example.org",), "127.0.0.1:30001", "failed")]
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(build_caddy_config(settings, sites)))
    result = subprocess.run([find_caddy(None), "validate", "--config", str(path)], capture_output=True, text=True,
                            env={**os.environ, "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
