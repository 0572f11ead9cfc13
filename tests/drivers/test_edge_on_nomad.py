"""[edge] on_nomad: the fleet's real Caddy run by (stand-in) Nomad as the service job fvtt-caddy, and
configured by the fleet through its admin socket exactly as its own Caddy is.

The edge is built by the fleet's wiring from a fleet.toml of the nomad runtime; the stand-in Nomad has
one node on 127.0.0.1 and runs Caddy as the raw_exec process the job asks for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from foundry_fleet.config import FleetConfig, load_config
from foundry_fleet.edge.admin import CaddyAdmin
from foundry_fleet.edge.caddy_config import TenantSite
from foundry_fleet.edge.driver import Edge
from foundry_fleet.edge.nomad_caddy import CaddyOnNomad, submitted_fields_match
from foundry_fleet.runtime.nomad.jobs import CADDY_JOB_ID
from foundry_fleet.services.init import init_fleet
from foundry_fleet.wiring import runtimes
from foundry_fleet.wiring.drivers import make_edge
from foundry_fleet.wiring.nomad_jobs import caddy_job_for
from tests.support.edge_client import https, local_ca, serves_certificate, wss
from tests.support.harness import wait_until_async
from tests.support.nomad_standin import NomadStandin, StandinNode
from tests.support.ports import port_block, port_is_free

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def nomad(tmp_path: Path) -> Iterator[NomadStandin]:
    low = port_block()
    with NomadStandin(tmp_path / "nomad", [StandinNode("node-a", "127.0.0.1")], port_range=(low, low + 49)) as standin:
        yield standin


@pytest.fixture
def config(tmp_path: Path, nomad: NomadStandin, monkeypatch: pytest.MonkeyPatch) -> FleetConfig:
    if "nomad" not in runtimes.RUNTIMES:
        # [runtime] driver = "nomad" must name a registered driver; these tests start only the edge.
        monkeypatch.setitem(runtimes.RUNTIMES, "nomad", runtimes.RUNTIMES["local"])
    base = port_block()
    path = init_fleet(tmp_path / "fleet", runtime="nomad", nomad_address=nomad.url, http_port=base,
                      https_port=base + 1)
    path.write_text(path.read_text().replace("# on_nomad = false", "on_nomad = true")
                    .replace("web_port = 8099", f"web_port = {base + 2}"))
    loaded = load_config(path)
    assert loaded.edge.on_nomad
    return loaded


class EchoBackend:
    """A tenant's server as far as the edge is concerned: answers websockets by echoing."""

    def __init__(self) -> None:
        def echo(ws: ServerConnection) -> None:
            for message in ws:
                ws.send(message)

        self.server = serve(echo, "127.0.0.1", 0)
        self.dial = f"127.0.0.1:{self.server.socket.getsockname()[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def site(name: str, dial: str = "127.0.0.1:9") -> TenantSite:
    return TenantSite(name, (f"{name}.localhost",), dial, "running")


def serves(edge: Edge, admin: CaddyAdmin) -> bool:
    """Caddy's admin API answers with exactly the fleet's desired config."""
    try:
        return json.dumps(admin.config(), sort_keys=True) == json.dumps(edge.config(), sort_keys=True)
    except Exception:  # noqa: BLE001 - not answering (yet) is "no"
        return False


def caddy_job_puts(nomad: NomadStandin) -> int:
    return sum(1 for method, path, _ in nomad.calls
               if method in ("PUT", "POST") and path == "/v1/jobs")


def live_allocs(nomad: NomadStandin) -> list[dict[str, Any]]:
    return [a for a in nomad.allocations.values()
            if a["JobID"] == CADDY_JOB_ID and a["ClientStatus"] not in ("complete", "failed", "lost")]


