"""`foundry-fleet trust`: the commands for each trust store, and which of them run here."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import ExternalFailure, NotFound
from foundry_fleet.services.trust import TrustSetup, carry_out, trust_plan

NAME = "foundry-fleet abcd1234 local CA"


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    root = tmp_path / "root.crt"
    root.write_text("-----BEGIN CERTIFICATE-----\n")
    return root


def test_installing_as_root_with_certutil_covers_the_system_chromium_and_each_firefox_profile(
        tmp_path: Path, ca: Path) -> None:
    home = tmp_path / "home"
    (home / ".mozilla" / "firefox" / "x1.default").mkdir(parents=True)
    (home / ".mozilla" / "firefox" / "x1.default" / "cert9.db").touch()
    (home / ".mozilla" / "firefox" / "no-db").mkdir()
    setup = TrustSetup(home, tmp_path / "cas", ("update-ca-certificates",), is_root=True, certutil="/usr/bin/certutil")
    steps = trust_plan(ca, "abcd1234", setup)
    nssdb = home / ".pki" / "nssdb"
    assert [(s.store, s.shown(), s.blocked) for s in steps] == [
        ("system store", [f"install -m 0644 {ca} {tmp_path}/cas/foundry-fleet-abcd1234.crt", "update-ca-certificates"],
         None),
        ("Chrome/Chromium (NSS, ~/.pki/nssdb)", [
            f"mkdir -p {nssdb}", f"/usr/bin/certutil -N -d sql:{nssdb} --empty-password",
            f"/usr/bin/certutil -A -d sql:{nssdb} -n '{NAME}' -t C,, -i {ca}"], None),
        ("Firefox profile x1.default", [
            f"/usr/bin/certutil -A -d sql:{home}/.mozilla/firefox/x1.default -n '{NAME}' -t C,, -i {ca}"], None),
    ]


def test_without_root_or_certutil_the_steps_are_commands_to_print(tmp_path: Path, ca: Path) -> None:
    steps = trust_plan(ca, "abcd1234", TrustSetup(tmp_path, is_root=False, certutil=None))
    assert [s.blocked for s in steps] == ["needs root", "certutil is not installed (Debian: apt-get install libnss3-tools)"]
    ran: list[Sequence[str]] = []
    said = carry_out(steps, run=lambda command: ran.append(command))  # type: ignore[func-returns-value]
    assert ran == []
    assert said[0] == "system store: needs root; run:"
    assert said[1] == f"  install -m 0644 {ca} /usr/local/share/ca-certificates/foundry-fleet-abcd1234.crt"
    assert said[2] == "  update-ca-certificates"


def test_uninstall_removes_by_name_and_needs_no_ca(tmp_path: Path) -> None:
    nssdb = tmp_path / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    (nssdb / "cert9.db").touch()
    setup = TrustSetup(tmp_path, tmp_path / "cas", ("update-ca-certificates",), is_root=True, certutil="certutil")
    steps = trust_plan(tmp_path / "missing.crt", "abcd1234", setup, uninstall=True)
    assert [s.shown() for s in steps] == [
        [f"rm -f {tmp_path}/cas/foundry-fleet-abcd1234.crt", "update-ca-certificates --fresh"],
        [f"certutil -D -d sql:{nssdb} -n '{NAME}'"],
    ]
    # A store that never had the CA: certutil -D fails, and that is what uninstall wanted.
    said = carry_out(steps, uninstall=True, run=lambda c: subprocess.CompletedProcess(c, 255 if c[1] == "-D" else 0))
    assert said == ["system store: removed", "Chrome/Chromium (NSS, ~/.pki/nssdb): removed"]


def test_a_missing_ca_says_to_start_the_fleet_and_a_failing_command_names_itself(tmp_path: Path, ca: Path) -> None:
    with pytest.raises(NotFound) as missing:
        trust_plan(tmp_path / "none.crt", "abcd1234", TrustSetup(tmp_path))
    assert "start the fleet once with `up`" in (missing.value.hint or "")
    steps = trust_plan(ca, "abcd1234", TrustSetup(tmp_path, tmp_path, ("false",), is_root=True, certutil="certutil"))
    with pytest.raises(ExternalFailure, match="system store: `false` failed: broken"):
        carry_out(steps[:1], run=lambda c: subprocess.CompletedProcess(c, 1 if c[0] == "false" else 0, "", "broken"))
