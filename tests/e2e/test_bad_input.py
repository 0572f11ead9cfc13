"""Bad input through the CLI: each a clear error, and nothing half-made left behind."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness

PACKAGE = json.dumps({"name": "foundryvtt", "version": "13.345", "release": {"generation": 13, "build": 345}})


def _zip(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


def _cache_is_clean(fleet: FleetHarness) -> None:
    releases = fleet.root / "releases"
    versions = list((releases / "versions").glob("*")) if (releases / "versions").exists() else []
    zips = list((releases / "zips").glob("*")) if (releases / "zips").exists() else []
    tmp = list((releases / "tmp").glob("*")) if (releases / "tmp").exists() else []
    assert (versions, zips, tmp) == ([], [], []), "nothing may be left in the release cache"
    assert fleet.cli("release", "list", "--json").json() == []


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("traversal", ".."),
        ("absolute", "absolute"),
        ("link-out", "link"),
        ("bomb", "too large"),
        ("exe", "Windows"),
        ("dmg", "macOS"),
        ("no-entry", "entry point"),
        ("not-a-zip", "not a zip"),
    ],
)
def test_evil_release_zips_are_refused(tmp_path: Path, kind: str, says: str) -> None:
    fleet = make_fleet(tmp_path, **{"max_unpacked_mb = 4096": "max_unpacked_mb = 1"})
    z = tmp_path / f"{kind}.zip"
    if kind == "traversal":
        _zip(z, {"main.js": b"", "package.json": PACKAGE.encode(), "../../escape.txt": b"x"})
    elif kind == "absolute":
        _zip(z, {"main.js": b"", "package.json": PACKAGE.encode(), "/tmp/escape.txt": b"x"})
    elif kind == "link-out":
        _zip(z, {"main.js": b"", "package.json": PACKAGE.encode()}, links={"resources/passwd": "../../../etc/passwd"})
    elif kind == "bomb":
        _zip(z, {"main.js": b"", "package.json": PACKAGE.encode(), "big.bin": b"\0" * (8 << 20)})
    elif kind == "exe":
        z = tmp_path / "FoundryVTT-Setup.exe"
        z.write_bytes(b"MZ\x90\x00" + b"\0" * 4096)
    elif kind == "dmg":
        z = tmp_path / "FoundryVTT.dmg"
        z.write_bytes(b"\0" * 4096 + b"koly" + b"\0" * 508)
    elif kind == "no-entry":
        _zip(z, {"README.txt": b"hello"})
    else:
        z.write_text("just text")
    r = fleet.cli("release", "add", str(z), check=False)
    assert r.code != 0
    assert says.lower() in r.err.lower(), r.err
    assert "Traceback" not in r.err
    _cache_is_clean(fleet)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/escape.txt").exists()


def test_unknown_release_invalid_and_duplicate_names(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.up()
    r = fleet.cli("instance", "create", "gm", "--release", "13.999", check=False)
    assert r.code == 3 and "release 13.999 is not in this fleet" in r.err
    fleet.cli("release", "add", str(release_zips["node"]))
    for bad, says in (("Bad_Name", "DNS label"), ("fleet", "reserved"), ("x" * 64, "63"), ("-a", "DNS label")):
        r = fleet.cli("instance", "create", "--release", "13.345", "--", bad, check=False)
        assert r.code == 2 and says in r.err, r.err
    r = fleet.cli("instance", "create", "gm", "--release", "13.345", "--license", "not-a-key", check=False)
    assert r.code == 2 and "license key" in r.err
    r = fleet.cli("instance", "create", "gm", "--release", "13.345", "--owner", "bob", check=False)
    assert r.code == 2 and "Discord user id" in r.err
    assert fleet.cli("instance", "list", "--json").json() == []
    assert not (fleet.root / "instances" / "gm").exists()

    fleet.cli("instance", "create", "gm", "--release", "13.345", "--no-start")
    r = fleet.cli("instance", "create", "gm", "--release", "13.345", check=False)
    assert r.code == 4 and "already exists" in r.err
    assert len(fleet.cli("instance", "list", "--json").json()) == 1


def test_port_exhaustion(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    fleet = make_fleet(tmp_path)
    text = fleet.config.read_text()
    low = int(text.split("port_range = [")[1].split(",")[0])
    fleet.edit_config(f"port_range = [{low}, {low + 49}]", f"port_range = [{low}, {low + 1}]")
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    try:
        fleet.cli("instance", "create", "one", "--release", "13.345", "--no-start")
        fleet.cli("instance", "create", "two", "--release", "13.345", "--no-start")
        r = fleet.cli("instance", "create", "three", "--release", "13.345", check=False)
        assert r.code == 4 and "no free port" in r.err and "port_range" in r.err
        assert [i["name"] for i in fleet.cli("instance", "list", "--json").json()] == ["one", "two"]
        assert not (fleet.root / "instances" / "three").exists()
    finally:
        fleet.tear_down()


def test_missing_node_binary(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    fleet = make_fleet(tmp_path, **{'default = "node"': 'default = "/opt/nowhere/bin/node"'})
    r = fleet.cli("release", "add", str(release_zips["node"]), check=False)
    assert r.code != 0 and "/opt/nowhere/bin/node" in r.err and 'binaries."13"' in r.err


def test_node_too_new_for_the_release(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    # v14 needs Node.js 24; this host's node is 20.
    from foundry_fleet.domain.release import ReleaseLayout
    from tests.support.foundry_standin import build_release_zip

    z = build_release_zip(tmp_path, ReleaseLayout.NODE, 14, 350)
    fleet = make_fleet(tmp_path)
    r = fleet.cli("release", "add", str(z), check=False)
    assert r.code != 0 and "needs Node.js 24" in r.err


def test_download_from_a_private_address_is_refused(fleet: FleetHarness) -> None:
    fleet.edit_config('allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com"]',
                      'allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com", "127.0.0.1", "localhost"]')
    for url in ("https://127.0.0.1/FoundryVTT-13.345.zip?verify=SECRET", "https://localhost/x.zip?verify=SECRET"):
        r = fleet.cli("release", "add", url, check=False)
        assert r.code != 0 and "private" in r.err.lower(), r.err
        assert "SECRET" not in r.err + r.out
    r = fleet.cli("release", "add", "http://foundryvtt.com/x.zip", check=False)
    assert r.code != 0 and "https" in r.err.lower()
    r = fleet.cli("release", "add", "https://example.org/x.zip", check=False)
    assert r.code != 0 and "allow" in r.err.lower()


def test_release_in_use_cannot_be_removed(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    fleet.cli("instance", "create", "gm", "--release", "13.345", "--no-start")
    r = fleet.cli("release", "remove", "13.345", "--yes", check=False)
    assert r.code == 4 and "in use by gm" in r.err
    fleet.cli("instance", "delete", "gm", "--purge", "--yes")
    fleet.cli("release", "remove", "13.345", "--yes")
    assert fleet.cli("release", "list", "--json").json() == []


def test_interrupted_creation_is_rolled_back(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    """A creator killed half-way leaves a `creating` row and some files: the next start removes both."""
    import time

    fleet.cli("release", "add", str(release_zips["node"]))
    now = time.time()
    fleet.sql(
        "insert into instances (name, release_version, port, desired, state, state_reason, restarts, crash_times,"
        " created_at, updated_at) values ('half', '13.345', 1, 'running', 'creating', '', 0, '[]', ?, ?)",
        now, now,
    )
    (fleet.root / "instances" / "half" / "data" / "Config").mkdir(parents=True)
    fleet.up()
    assert fleet.cli("instance", "list", "--json").json() == []
    assert not (fleet.root / "instances" / "half").exists()
    events = fleet.cli("events", "--instance", "half", "--json").json()
    assert events and "interrupted" in events[-1]["message"]
