"""Issue 8's smaller attacks on sign-in, plans and configuration: each one run, and each one refused."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import httpx
import pytest

from foundry_fleet.api.client import ControlClient

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.invites import parse_expiry
from foundry_fleet.services.wiring import open_fleet
from tests.conftest import make_fleet
from tests.edge_support import https, local_ca, served_certificate
from tests.harness import kill_processes_with, wait_until
from tests.standin import run_in_instance


@pytest.mark.parametrize("text", ["inf", "nan", "1e999d", f"{10**400}s", "99999999999999999999999999y"])
def test_an_invite_that_never_expires_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_expiry(text)


def test_a_plan_keeping_billions_of_snapshots_is_refused_and_the_old_plan_kept(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    fleet = make_fleet(tmp_path)
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.cli("instance", "create", "alice", "--release", "13.345", "--no-start")
    fleet.cli("backup", "plan", "alice", "2d=>1h")
    bad = fleet.cli("backup", "plan", "alice", "100y=>1s", check=False)
    assert bad.code == 2 and "3,155,760,000 snapshots" in bad.err and "10,000" in bad.err
    assert fleet.cli("backup", "plan", "alice").out.strip() == "2d=>1h"
    backups = Backups(open_fleet(fleet.settings()))
    with pytest.raises(InvalidInput, match="more than the limit"):
        backups.set_plan("alice", "1y=>1min")
    assert str(backups.plan_for("alice")) == "2d=>1h"


# --- /tls/permission answers Caddy alone ------------------------------------------------------------


def _try_cert(port: int, host: str, ca: Path) -> dict | None:
    try:
        return served_certificate(port, host, ca)
    except (ssl.SSLError, OSError):
        return None


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
        cert = wait_until(lambda: _try_cert(https_port, "alice.localhost", ca), 20, "an on-demand certificate")
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
            for guess in ("", "/", f"/{'0' * 64}", f"/{secret[:-1]}", f"/{secret}x", f"/{secret.upper()}"):
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
        fleet.stop_daemons()
        kill_processes_with(str(fleet.root))
