"""Issue 8, the edge: a hostile or careless hostname never freezes the edge nor leads to another tenant.

Attack 4 was `instance hosts alice carol.localhost` and then `instance create carol`: both succeeded,
Caddy refused every later config ("host ... is repeated"), the whole fleet's edge froze on a stale
config, carol's host served alice, and nobody was told. Also here: IP literals as hostnames, a
fleet_host that is a Caddy placeholder, the HTTP redirect that followed any Host header, and the
backups session cookie that reached tenant code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from filelock import FileLock

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.domain.hosts import InstanceHosts, assign_hosts, normalise_hostname
from foundry_fleet.edge.admin import CaddyAdmin
from foundry_fleet.edge.caddy_config import EdgeSettings, TenantSite, build_caddy_config
from foundry_fleet.edge.config_check import config_problems
from foundry_fleet.edge.driver import Edge
from foundry_fleet.edge.process import ManagedCaddy, find_caddy
from foundry_fleet.services.edge_status import edge_problem_reporter
from foundry_fleet.services.init import init_fleet
from foundry_fleet.wiring.services import make_invites, make_status_updates, make_wizard, open_services
from tests.support.edge_client import http, https, local_ca, serves_certificate, tls_context
from tests.support.harness import FleetHarness, wait_until, wait_until_async
from tests.support.offline import create_offline
from tests.support.ports import port_block
from tests.support.foundry_standin import free_port, spawn_standin, standin_source_dir, wait_for_status, write_options

# --- hostnames: one spelling, never an IP address ------------------------------------------------

IP_LITERALS = [
    "127.0.0.1", "::1", "[::1]", "[::1]:8443", "0x7f.1", "127.1", "2130706433", "0177.0.0.1", "0x7f000001",
    "1.2.3.0x4", "10.0.0.1.", "１２７.０.０.１", "games.example.org:8443", "::ffff:127.0.0.1",
]
NOT_HOSTNAMES = [
    "", "localhost", "*.example.org", "{http.request.host}", "exa mple.org", "-x.example.org", "a..b.org",
    "xn--zzzz.example.org", "games_1.example.org", "games.example.org/path", "x" * 64 + ".example.org",
]


@pytest.mark.parametrize("host", IP_LITERALS)
def test_ip_literals_are_refused_as_extra_hostnames(host: str) -> None:
    with pytest.raises(InvalidInput, match="IP address"):
        normalise_hostname(host, "extra hostname", min_labels=2)


@pytest.mark.parametrize("host", NOT_HOSTNAMES)
def test_what_is_not_a_hostname_is_refused(host: str) -> None:
    with pytest.raises(InvalidInput):
        normalise_hostname(host, "extra hostname", min_labels=2)


def test_a_host_has_one_spelling() -> None:
    for spelling in ("Games.Example.ORG", "games.example.org.", " GAMES.example.org. ", "ｇａｍｅｓ.example.org"):
        assert normalise_hostname(spelling, min_labels=2) == "games.example.org"
    assert normalise_hostname("Bücher.example", min_labels=2) == "xn--bcher-kva.example"
    assert normalise_hostname("xn--bcher-kva.example", min_labels=2) == "xn--bcher-kva.example"


def _config_with(tmp_path: Path, old: str, new: str) -> Path:
    path = init_fleet(tmp_path / "f")
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("value", ["{http.request.host}", "*", "fleet.admin", "-fleet", "", "fl eet", "{env.HOME}"])
def test_fleet_host_must_be_a_dns_label(tmp_path: Path, value: str) -> None:
    path = _config_with(tmp_path, 'fleet_host = "fleet"', f'fleet_host = "{value}"')
    with pytest.raises(InvalidInput, match=r"\[fleet\.fleet_host\]"):
        load_config(path)


def test_fleet_host_is_lowercased(tmp_path: Path) -> None:
    assert load_config(_config_with(tmp_path, 'fleet_host = "fleet"', 'fleet_host = "Ops"')).fleet.fleet_host == "ops"


@pytest.mark.parametrize("value", ["127.0.0.1", "0x7f.1", "[::1]", "{http.request.host}", "games.example.org:443"])
def test_domain_is_never_an_ip_address_nor_a_placeholder(tmp_path: Path, value: str) -> None:
    path = _config_with(tmp_path, 'domain = "localhost"', f'domain = "{value}"')
    with pytest.raises(InvalidInput, match=r"\[fleet\.domain\]"):
        load_config(path)


# --- collisions already in a database: settled, the same way every time ---------------------------


def test_collisions_in_an_old_database_are_settled_deterministically() -> None:
    alice = InstanceHosts("alice", "alice.localhost", ("carol.localhost", "shared.example.org", "127.0.0.1"), (1.0, 1))
    carol = InstanceHosts("carol", "carol.localhost", ("FLEET.localhost.",), (2.0, 2))
    bob = InstanceHosts("bob", "bob.localhost", ("Shared.Example.org", "bob.localhost"), (3.0, 3))
    for order in ([alice, carol, bob], [bob, carol, alice], [carol, bob, alice]):
        served, conflicts = assign_hosts("fleet.localhost", order)
        # An instance's own host wins over an extra hostname; the older instance keeps a shared extra one;
        # the fleet keeps its own; what is not a hostname is not served; a host listed twice is served once.
        assert served == {"alice": ("alice.localhost", "shared.example.org"), "carol": ("carol.localhost",),
                          "bob": ("bob.localhost",)}
        assert {(c.host, c.instance, c.holder) for c in conflicts} == {
            ("carol.localhost", "alice", "carol"), ("shared.example.org", "bob", "alice"),
            ("127.0.0.1", "alice", None), ("fleet.localhost", "carol", None)}
    config = build_caddy_config(SETTINGS, [TenantSite(n, h, f"127.0.0.1:{30000 + i}", "running")
                                           for i, (n, h) in enumerate(sorted(served.items()))])
    assert config_problems(config) == []


# --- the config is checked before it is sent --------------------------------------------------------

SETTINGS = EdgeSettings(http_port=8080, https_port=8443, tls="internal", fleet_host="fleet.localhost",
                        web_dial="127.0.0.1:8099", admin_listen="unix//run/admin.sock")


def test_the_check_finds_what_caddy_refuses_or_would_serve_wrongly() -> None:
    good = [TenantSite("alice", ("alice.localhost", "games.example.org"), "127.0.0.1:30001", "running"),
            TenantSite("bob", ("bob.localhost",), "127.0.0.1:30002", "stopped")]
    assert config_problems(build_caddy_config(SETTINGS, good)) == []
    repeated = [*good, TenantSite("carol", ("Games.Example.org",), "127.0.0.1:30003", "running")]
    problems = config_problems(build_caddy_config(SETTINGS, repeated))
    assert any("repeated in one matcher" in p for p in problems)
    assert any("host games.example.org is mapped twice" in p.lower() for p in problems)
    alike = {"apps": {"http": {"servers": {"edge": {"routes": [{"match": [{"host": ["a.localhost"]}]},
                                                                {"match": [{"host": ["A.localhost"]}]}]}}}}}
    assert any("a.localhost is in route 0 and route 1" in p.lower() and "match alike" in p
               for p in config_problems(alike))
    from dataclasses import replace

    placeholder = config_problems(build_caddy_config(replace(SETTINGS, fleet_host="{http.request.host}"), good))
    assert any("placeholder" in p for p in placeholder)
    # A site left without hosts must not become a host matcher without hosts (which matches every host).
    assert config_problems(build_caddy_config(SETTINGS, [*good, TenantSite("dave", (), "127.0.0.1:30004", "running")])) == []
    assert config_problems({"apps": {"http": {"servers": {"edge": {"routes": [{"match": [{"host": []}]}]}}}}})


# --- the driver: a refused config is reported, the last good one keeps serving --------------------


class RefusingEdge(Edge):
    """Builds what the fleet's check accepts but Caddy refuses (a handler Caddy does not have), on demand."""

    refuse = False

    def config(self) -> dict:
        config = super().config()
        if self.refuse:
            config["apps"]["http"]["servers"]["edge"]["routes"].insert(0, {"handle": [{"handler": "no_such_handler"}]})
        return config


