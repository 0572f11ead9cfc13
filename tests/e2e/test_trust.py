"""`foundry-fleet trust` on a real fleet: its local CA goes into (and comes out of) an NSS database in a
temporary HOME, a Firefox profile's, and a stand-in system store (the env vars services/trust.py keeps for
tests), never the machine's own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.edge_client import local_ca
from tests.support.harness import BIN, FleetHarness, wait_until

pytestmark = pytest.mark.e2e
CERTUTIL = shutil.which("certutil")
needs_certutil = pytest.mark.skipif(CERTUTIL is None, reason="needs certutil: apt-get install libnss3-tools "
                                                             "(`make test` does this as root)")


def trust(fleet: FleetHarness, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "--config", str(fleet.config), "trust", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "300", **env})


def listed(db: Path) -> str:
    assert CERTUTIL is not None
    return subprocess.run([CERTUTIL, "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True,
                          timeout=30).stdout


@needs_certutil
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the system store's step runs only as root)")
def test_trust_installs_the_local_ca_in_each_store_and_uninstall_removes_it(fleet: FleetHarness, tmp_path: Path) -> None:
    assert CERTUTIL is not None
    home, cas, updates = tmp_path / "home", tmp_path / "cas", tmp_path / "updates"
    cas.mkdir()
    update = tmp_path / "update-ca-certificates"
    update.write_text(f'#!/bin/sh\necho "run $*" >> {updates}\n')
    update.chmod(0o755)
    profile = home / ".mozilla" / "firefox" / "abc.default-release"
    profile.mkdir(parents=True)
    subprocess.run([CERTUTIL, "-N", "-d", f"sql:{profile}", "--empty-password"], check=True, timeout=30)
    env = {"HOME": str(home), "FOUNDRY_FLEET_TRUST_SYSTEM_DIR": str(cas),
           "FOUNDRY_FLEET_TRUST_UPDATE_COMMAND": str(update)}

    before = trust(fleet, env)
    assert before.returncode == 3 and "start the fleet once with `up`" in " ".join(before.stderr.split())

    fleet.up()
    ca = wait_until(lambda: local_ca(fleet.root) if local_ca(fleet.root).is_file() else None, 30, "the local CA")
    nickname = f"foundry-fleet {fleet.fleet_id} local CA"
    stored = cas / f"foundry-fleet-{fleet.fleet_id}.crt"

    printed = trust(fleet, env, "--print")
    assert printed.returncode == 0, printed.stderr
    assert f"install -m 0644 {ca} {stored}" in printed.stdout and "certutil -A -d" in printed.stdout
    assert not stored.exists() and not (home / ".pki").exists()  # --print changes nothing

    done = trust(fleet, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["system store: trusted", "Chrome/Chromium (NSS, ~/.pki/nssdb): trusted",
                                        "Firefox profile abc.default-release: trusted"]
    assert stored.read_bytes() == ca.read_bytes()
    assert updates.read_text().splitlines() == ["run "]
    assert nickname in listed(home / ".pki" / "nssdb") and nickname in listed(profile)

    removed = trust(fleet, env, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not stored.exists() and updates.read_text().splitlines() == ["run ", "run --fresh"]
    assert nickname not in listed(home / ".pki" / "nssdb") and nickname not in listed(profile)