def is_caddy(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"caddy" and b"--resume" in argv


def edge_of(config: FleetConfig, sites: list[TenantSite]) -> Edge:
    return make_edge(config, lambda: list(sites), on_problem=lambda problem: None)


def tenant_answers(config: FleetConfig, host: str) -> bool:
    ca = local_ca(config.root)
    return ca.exists() and serves_certificate(config.edge.https_port, host, ca)


def test_caddy_runs_as_one_nomad_job_that_a_second_start_keeps_and_stop_removes(
        config: FleetConfig, nomad: NomadStandin) -> None:
    sites = [site("alice"), site("bob")]
    admin = CaddyAdmin(config.paths.run / "caddy-admin.sock")

    async def scenario() -> None:
        edge = edge_of(config, sites)
        assert isinstance(edge.host, CaddyOnNomad)
        await edge.start()
        try:
            # One job, pinned to the node on this host, exactly the job `nomad render` builds.
            assert caddy_job_puts(nomad) == 1
            job = nomad.jobs[CADDY_JOB_ID]
            assert submitted_fields_match(caddy_job_for(config, nomad.node_id("node-a")), job)
            assert job["TaskGroups"][0]["Tasks"][0]["Config"]["args"] == ["run", "--resume"]
            [alloc] = live_allocs(nomad)
            pid = edge.host.pid
            assert pid is not None and is_caddy(pid), "the admin socket is the Caddy Nomad runs"
            # The fleet's config, pushed once, served on the edge ports with the fleet's certificates.
            assert serves(edge, admin) and edge.loads == 1
            await wait_until_async(lambda: tenant_answers(config, "alice.localhost"), 30, "alice's certificate")
            redirect = https(config.edge.https_port, "alice.localhost", "/", local_ca(config.root))
            assert redirect.status_code == 302 and redirect.headers["location"] == "/-/"
            assert (config.root / "edge" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt").exists()
        finally:
            await edge.close(stop_caddy=False)  # a daemon leaving Caddy running for the next one

        # The next daemon: the same job is neither registered again nor restarted, nor is the same config
        # pushed again.
        again = edge_of(config, sites)
        await again.start()
        try:
            assert caddy_job_puts(nomad) == 1
            assert [a["ID"] for a in live_allocs(nomad)] == [alloc["ID"]]
            assert again.host.pid == pid and is_caddy(pid)
            assert again.loads == 0 and serves(again, admin)
            # Asked to start (not adopt) with the same config: Nomad already holds this job.
            await again.host.start()
            await again.host.wait_ready(admin.ping)
            assert caddy_job_puts(nomad) == 1 and again.host.registrations == 0
            assert [a["ID"] for a in live_allocs(nomad)] == [alloc["ID"]] and again.host.pid == pid
            assert "fvtt-caddy" in again.host.describe() and "node-a" in again.host.describe()
        finally:
            await again.close(stop_caddy=True)

        # Stopped: no job, no allocation, no process, the edge ports free again.
        assert CADDY_JOB_ID not in nomad.jobs
        assert live_allocs(nomad) == []
        assert not is_caddy(pid)
        assert not admin.ping()
        assert port_is_free(config.edge.http_port) and port_is_free(config.edge.https_port)

    try:
        asyncio.run(scenario())
    finally:
        admin.close()


def test_a_caddy_that_nomad_restarts_serves_the_fleets_config_again(config: FleetConfig, nomad: NomadStandin) -> None:
    sites = [site("alice")]
    admin = CaddyAdmin(config.paths.run / "caddy-admin.sock")

    async def scenario() -> None:
        edge = edge_of(config, sites)
        await edge.start()
        try:
            [alloc] = live_allocs(nomad)
            pid = edge.host.pid
            assert pid is not None and edge.loads == 1
            os.kill(pid, signal.SIGKILL)
            # Nomad (its restart policy: delay, then the same task again) brings it back in the same
            # allocation; `--resume` starts it with the config the fleet pushed, so nothing is pushed.
            await wait_until_async(lambda: nomad.allocations[alloc["ID"]]["TaskStates"]["caddy"]["Restarts"] == 1,
                                   20, "Nomad to restart Caddy")
            await wait_until_async(lambda: edge.host.pid not in (None, pid) and serves(edge, admin), 30,
                                   "the restarted Caddy to serve the fleet's config")
            assert is_caddy(edge.host.pid) and not is_caddy(pid)
            assert [a["ID"] for a in live_allocs(nomad)] == [alloc["ID"]] and caddy_job_puts(nomad) == 1
            assert edge.loads == 1, "the resumed config is the fleet's: not pushed again"
            await wait_until_async(lambda: tenant_answers(config, "alice.localhost"), 30, "alice through the new Caddy")

            # Killed again, and the fleet's state changes while it is down: the change arrives once.
            pid = edge.host.pid
            os.kill(pid, signal.SIGKILL)
            sites.append(site("carol"))
            edge.request_update()
            await wait_until_async(lambda: edge.host.pid not in (None, pid) and serves(edge, admin), 30,
                                   "carol's route on the restarted Caddy")
            assert "carol.localhost" in json.dumps(admin.config()) and edge.loads == 2
        finally:
            await edge.close(stop_caddy=True)
        assert CADDY_JOB_ID not in nomad.jobs and live_allocs(nomad) == []

    try:
        asyncio.run(scenario())
    finally:
        admin.close()


def test_a_players_websocket_survives_other_tenants_config_pushes(config: FleetConfig, nomad: NomadStandin) -> None:
    backend = EchoBackend()
    sites = [site("alice", backend.dial)]
    admin = CaddyAdmin(config.paths.run / "caddy-admin.sock")

    async def scenario() -> None:
        edge = edge_of(config, sites)
        await edge.start()
        try:
            await wait_until_async(lambda: tenant_answers(config, "alice.localhost"), 30, "alice's certificate")
            with wss(config.edge.https_port, "alice.localhost", "/-/socket.io/", local_ca(config.root)) as ws:
                ws.send("hello")
                assert ws.recv(timeout=5) == "hello"
                for i in range(5):
                    loads = edge.loads
                    if i % 2 == 0:
                        sites.append(site("bob"))
                    else:
                        sites.pop()
                    edge.request_update()
                    # A real reload of a different config each round (bob routed, then not).
                    await wait_until_async(lambda loads=loads: edge.loads == loads + 1 and serves(edge, admin), 10,
                                           f"round {i}'s config in Caddy")
                    ws.send(f"still here {i}")
                    assert ws.recv(timeout=5) == f"still here {i}"
        finally:
            await edge.close(stop_caddy=True)

    try:
        asyncio.run(scenario())
    finally:
        admin.close()
        backend.close()


def test_a_saved_config_caddy_no_longer_starts_with_is_dropped_and_a_changed_job_replaces_caddy(
        config: FleetConfig, nomad: NomadStandin) -> None:
    sites = [site("alice")]
    admin = CaddyAdmin(config.paths.run / "caddy-admin.sock")
    autosave = config.root / "edge" / "config" / "caddy" / "autosave.json"
    autosave.parent.mkdir(parents=True)
    # What an older Caddy saved, which this one refuses at start: Nomad restarts it, in vain.
    autosave.write_text(json.dumps({"admin": {"listen": f"unix/{admin.socket_path}"},
                                    "apps": {"http": {"servers": {"x": {"listen": ["not an address"]}}}}}))

    async def scenario() -> None:
        edge = edge_of(config, sites)
        await edge.start()
        try:
            # Seen dying during start-up: the job was stopped and purged, the saved config dropped, and
            # Caddy started again with none, then given the fleet's.
            assert edge.host.registrations == 2 and serves(edge, admin)
            [first] = live_allocs(nomad)
            assert "not an address" not in autosave.read_text()

            # The same job built differently (here: another restart delay) is registered again and Nomad
            # replaces the allocation: a new Caddy, which resumes the fleet's config.
            build = edge.host.build_job

            def changed(node_id: str) -> dict[str, Any]:
                job = build(node_id)
                job["TaskGroups"][0]["RestartPolicy"]["Delay"] = 2 * 10**9
                return job

            edge.host.build_job = changed
            edge.host._job = None
            await edge.host.start()
            await edge.host.wait_ready(admin.ping)
            [second] = live_allocs(nomad)
            assert second["ID"] != first["ID"] and edge.host.registrations == 3
            assert serves(edge, admin)
        finally:
            await edge.close(stop_caddy=True)
        assert CADDY_JOB_ID not in nomad.jobs and live_allocs(nomad) == []

    try:
        asyncio.run(scenario())
    finally:
        admin.close()