class Recorder:
    def __init__(self) -> None:
        self.ops: list[str] = []

    async def post_ops(self, text: str) -> None:
        self.ops.append(text)

    async def send_dm(self, user_id: str, text: str) -> None:
        raise AssertionError("the edge has no owner to tell")


def _state_page(port: int, host: str, ca: Path) -> int | None:
    try:
        return https(port, host, "/-/", ca).status_code
    except (httpx.HTTPError, ssl.SSLError, OSError):
        return None


def test_a_refused_load_is_an_event_and_a_status_update_and_the_last_good_config_keeps_serving(tmp_path: Path) -> None:
    fleet = open_services(load_config(init_fleet(tmp_path / "fleet")), actor="daemon")
    updates = make_status_updates(fleet, out := Recorder())
    updates.start_from_now()
    base = port_block()
    socket_path = tmp_path / "admin.sock"
    settings = EdgeSettings(http_port=base, https_port=base + 1, tls="internal", fleet_host="fleet.localhost",
                            web_dial="127.0.0.1:9", admin_listen=f"unix/{socket_path}")
    caddy = ManagedCaddy(find_caddy(None), tmp_path / "edge", socket_path, tmp_path / "caddy.log")
    sites = [TenantSite("t0", ("t0.localhost",), "127.0.0.1:30000", "stopped")]
    told: list[str | None] = []
    report = edge_problem_reporter(fleet.events)
    edge = RefusingEdge(settings, caddy, CaddyAdmin(socket_path), lambda: list(sites),
                        on_problem=lambda why: (told.append(why), report(why)))
    attempts: list[int] = []
    load = edge.admin.load
    edge.admin.load = lambda config: (attempts.append(1), load(config))[1]  # type: ignore[method-assign]

    async def scenario() -> None:
        await edge.start()
        try:
            ca = caddy.local_ca_root()
            await asyncio.to_thread(wait_until, lambda: _state_page(base + 1, "t0.localhost", ca) == 503, 20,
                                    "t0's page through Caddy")
            assert edge.status().in_sync
            loads = edge.loads

            # Caddy refuses: reported once, not retried while nothing changes, old config still served.
            edge.refuse = True
            sites.append(TenantSite("t1", ("t1.localhost",), "127.0.0.1:30001", "stopped"))
            edge.request_update()
            await wait_until_async(lambda: told, 10, "the refusal to be told")
            assert len(told) == 1 and "no_such_handler" in (told[0] or "")
            assert len(attempts) == loads + 1 and edge.loads == loads
            status = await asyncio.to_thread(edge.status)
            assert not status.in_sync and "no_such_handler" in (status.problem or "") and status.since
            for _ in range(5):
                edge.request_update()
                await edge.sync()
            await asyncio.sleep(1.5)  # deliberately: time for a wrong retry to happen (the backoff is longer)
            assert len(attempts) == loads + 1, "a refused config is not sent again until something changes"
            assert _state_page(base + 1, "t0.localhost", ca) == 503
            assert _state_page(base + 1, "t1.localhost", ca) is None  # never loaded: no route, no certificate

            # A change is tried at once (still refused: the same problem is not told twice).
            sites.append(TenantSite("t2", ("t2.localhost",), "127.0.0.1:30002", "stopped"))
            edge.request_update()
            await wait_until_async(lambda: len(attempts) == loads + 2, 10, "the changed config to be tried")
            assert len(told) == 1

            # The fleet's own check stops a config with a host twice before Caddy sees it.
            edge.refuse = False
            sites.append(TenantSite("t3", ("t0.localhost",), "127.0.0.1:30003", "stopped"))
            edge.request_update()

            def problem() -> str:
                return edge.status().problem or ""

            await wait_until_async(lambda: "was not sent" in problem(), 10, "the fleet's own check to stop it")
            assert "t0.localhost" in problem()
            assert len(attempts) == loads + 2 and len(told) == 1  # still the same episode: told once

            # Fixed: loaded, and the recovery is told.
            sites.pop()
            edge.request_update()
            await wait_until_async(lambda: edge.loads == loads + 1, 10, "the fixed config to load")
            await wait_until_async(lambda: told[-1] is None, 10, "the recovery to be told")
            assert (await asyncio.to_thread(edge.status)).in_sync
            await asyncio.to_thread(wait_until, lambda: _state_page(base + 1, "t2.localhost", ca) == 503, 20,
                                    "t2 once a good config loads")
        finally:
            await edge.close(stop_caddy=True)

    asyncio.run(scenario())
    events = [(e.action, e.outcome) for e in fleet.events.recent("edge")]
    assert events == [("edge.config", "failed"), ("edge.config", "ok")]
    asyncio.run(updates.run_once())
    assert out.ops[0].startswith("**edge** is out of date (Caddy keeps serving the last good configuration): ")
    assert "no_such_handler" in out.ops[0]
    assert out.ops[-1] == "**edge** serves the current configuration again: Caddy serves the current configuration again"


