"""Issue 8's smaller attacks on sign-in, plans and configuration: each one run, and each one refused."""

from __future__ import annotations

import os
import signal
import ssl
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundry_fleet.api.client import ControlClient

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.domain.uid_blocks import FIRST_BLOCK, LEGACY_BLOCK, first_free_block, overlaps
from foundry_fleet.runtime import procfs
from foundry_fleet.services import uid_claims
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.invites import parse_expiry
from foundry_fleet.wiring.services import make_backups, open_services
from tests.support.fleets import make_fleet
from tests.support.edge_client import certificate_or_none, https, local_ca, served_certificate
from tests.support.harness import wait_until
from tests.support.foundry_standin import run_in_instance


@pytest.mark.parametrize("text", ["inf", "nan", "1e999d", f"{10**400}s", "99999999999999999999999999y"])
def test_an_invite_that_never_expires_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_expiry(text)


def test_a_plan_keeping_billions_of_snapshots_is_refused_and_the_old_plan_kept(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    fleet = make_fleet(tmp_path)
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.up()
        fleet.cli("instance", "create", "alice", "--release", "13.345", "--no-start")
        fleet.cli("backup", "plan", "alice", "2d=>1h")
        bad = fleet.cli("backup", "plan", "alice", "100y=>1s", check=False)
        assert bad.code == 2 and "3,155,760,000 snapshots" in bad.err and "10,000" in bad.err
        assert fleet.cli("backup", "plan", "alice").out.strip() == "2d=>1h"
        backups = make_backups(open_services(fleet.settings()))
        with pytest.raises(InvalidInput, match="more than the limit"):
            backups.set_plan("alice", "1y=>1min")
        assert str(backups.plan_for("alice")) == "2d=>1h"
    finally:
        fleet.tear_down()


# --- /tls/permission answers Caddy alone ------------------------------------------------------------


def _answer(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    return response.status_code, response.content, sorted((k, v) for k, v in response.headers.items() if k != "date")


def test_tenant_hosts_cannot_be_enumerated_through_the_tls_permission_check(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    fleet = make_fleet(tmp_path, **{'tls = "internal"': 'tls = "on-demand"'})
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.up()
        client = ControlClient(fleet.socket)
        alice = client.create_instance(name="alice", release="13.345")["instance"]
        client.create_instance(name="bob", release="13.345")
        cfg = fleet.settings()
        https_port, web = cfg.edge.https_port, f"http://127.0.0.1:{cfg.edge.web_port}"
        ca = local_ca(fleet.root)

        # Caddy still asks, and tenant hosts still get their certificates on demand; others none.
        cert = wait_until(lambda: certificate_or_none(https_port, "alice.localhost", ca), 20, "an on-demand certificate")
        assert ("DNS", "alice.localhost") in cert["subjectAltName"]
        with pytest.raises(ssl.SSLError):
            served_certificate(https_port, "stranger.localhost", ca)

        secret_file = fleet.root / "state" / "tls-permission.key"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) == 64

        # From outside, through the edge's fleet host: nothing, with or without a guess at the secret.
        for path in ("/tls/permission?domain=alice.localhost", f"/tls/permission/{'0' * 64}?domain=alice.localhost",
                     f"/tls/permission/{secret}?domain=alice.localhost"):
            assert https(https_port, "fleet.localhost", path, ca).status_code == 404, path

        # Directly on the web port, without the secret: the same answer for a tenant host, a stranger,
        # and a path that does not exist at all.
        with httpx.Client(timeout=10) as http_client:
            nothing = _answer(http_client.get(f"{web}/no/such/path"))
            assert nothing[0] == 404
            for guess in ("", "/", f"/{'0' * 64}", f"/{secret[:-1]}", f"/{secret}x", f"/{secret.upper()}",
                          f"/{'%C3%A9' * 64}", "/%ED%A0%80"):
                for domain in ("alice.localhost", "bob.localhost", "stranger.localhost"):
                    url = f"{web}/tls/permission{guess}?domain={domain}"
                    assert _answer(http_client.get(url)) == nothing, url
            # The check does answer whoever holds the secret (Caddy): the 404s above are not a broken route.
            assert http_client.get(f"{web}/tls/permission/{secret}?domain=alice.localhost").status_code == 200
            assert http_client.get(f"{web}/tls/permission/{secret}?domain=stranger.localhost").status_code == 403

        # From inside a tenant's instance, the same: a host that exists is told apart from none.
        probe = ("for d in bob.localhost stranger.localhost; do node -e \"fetch('" + web +
                 "/tls/permission?domain='+process.argv[1]).then(r=>r.text().then(t=>console.log(r.status,t)))"
                 ".catch(e=>console.log('unreachable'))\" $d; done")
        seen = run_in_instance(alice["port"], probe)
        lines = str(seen["stdout"]).split()
        assert len(set(str(seen["stdout"]).splitlines())) == 1 and lines, seen

        # The secret is in no config, autosave, log or `edge show` output.
        assert secret not in fleet.cli("edge", "show").out
        for path in fleet.root.rglob("*"):
            if path.is_file() and path != secret_file and not path.is_relative_to(fleet.root / "instances"):
                assert secret.encode() not in path.read_bytes(), path
        client.close()
    finally:
        fleet.tear_down()


# --- every fleet on a host has uids of its own ---------------------------------------------------------


taken_ranges = st.lists(st.tuples(st.integers(0, 3_000_000), st.integers(0, 300_000)).map(lambda t: (t[0], t[0] + t[1])),
                        max_size=30)


@settings(max_examples=300, deadline=None)
@given(taken_ranges, st.sampled_from([1, 10, 65536]))
def test_the_free_block_touches_nothing_taken_and_is_the_lowest(taken: list[tuple[int, int]], size: int) -> None:
    block = first_free_block(taken, size=size, start=FIRST_BLOCK, last=2**31 - 1)
    assert block is not None
    low, high = block
    assert high - low + 1 == size and (low - FIRST_BLOCK) % size == 0
    assert not any(overlaps(block, r) for r in taken)
    assert all(any(overlaps((lo, lo + size - 1), r) for r in taken) for lo in range(FIRST_BLOCK, low, size))


def test_init_gives_each_fleet_its_own_block(tmp_path: Path) -> None:
    first = load_config(init_fleet(tmp_path / "one")).instances.uid_range
    second = load_config(init_fleet(tmp_path / "two")).instances.uid_range
    assert not overlaps(first, second)
    for block in (first, second):
        assert block[1] - block[0] + 1 == 65536
        # Not the block every fleet had before (those fleets keep it), no user's, group's or subuid's.
        assert not overlaps(block, LEGACY_BLOCK)
        assert not any(overlaps(block, r) for r in uid_claims.host_ids())
    # Re-made with --force, a fleet keeps to the blocks others hold.
    again = load_config(init_fleet(tmp_path / "one", force=True)).instances.uid_range
    assert not overlaps(again, second)
    claims = {c.root: c.range for c in uid_claims.read_claims()}
    assert claims[str((tmp_path / "two").resolve())] == second
    assert claims[str((tmp_path / "one").resolve())] == again


def test_stale_claims_and_subordinate_ranges(tmp_path: Path) -> None:
    registry = tmp_path / "claims"
    live, gone = tmp_path / "live", tmp_path / "gone"
    live.mkdir()
    gone.mkdir()
    uid_claims.check_and_claim(live, (400000, 465535), set(), registry)
    uid_claims.check_and_claim(gone, (600000, 665535), set(), registry)
    (registry / "junk.json").write_text("{not json")
    with pytest.raises(Conflict, match=f"fleet at {live}"):
        uid_claims.check_and_claim(tmp_path / "other", (465535, 465535), set(), registry)
    gone.rmdir()
    # A claim whose fleet root is gone holds nothing (and is removed once someone may write).
    new = tmp_path / "new"
    new.mkdir()
    uid_claims.check_and_claim(new, (600000, 600010), set(), registry)
    assert {c.root: c.range for c in uid_claims.read_claims(registry)} == {
        str(live): (400000, 465535), str(new): (600000, 600010)}
    assert len(list(registry.glob("*.json"))) == 3  # live, new, and the junk (skipped, not parsed)
    # A fleet claims again what it has (a restart, or a changed range), whatever it claimed before.
    uid_claims.check_and_claim(live, (700000, 700010), set(), registry)
    uid_claims.check_and_claim(tmp_path / "live", (700000, 700010), set(), registry)
    assert {c.root: c.range for c in uid_claims.read_claims(registry)}[str(live)] == (700000, 700010)
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\nbob:165536:65536\nbroken line\ncarol:x:1\n")
    assert uid_claims.subordinate_ranges(subuid) == [(100000, 165535), (165536, 231071)]


def test_a_range_holding_a_user_or_a_subuid_range_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, root = tmp_path / "claims", tmp_path / "fleet"
    root.mkdir()
    nobody = 65534  # a user every Debian host has
    with pytest.raises(Conflict, match=f"holds id {nobody} of a user, group") as e:
        uid_claims.check_and_claim(root, (nobody - 10, nobody + 10), set(), registry)
    assert "[instances] uid_range" in (e.value.hint or "")
    # Debian gives a second user's containers 165536-231071: inside the old default block.
    subuid = tmp_path / "subuid"
    subuid.write_text("bob:165536:65536\n")
    monkeypatch.setattr(uid_claims, "SUBORDINATE_FILES", (subuid,))
    with pytest.raises(Conflict, match=r"holds the range \[165536, 231071\]"):
        uid_claims.check_and_claim(root, LEGACY_BLOCK, set(), registry)
    assert not uid_claims.read_claims(registry)  # nothing claimed by a refused fleet


def test_the_daemon_refuses_uids_another_fleet_or_process_holds(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    a = make_fleet(tmp_path / "a")
    b = make_fleet(tmp_path / "b")
    sleeper = None
    try:
        a.cli("release", "add", str(release_zips["node"]))
        a.up()
        alice = ControlClient(a.socket).create_instance(name="alice", release="13.345")["instance"]
        a_range = a.settings().instances.uid_range
        assert a_range[0] <= alice["uid"] <= a_range[1]
        b_range = b.settings().instances.uid_range
        assert not overlaps(a_range, b_range)

        # b told to use a's uids: its tenants would be a's tenants' uids. Refused before anything starts.
        b.edit_config(f"uid_range = [{b_range[0]}, {b_range[1]}]", f"uid_range = [{a_range[0] + 5}, {a_range[0] + 10}]")
        refused = b.cli("up", check=False, timeout=60)
        assert refused.code != 0
        assert "uid_range" in refused.err and str(a.root) in refused.err and "[instances] uid_range" in refused.err
        assert not (b.root / "edge" / "caddy.pid").exists()

        # A process that is no instance of b's holds one of b's uids: refused too, naming it.
        b.edit_config(f"uid_range = [{a_range[0] + 5}, {a_range[0] + 10}]", f"uid_range = [{b_range[0]}, {b_range[1]}]")
        sleeper = subprocess.Popen(["setpriv", f"--reuid={b_range[0] + 7}", f"--regid={b_range[0] + 7}",
                                    "--clear-groups", "sleep", "60"])
        wait_until(lambda: uid_claims.process_ids(sleeper.pid) >= {b_range[0] + 7}, 5, "the process to drop to the uid")
        refused = b.cli("up", check=False, timeout=60)
        assert refused.code != 0 and f"process {sleeper.pid}" in refused.err and "[instances] uid_range" in refused.err
        sleeper.kill()
        sleeper.wait()

        # Once free, b starts; and a's own instances, still running after its daemon died, are a's.
        b.up()
        a.daemons[-1].send_signal(signal.SIGKILL)
        a.daemons[-1].wait()
        a.up()
        assert a.wait_state("alice", "running")["pid"] == alice["pid"]
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
        for fleet in (a, b):
            fleet.tear_down()


def test_a_server_the_fleet_started_but_never_recorded_counts_as_its_own(tmp_path: Path) -> None:
    """The daemon may die between starting a server and recording it: that server (and what runs below
    it) is still this fleet's, so the next start is not refused for it (the supervisor stops it)."""
    instances = tmp_path / "instances"
    server = subprocess.Popen(["sh", "-c", "sleep 30 & wait", "node", f"--dataPath={instances}/alice/data"])
    other = subprocess.Popen(["sh", "-c", "sleep 30 & wait", "node", f"--dataPath={tmp_path}/elsewhere/data"])
    try:
        child = wait_until(lambda: procfs.children(server.pid), 5, "the server's child")[0]
        own = uid_claims.own_processes([], instances)
        assert {server.pid, child} <= own and other.pid not in own
    finally:
        for p in (server, other):
            for c in procfs.children(p.pid):
                os.kill(c, signal.SIGKILL)
            p.kill()
            p.wait()


def test_a_fleet_without_the_key_keeps_the_old_default_only_while_nobody_else_claims_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uid_claims, "SUBORDINATE_FILES", ())  # a host whose users have no subuid ranges
    path = init_fleet(tmp_path / "old")
    lines = [line for line in path.read_text().splitlines() if not line.startswith("uid_range")]
    path.write_text("\n".join(lines) + "\n")
    assert load_config(path).instances.uid_range == LEGACY_BLOCK  # as every fleet.toml had it
    registry, second = tmp_path / "claims", tmp_path / "second-old"
    second.mkdir()
    everyone = set(procfs.all_pids())  # here only the claims are judged, not this host's processes
    uid_claims.check_and_claim(tmp_path / "old", LEGACY_BLOCK, everyone, registry)
    with pytest.raises(Conflict, match=f"overlaps the uids of the fleet at {tmp_path / 'old'}"):
        uid_claims.check_and_claim(second, LEGACY_BLOCK, everyone, registry)
    uid_claims.check_and_claim(tmp_path / "old", LEGACY_BLOCK, everyone, registry)  # its own: a restart
