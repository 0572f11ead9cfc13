"""Tenants' backup access: listing, browsing and a streamed zip, each tenant seeing only their own."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.edge_client import https, local_ca
from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness, file_digests

pytestmark = pytest.mark.e2e
OWNER = {"X-Fleet-User": "123456789012345678"}  # what the auth service sets once a tenant signed in


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetHarness]:
    """One fleet for the module: every test here only reads its backups (lists, browses, downloads, or is
    refused), so they share the fleet and its snapshots rather than each making them again."""
    h = make_fleet(tmp_path_factory.mktemp("backup-access"))
    yield h
    h.tear_down()


@pytest.fixture(scope="module")
def door(fleet: FleetHarness, release_zips: dict[str, Path]) -> Iterator[httpx.Client]:
    """The backups socket as the edge reaches it, after the auth check said yes."""
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    for name in ("alice", "bob"):
        inst = fleet.cli("instance", "create", name, "--release", "13.345", "--no-start", "--json").json()["instance"]
        data = Path(inst["data_dir"])
        (data / "Data" / "worlds" / "w").mkdir(parents=True)
        (data / "Data" / "worlds" / "w" / "world.db").write_text(f"{name}'s world")
        (data / "Data" / "assets").mkdir()
        (data / "Data" / "assets" / "map.webp").write_bytes(os.urandom(300_000))
        (data / "Data" / "escape").symlink_to("/etc")
        (data / "Data" / "passwd").symlink_to("/etc/passwd")
        fleet.cli("backup", "now", name, "--label", "nightly")
    sock = fleet.root / "run" / "backups.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://alice.localhost", timeout=30)
    yield client
    client.close()


def _snap(door: httpx.Client, host: str) -> str:
    listed = door.get("/backups/", headers={**OWNER, "Host": host, "Accept": "application/json"}).json()
    return [s["name"] for s in listed if s["name"].startswith("nightly-")][0]


def test_each_tenant_sees_only_their_own_backups(door: httpx.Client) -> None:
    alice, bob = _snap(door, "alice.localhost"), _snap(door, "bob.localhost")
    page = door.get("/backups/", headers={**OWNER, "Host": "alice.localhost"})
    assert page.status_code == 200 and alice in page.text and "download" in page.text
    world = door.get(f"/backups/{alice}/Data/worlds/w/world.db", headers={**OWNER, "Host": "alice.localhost"})
    assert world.text == "alice's world"
    folder = door.get(f"/backups/{alice}/Data/", headers={**OWNER, "Host": "alice.localhost"})
    assert folder.status_code == 200, folder.text
    assert folder.text.index("assets/") < folder.text.index("worlds/")  # listed by name
    assert "escape" not in folder.text and "passwd" not in folder.text  # links are not shown
    # Asked for on alice's host, bob's snapshot name can only ever mean alice's own snapshot (both may
    # well be named after the same second): the host decides whose backups these are.
    other = door.get(f"/backups/{bob}/Data/worlds/w/world.db", headers={**OWNER, "Host": "alice.localhost"})
    assert other.status_code == 404 or (alice == bob and other.text == "alice's world")
    assert door.get(f"/backups/{bob}/Data/worlds/w/world.db",
                    headers={**OWNER, "Host": "bob.localhost"}).text == "bob's world"
    assert door.get("/backups/", headers={"Host": "alice.localhost"}).status_code == 403  # not signed in
    assert door.get("/backups/", headers={**OWNER, "Host": "nobody.localhost"}).status_code == 404


@pytest.mark.parametrize("path", ["..", "../bob", "../../../../etc/passwd", "Data/../../x", "%2e%2e/%2e%2e/etc",
                                  "Data/escape/passwd", "Data/passwd", ".snapshot.json"])
def test_no_way_out_of_the_snapshot(fleet: FleetHarness, door: httpx.Client, path: str) -> None:
    snap = _snap(door, "alice.localhost")
    # Sent raw: an HTTP client would tidy the dots away before they reach the server.
    status, body = raw_get(fleet.root / "run" / "backups.sock", f"/backups/{snap}/{path}", "alice.localhost")
    assert status in (400, 404), (path, status, body[:200])
    assert b"root:" not in body and b"alice's world" not in body


def raw_get(sock_path: Path, target: str, host: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Fleet-User: 1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_the_zip_download_is_exactly_the_snapshot(fleet: FleetHarness, door: httpx.Client) -> None:
    snap = _snap(door, "alice.localhost")
    r = door.get(f"/backups/{snap}.zip", headers={**OWNER, "Host": "alice.localhost"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        got = {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}
    tree = fleet.root / "snapshots" / "alice" / snap
    want = file_digests(tree)
    assert got == want and "Data/assets/map.webp" in got
    assert not any("passwd" in n or n.startswith("Data/escape") for n in got)


def test_through_the_edge_nobody_gets_in_before_signing_in(fleet: FleetHarness, door: httpx.Client) -> None:
    https_port = fleet.settings().edge.https_port
    r = https(https_port, "alice.localhost", "/backups/", local_ca(fleet.root), headers=OWNER)
    assert r.status_code == 403  # the auth service denies everyone until tenants can sign in