def test_caddy_comes_back_even_when_its_last_config_no_longer_starts(tmp_path: Path) -> None:
    base = port_block()
    socket_path = tmp_path / "admin.sock"
    settings = EdgeSettings(http_port=base, https_port=base + 1, tls="internal", fleet_host="fleet.localhost",
                            web_dial="127.0.0.1:9", admin_listen=f"unix/{socket_path}")
    caddy = ManagedCaddy(find_caddy(None), tmp_path / "edge", socket_path, tmp_path / "caddy.log")
    edge = Edge(settings, caddy, CaddyAdmin(socket_path), lambda: [TenantSite("t0", ("t0.localhost",), "127.0.0.1:30000", "stopped")])

    async def scenario() -> None:
        await edge.start()
        try:
            ca = caddy.local_ca_root()
            await asyncio.to_thread(wait_until, lambda: _state_page(base + 1, "t0.localhost", ca) == 503, 20, "t0")
            # What it last accepted no longer starts (here: a module this Caddy lacks); then it dies.
            caddy.write_config({"admin": {"listen": f"unix/{socket_path}"},
                                "apps": {"http": {"servers": {"x": {"listen": [f":{base + 2}"],
                                                                    "routes": [{"handle": [{"handler": "nope"}]}]}}}}})
            pid = caddy.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(wait_until, lambda: caddy.pid != pid and _state_page(base + 1, "t0.localhost", ca)
                                    == 503, 30, "t0 through a Caddy started again")
        finally:
            await edge.close(stop_caddy=True)

    asyncio.run(scenario())


