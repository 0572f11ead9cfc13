"""`release add VERSION --account FILE` and `instance create --license-from-account FILE` through the real CLI,
against the stand-in foundryvtt.com on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundry_fleet.domain.release import ReleaseLayout
from tests.support.foundry_standin import build_release_zip
from tests.support.foundryvtt_standin import (
    KEYS, PASSWORD, FoundrySite, foundry_site, foundry_site_session, write_account_file,
)
from tests.support.harness import FleetHarness

__all__ = ["foundry_site", "foundry_site_session"]  # fixtures


@pytest.fixture
def site_fleet(fleet: FleetHarness, foundry_site: FoundrySite, tmp_path: Path) -> FleetHarness:
    foundry_site.state.zips[345] = build_release_zip(tmp_path / "zips", ReleaseLayout.NODE, 13, 345).read_bytes()
    fleet.edit_config('allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com"]',
                      'allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com", "127.0.0.1"]\n'
                      f'allow_private_addresses = true\nextra_ca_file = "{foundry_site.cert}"\n'
                      f'account_site = "{foundry_site.base}"')
    return fleet


def test_release_add_from_an_account_logs_in_once_then_uses_the_cache(
    site_fleet: FleetHarness, foundry_site: FoundrySite, tmp_path: Path
) -> None:
    account = write_account_file(tmp_path / "account")
    r = site_fleet.cli("release", "add", "13.345", "--account", str(account))
    assert "release 13.345 ready" in r.out
    assert foundry_site.state.logins == 1 and foundry_site.count("GET /presigned/") == 1
    for text in (r.out, r.err):
        assert PASSWORD not in text and "SECRET-SIGNATURE" not in text
    listed = site_fleet.cli("release", "list", "--json").json()
    assert [row["version"] for row in listed] == ["13.345"]
    assert "SECRET-SIGNATURE" not in json.dumps(listed)
    requests = len(foundry_site.state.requests)
    site_fleet.cli("release", "add", "13.345", "--account", str(account))
    assert len(foundry_site.state.requests) == requests  # cached: no login at all
    events = site_fleet.cli("events", "--json")
    assert any(e.get("action") == "release.add" for e in events.json()), events.out
    assert PASSWORD not in events.out and "SECRET-SIGNATURE" not in events.out


def test_release_add_with_a_wrong_password_says_so_without_it(
    site_fleet: FleetHarness, foundry_site: FoundrySite, tmp_path: Path
) -> None:
    account = write_account_file(tmp_path / "account", password="hunter2-wrong")
    r = site_fleet.cli("release", "add", "13.345", "--account", str(account), check=False)
    assert r.code != 0 and "refused the username or password" in r.err and str(account) in r.err, r.err
    assert "hunter2" not in r.out + r.err and "Traceback" not in r.err


def test_instance_create_takes_the_license_from_the_account(
    site_fleet: FleetHarness, foundry_site: FoundrySite, tmp_path: Path
) -> None:
    account = write_account_file(tmp_path / "account")
    site_fleet.cli("release", "add", "13.345", "--account", str(account))
    r = site_fleet.cli("instance", "create", "gm", "--release", "13.345", "--license-from-account", str(account),
                       "--license-index", "3", check=False)
    assert r.code != 0 and "no key number 3" in r.err, r.err
    site_fleet.up()
    site_fleet.cli("instance", "create", "gm", "--release", "13.345", "--license-from-account", str(account),
                   "--license-index", "2", "--no-start")
    license_json = Path(site_fleet.instance("gm")["data_dir"], "Config", "license.json").read_text()
    assert KEYS[1].replace("-", "") in license_json