# --- through the real fleet: attack 4 both ways round -------------------------------------------------


def _running_fleet(fleet: FleetHarness, release_zips: dict[str, Path], *names: str) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    for name in names:
        fleet.cli("instance", "create", name, "--release", "13.345")


def _served_instance(fleet: FleetHarness, host: str, ca: Path | None = None) -> str | None:
    """Which instance's server answers at `host` through the edge (its data path names it)."""
    port = fleet.settings().edge.https_port
    try:
        r = https(port, host, "/-/__probe", ca or local_ca(fleet.root))
    except (httpx.HTTPError, ssl.SSLError, OSError):
        return None
    if r.status_code != 200:
        return None
    return Path(r.json()["dataPath"]).parent.name


def _refused(fleet: FleetHarness, *args: str, code: int) -> str:
    result = fleet.cli(*args, check=False)
    assert result.code == code, f"{args} gave {result.code}:\n{result.out}\n{result.err}"
    return " ".join((result.out + result.err).split())


def test_hosts_first_then_create_is_refused_and_the_edge_keeps_following(
        fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    _running_fleet(fleet, release_zips, "alice")
    fleet.cli("instance", "hosts", "alice", "Carol.LOCALHOST.")
    assert fleet.cli("instance", "hosts", "alice", "--json").json() == ["alice.localhost", "carol.localhost"]
    said = _refused(fleet, "instance", "create", "carol", "--release", "13.345", code=4)
    assert "carol.localhost" in said and "extra hostname of instance alice" in said
    assert "foundry-fleet instance hosts alice" in said  # what to do about it
    assert "carol" not in [i["name"] for i in fleet.cli("instance", "list", "--json").json()]
    # Also when the host comes with the create (an extra hostname that is alice's own host).
    _refused(fleet, "instance", "create", "dora", "--release", "13.345", "--extra-host", "ALICE.localhost", code=4)

    # The edge was never handed a bad config: later changes still reach it.
    fleet.cli("instance", "create", "dave", "--release", "13.345")
    wait_until(lambda: _served_instance(fleet, "dave.localhost") == "dave", 20, "dave through the edge")
    assert _served_instance(fleet, "carol.localhost") == "alice"
    status = fleet.cli("status", "--json").json()
    assert status["edge"]["in_sync"] is True and status["edge"]["host_conflicts"] == []
    assert not [e for e in fleet.cli("events", "--json").json() if e["action"] == "edge.config"]


def test_create_then_hosts_is_refused_whatever_the_spelling(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    _running_fleet(fleet, release_zips, "alice", "carol")
    for spelling in ("carol.localhost", "CAROL.localhost", "carol.localhost.", "Ｃarol.localhost"):
        said = _refused(fleet, "instance", "hosts", "alice", spelling, code=4)
        assert "carol.localhost is already the own host of instance carol" in said
    for spelling in ("fleet.localhost", "Fleet.Localhost."):
        assert "the fleet's own host" in _refused(fleet, "instance", "hosts", "alice", spelling, code=4)
    assert "own host" in _refused(fleet, "instance", "hosts", "alice", "alice.localhost", code=2)
    for literal in ("127.0.0.1", "[::1]", "0x7f.1", "2130706433"):
        assert "IP address" in _refused(fleet, "instance", "hosts", "alice", literal, code=2)
    # Another instance's extra hostname is taken too, and a refused list changes nothing.
    fleet.cli("instance", "hosts", "carol", "games.example.org")
    assert "extra hostname of instance carol" in _refused(
        fleet, "instance", "hosts", "alice", "mine.example.org", "GAMES.example.org", code=4)
    assert fleet.cli("instance", "hosts", "alice", "--json").json() == ["alice.localhost"]

    fleet.cli("instance", "hosts", "alice", "games.alice.localhost")
    wait_until(lambda: _served_instance(fleet, "games.alice.localhost") == "alice", 20, "alice's extra host")
    assert _served_instance(fleet, "carol.localhost") == "carol"
    assert _served_instance(fleet, "alice.localhost") == "alice"


def test_two_claims_at_once_cannot_both_win(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    for name in ("alice", "bob"):
        create_offline(fleet, name)
    config = load_config(fleet.config)

    def race(*claims: tuple[str, ...]) -> list[str]:
        """Start every claim while the hosts lock is held elsewhere, then let them all go at once."""
        results: list[str] = []
        held = FileLock(str(config.paths.run / "locks" / "hosts.lock"))
        held.acquire()

        def claim(kind: str, *args: str) -> None:
            svc = open_services(config)
            try:
                if kind == "hosts":
                    svc.hostnames.set_extra_hosts(args[0], list(args[1:]))
                else:
                    svc.provisioning.create("cli:test", args[0], "13.345", start=False)
                results.append("ok")
            except Conflict:
                results.append("conflict")

        threads = [threading.Thread(target=claim, args=c) for c in claims]
        for t in threads:
            t.start()
        time.sleep(0.5)  # deliberately: time for a claim that ignored the lock to go ahead
        assert results == [], "a claim went ahead without the hosts lock"
        held.release()
        for t in threads:
            t.join(60)
        return sorted(results)

    def claimants(host: str) -> list[str]:
        return [v.name for v in open_services(config).instances.list() if host in v.hosts]

    assert race(("hosts", "alice", "shared.example.org"), ("hosts", "bob", "Shared.Example.org")) == ["conflict", "ok"]
    assert len(claimants("shared.example.org")) == 1
    assert race(("create", "carol"), ("hosts", "bob", "carol.localhost")) == ["conflict", "ok"]
    assert len(claimants("carol.localhost")) == 1
    assert open_services(config).hostnames.conflicts() == []


def test_the_setup_wizard_refuses_a_name_whose_host_is_taken(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    from foundry_fleet.services.wizard import RELEASE

    fleet.cli("release", "add", str(release_zips["node"]))
    create_offline(fleet, "alice", extra_hosts=("carol.localhost",))
    svc = open_services(load_config(fleet.config), actor="test")
    tenant = "333333333333333333"
    make_invites(svc).create(tenant, "7d")
    wizard = make_wizard(svc)
    wizard.start(tenant)
    with pytest.raises(Conflict, match="the name carol is taken") as taken:
        wizard.submit_details(tenant, "Carol", "ABCD-EFGH-IJKL-MNOP-QRST-UVWX")
    assert "alice" not in f"{taken.value.message} {taken.value.hint}"  # a tenant is not told whose
    assert wizard.submit_details(tenant, "dora", "ABCD-EFGH-IJKL-MNOP-QRST-UVWX").step == RELEASE


def test_an_old_database_with_collisions_still_starts_and_serves_one_instance_per_host(
        fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    _running_fleet(fleet, release_zips, "alice", "bob", "carol")
    fleet.stop_daemons()
    # What a fleet before the check could hold (and an invalid hostname it accepted).
    fleet.sql("UPDATE instances SET extra_hosts = ? WHERE name = 'alice'",
              '["carol.localhost", "shared.example.org", "127.0.0.1"]')
    fleet.sql("UPDATE instances SET extra_hosts = ? WHERE name = 'bob'", '["shared.example.org"]')
    offline = fleet.cli("status").out
    assert "host carol.localhost is not served for alice" in " ".join(offline.split())
    fleet.up()
    # Each re-attached instance is served once its health check passes, in whatever order they do.
    for host, holder in (("carol.localhost", "carol"), ("shared.example.org", "alice"),  # alice: the older
                         ("alice.localhost", "alice"), ("bob.localhost", "bob")):
        wait_until(lambda host=host, holder=holder: _served_instance(fleet, host) == holder, 20,
                   f"{holder} served at {host}")
    # The backups app and the TLS permission answer alike.
    svc = open_services(load_config(fleet.config))
    assert svc.hostnames.instance_for_host("carol.localhost") == "carol" and svc.hostnames.instance_for_host("Shared.Example.org") == "alice"
    assert "127.0.0.1" not in svc.hostnames.known_hosts()
    status = fleet.cli("status", "--json").json()["edge"]
    assert status["in_sync"] is True
    assert {(c["host"], c["instance"], c["holder"]) for c in status["host_conflicts"]} == {
        ("carol.localhost", "alice", "carol"), ("shared.example.org", "bob", "alice"), ("127.0.0.1", "alice", None)}
    reported = {(e["target"], e["outcome"]) for e in fleet.cli("events", "--json", "--limit", "200").json()
                if e["action"] == "edge.hosts"}
    assert reported == {("alice", "failed"), ("bob", "failed")}
    # And told as status updates (the log stands in for Discord here), though recorded as the daemon started.
    # In plain text: the console is not Discord, so no markdown reaches it.
    wait_until(lambda: "status: bob asks for a hostname the edge does not serve it"
               in " ".join(fleet.daemon_log().split()), 20, "the status update about bob's hostname")
    assert "**bob**" not in fleet.daemon_log()
    # Setting the hosts again settles it (through the same check, which still sees bob's claim).
    assert "extra hostname of instance bob" in _refused(fleet, "instance", "hosts", "alice", "shared.example.org", code=4)
    fleet.cli("instance", "hosts", "bob", "--clear")
    fleet.cli("instance", "hosts", "alice", "shared.example.org")
    assert fleet.cli("status", "--json").json()["edge"]["host_conflicts"] == []


def test_status_shows_the_edge_out_of_date_while_caddy_refuses(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    _running_fleet(fleet, release_zips, "alice")
    ca_dir = local_ca(fleet.root).parent
    saved = {f.name: f.read_bytes() for f in ca_dir.iterdir()}
    trusted = fleet.root.parent / "root.crt"  # what a browser that trusts the local CA keeps
    trusted.write_bytes(saved["root.crt"])
    try:
        # A broken local CA on disk: Caddy refuses every new config (and keeps the one it has).
        for f in ca_dir.iterdir():
            f.write_text("not a certificate")
        fleet.cli("instance", "create", "bob", "--release", "13.345")
        edge = fleet.cli("status", "--json").json()["edge"]
        assert edge["in_sync"] is False and "root certificate" in edge["problem"]
        text = " ".join(fleet.cli("status").out.split())
        assert "edge: out of date since" in text and "root certificate" in text
        events = [e for e in fleet.cli("events", "--json").json() if e["action"] == "edge.config"]
        assert [(e["target"], e["outcome"]) for e in events] == [("edge", "failed")]
        assert _served_instance(fleet, "alice.localhost", trusted) == "alice"  # the last good config
        assert _served_instance(fleet, "bob.localhost", trusted) is None
        wait_until(lambda: "status: edge is out of date" in " ".join(fleet.daemon_log().split()), 20,
                   "the status update about the edge")
    finally:
        for name, data in saved.items():
            (ca_dir / name).write_bytes(data)
    fleet.cli("instance", "stop", "bob")  # the next change is tried at once
    wait_until(lambda: fleet.cli("status", "--json").json()["edge"]["in_sync"], 20, "the edge to catch up")
    assert "edge: up to date" in fleet.cli("status").out
    assert [e["outcome"] for e in fleet.cli("events", "--json").json() if e["action"] == "edge.config"] == ["failed", "ok"]


# --- redirect and cookies, through real Caddy and a stand-in Foundry ----------------------------------


@dataclass
class Edgeside:
    http_port: int
    https_port: int
    ca: Path


@pytest.fixture(scope="module")
def edge_with_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edgeside]:
    tmp = tmp_path_factory.mktemp("edge")
    port = free_port()
    data = tmp / "alice" / "data"
    write_options(data)
    proc = spawn_standin(standin_source_dir() / "main.js", port, data, stdout_path=tmp / "standin.log")
    base = port_block()
    socket_path = tmp / "admin.sock"
    settings = EdgeSettings(http_port=base, https_port=base + 1, tls="internal", fleet_host="fleet.localhost",
                            web_dial="127.0.0.1:9", admin_listen=f"unix/{socket_path}", domain="localhost")
    caddy = ManagedCaddy(find_caddy(None), tmp / "edge", socket_path, tmp / "caddy.log")
    caddy.write_config(build_caddy_config(settings, [TenantSite("alice", ("alice.localhost",), f"127.0.0.1:{port}", "running")]))
    caddy.start()
    admin = CaddyAdmin(socket_path)
    try:
        wait_for_status(port, proc)
        caddy.wait_ready(admin.ping)
        ca = caddy.local_ca_root()
        wait_until(lambda: ca.exists() and serves_certificate(base + 1, "alice.localhost", ca), 20, "alice's certificate")
        yield Edgeside(base, base + 1, ca)
    finally:
        admin.close()
        caddy.stop()
        proc.kill()
        proc.wait()


def test_the_http_redirect_never_follows_a_host_the_fleet_does_not_serve(edge_with_standin: Edgeside) -> None:
    e = edge_with_standin
    ok = http(e.http_port, "alice.localhost", "/-/join?x=1")
    assert ok.status_code == 308 and ok.headers["location"] == f"https://alice.localhost:{e.https_port}/-/join?x=1"
    assert http(e.http_port, "fleet.localhost", "/health").status_code == 308
    for host in ("evil.example", "alice.localhost.evil.example", "127.0.0.1", "{http.request.host}", "x"):
        r = http(e.http_port, host, "/-/join")
        # (Go itself answers 400 to a Host header that is not a hostname at all.)
        assert r.status_code in (400, 404) and "location" not in r.headers, host


def test_an_unknown_name_of_the_fleets_domain_finds_no_certificate_and_a_name_in_capitals_no_route(
        edge_with_standin: Edgeside) -> None:
    """What the tenant map changed (README, "At scale"): plain HTTP to any `<label>.<domain>` is sent on to
    HTTPS (one wildcard, not a list of every host), where an unknown one gets no certificate; the map
    compares the host as sent, so a tenant host in capitals (which browsers never send) is hung up on."""
    e = edge_with_standin
    r = http(e.http_port, "nobody.localhost", "/-/")
    assert r.status_code == 308 and r.headers["location"] == f"https://nobody.localhost:{e.https_port}/-/"
    with pytest.raises(httpx.ConnectError):
        https(e.https_port, "nobody.localhost", "/-/", e.ca)
    assert https(e.https_port, "alice.localhost", "/-/api/status", e.ca).status_code == 200
    with httpx.Client(verify=tls_context(e.ca), timeout=10) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(f"https://127.0.0.1:{e.https_port}/-/api/status", headers={"Host": "ALICE.localhost"},
                   extensions={"sni_hostname": "alice.localhost"})


def test_the_fleets_cookies_never_reach_tenant_code(edge_with_standin: Edgeside) -> None:
    e = edge_with_standin

    def received(cookie: str) -> str | None:
        r = https(e.https_port, "alice.localhost", "/-/__headers", e.ca, headers={"Cookie": cookie})
        assert r.status_code == 200
        return r.json()["headers"].get("cookie")

    secret = "__Host-fleet_backups=admin-session.signature"
    assert received(f"session=abc; {secret}; theme=dark") == "session=abc; theme=dark"
    assert received(f"{secret}; session=abc") == "session=abc"
    assert received(f"session=abc; {secret}") == "session=abc"
    assert received(f"{secret}; __Host-fleet_login_ab12=x; __HOST-FLEET_BACKUPS=y;session=abc") == "session=abc"
    assert not received(secret)
    assert received("session=abc; my__Host-fleet_backups=mine") == "session=abc; my__Host-fleet_backups=mine"

    # Two Cookie header lines (HTTP/1.1 clients may send them): each is cleaned.
    raw = _raw_request(e, "GET /-/__headers HTTP/1.1\r\nHost: alice.localhost\r\n"
                          f"Cookie: a=1; {secret}\r\nCookie: {secret}; b=2\r\nConnection: close\r\n\r\n")
    assert "admin-session" not in raw and "a=1" in raw and "b=2" in raw

    # Nor can tenant code plant one: its Set-Cookie for such a name reaches the browser empty.
    planted = https(e.https_port, "alice.localhost", "/-/__headers?set-cookie=__Host-fleet_backups%3Dtenant%3B%20Path%3D%2F"
                    "&set-cookie=session%3Dtenant-own%3B%20Path%3D%2F", e.ca)
    set_cookies = planted.headers.get_list("set-cookie")
    assert "session=tenant-own; Path=/" in set_cookies
    assert not [c for c in set_cookies if "fleet" in c.lower()]


def _raw_request(e: Edgeside, request: str) -> str:
    ctx = ssl.create_default_context(cafile=str(e.ca))
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="alice.localhost") as tls:
            tls.sendall(request.encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")

