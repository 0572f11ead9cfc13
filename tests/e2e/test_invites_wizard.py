"""Invites and the setup wizard in the service layer: lifecycle, lockout, every step, abandon/resume/cancel,
failures that leave nothing half-made, and a crash in the middle of provisioning."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound, RateLimited
from foundry_fleet.services import invites as invites_module
from foundry_fleet.wiring.services import FleetServices, make_invites, make_wizard, open_services
from foundry_fleet.services.wizard import DETAILS, DONE, PROVISIONING, READY, RELEASE
from foundry_fleet.store.models import WizardRow
from tests.support.harness import Clock, FleetHarness
from tests.support.releases import LocalHTTPS, Route

ALICE, BOB, EVE = "111111111111111111", "222222222222222222", "333333333333333333"
LICENSE = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX"


@pytest.fixture
def svc(fleet: FleetHarness, release_zips: dict[str, Path]) -> FleetServices:
    services = open_services(load_config(fleet.config), actor="test")
    # Added in this process, as these tests use the services: `release add` itself is tested through the CLI.
    services.releases.add(str(release_zips["node"]))
    return services


def test_an_invite_is_for_one_user_once_and_expires(svc: FleetServices) -> None:
    clock = Clock()
    inv = make_invites(svc, clock)
    created = inv.create(ALICE, "1h")
    assert created.code is None and created.invite.status == "pending"
    with pytest.raises(Conflict, match="already has a pending invite"):
        inv.create(ALICE, "1h")
    assert inv.pending_for(ALICE).id == created.invite.id and inv.pending_for(BOB) is None
    with pytest.raises(Conflict, match="not yours"):
        inv.require_pending(created.invite.id, BOB)
    inv.consume(created.invite.id, ALICE)
    with pytest.raises(Conflict):
        inv.consume(created.invite.id, ALICE)  # single use
    assert inv.get(created.invite.id).status == "used" and inv.pending_for(ALICE) is None

    later = inv.create(ALICE, "1h")
    clock.now += 3601
    assert inv.get(later.invite.id).status == "expired" and inv.pending_for(ALICE) is None
    with pytest.raises(Conflict):
        inv.consume(later.invite.id, ALICE)

    revoked = inv.create(BOB, "7d")
    assert inv.revoke(revoked.invite.id).status == "revoked"
    with pytest.raises(Conflict, match="revoked already"):
        inv.revoke(revoked.invite.id)
    assert [v.id for v in inv.list()] == [] and len(inv.list(include_done=True)) == 3
    for bad in ("0s", "100d", "soon"):
        with pytest.raises(InvalidInput):
            inv.create(EVE, bad)
    with pytest.raises(InvalidInput, match="not a Discord user id"):
        inv.create("alice", "1h")


def test_shareable_codes_are_strong_hashed_single_use_and_guessing_locks_out(svc: FleetServices) -> None:
    clock = Clock()
    inv = make_invites(svc, clock)
    created = inv.create(None, "1d", shareable=True)
    assert created.code is not None and len(created.code) >= 22  # 128 bits in url-safe base64
    stored = [v for v in inv.list() if v.shareable]
    assert stored and created.code not in str(stored)  # only its hash is kept
    assert inv.redeem_code(created.code, ALICE).discord_user_id == ALICE
    assert inv.redeem_code(created.code, ALICE).id == created.invite.id  # the same user again: fine
    with pytest.raises(InvalidInput):
        inv.redeem_code(created.code, BOB)  # bound to Alice now

    for _ in range(invites_module.LOCKOUT_FAILURES - 2):  # Bob's failure above counted once
        with pytest.raises(InvalidInput):
            inv.redeem_code("not-a-code", BOB)
    fresh = inv.create(None, "1d", shareable=True)
    with pytest.raises(InvalidInput):
        inv.redeem_code("still-wrong", BOB)  # the fifth
    with pytest.raises(RateLimited) as locked:
        inv.redeem_code(fresh.code or "", BOB)  # even the right code, while locked out
    assert locked.value.retry_after > 0
    clock.now += invites_module.LOCKOUT_S + 1
    assert inv.redeem_code(fresh.code or "", BOB).discord_user_id == BOB


def test_the_wizard_walks_from_invite_to_a_running_instance(svc: FleetServices) -> None:
    wizard = make_wizard(svc)
    with pytest.raises(NotFound, match="no pending invite"):
        wizard.start(ALICE)
    invite = make_invites(svc).create(ALICE, "7d").invite
    view = wizard.start(ALICE)
    assert view.step == DETAILS and view.invite_id == invite.id

    with pytest.raises(InvalidInput, match="license key"):
        wizard.submit_details(ALICE, "alice", "not a key")
    with pytest.raises(InvalidInput):
        wizard.submit_details(ALICE, "Alice's Table!", LICENSE)
    assert wizard.get(ALICE).step == DETAILS
    view = wizard.submit_details(ALICE, "Alice", LICENSE)
    assert view.step == RELEASE and view.instance_name == "alice" and view.has_license
    secrets_file = svc.config.paths.database.parent / "wizards" / f"{ALICE}.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert LICENSE.replace("-", "") not in str(view.to_dict())

    assert wizard.release_choices() == ["13.345"]
    with pytest.raises(InvalidInput, match="choose one"):
        wizard.submit_release(ALICE)
    with pytest.raises(InvalidInput, match="not in the fleet's cache"):
        wizard.submit_release(ALICE, version="13.999")
    with pytest.raises(InvalidInput, match="only https"):
        wizard.submit_release(ALICE, url="http://foundryvtt.com/x.zip")
    with pytest.raises(InvalidInput, match="not an allowed download host"):
        wizard.submit_release(ALICE, url="https://example.org/FoundryVTT.zip")
    assert wizard.submit_release(ALICE, version="13.345").step == READY

    said: list[str] = []
    created = wizard.provision(ALICE, say=said.append)
    assert created.admin_password and created.instance.owner == ALICE and created.instance.name == "alice"
    license_json = Path(created.instance.data_dir, "Config", "license.json").read_text()
    assert LICENSE.replace("-", "") in license_json
    assert wizard.get(ALICE).step == DONE and not secrets_file.exists()
    assert make_invites(svc).get(invite.id).status == "used"
    assert any("creating alice" in line for line in said)
    with pytest.raises(NotFound):
        wizard.start(ALICE)  # the invite is used: a new instance needs a new invite


def test_a_wizard_left_half_way_resumes_or_is_cancelled_and_names_are_not_taken_twice(svc: FleetServices) -> None:
    wizard = make_wizard(svc)
    invites = make_invites(svc)
    invites.create(ALICE, "7d")
    invites.create(BOB, "7d")
    wizard.start(ALICE)
    wizard.submit_details(ALICE, "table", LICENSE)
    assert wizard.start(ALICE).step == RELEASE  # resumed where it was left

    wizard.start(BOB)
    with pytest.raises(Conflict, match="taken"):
        wizard.submit_details(BOB, "table", LICENSE)  # Alice's wizard holds it
    with pytest.raises(Conflict, match="at step"):
        wizard.provision(BOB)

    wizard.cancel(ALICE)
    assert wizard.get(ALICE) is None
    assert not (svc.config.paths.database.parent / "wizards" / f"{ALICE}.json").exists()
    assert invites.pending_for(ALICE) is not None  # the invite survives a cancelled wizard
    assert wizard.submit_details(BOB, "table", LICENSE).instance_name == "table"  # free again


def test_a_failed_provisioning_leaves_nothing_and_says_what_to_fix(svc: FleetServices) -> None:
    wizard = make_wizard(svc)
    make_invites(svc).create(ALICE, "7d")
    wizard.start(ALICE)
    wizard.submit_details(ALICE, "late", LICENSE)
    wizard.submit_release(ALICE, version="13.345")
    # Someone takes the name by another way between the steps.
    svc.provisioning.create("cli:test", "late", "13.345", start=False)
    with pytest.raises(Conflict):
        wizard.provision(ALICE)
    view = wizard.get(ALICE)
    assert view.step == DETAILS and "late" in view.message
    assert [i.name for i in svc.instances.list()] == ["late"]
    assert make_invites(svc).pending_for(ALICE) is not None
    wizard.submit_details(ALICE, "early", LICENSE)
    wizard.submit_release(ALICE, version="13.345")
    assert wizard.provision(ALICE).instance.name == "early"


def test_a_crash_while_provisioning_is_settled_at_the_next_start(svc: FleetServices) -> None:
    wizard = make_wizard(svc)
    make_invites(svc).create(ALICE, "7d")
    make_invites(svc).create(BOB, "7d")
    for user, name in ((ALICE, "made"), (BOB, "notmade")):
        wizard.start(user)
        wizard.submit_details(user, name, LICENSE)
        wizard.submit_release(user, version="13.345")
    # Alice's instance was made and the process died before the wizard noted it; Bob's never was.
    svc.provisioning.create("cli:test", "made", "13.345", owner=ALICE, start=False)
    with svc.sessions.begin() as s:
        for row in s.query(WizardRow):
            row.step = PROVISIONING
    assert sorted(wizard.repair()) == [ALICE, BOB]
    assert wizard.get(ALICE).step == DONE
    assert wizard.get(BOB).step == READY and "interrupted" in wizard.get(BOB).message
    assert wizard.provision(BOB).instance.name == "notmade"
    assert not any(os.scandir(svc.config.paths.database.parent / "wizards"))


def test_the_wizard_downloads_a_release_from_a_timed_link_without_showing_its_token(
    fleet: FleetHarness, release_zips: dict[str, Path], https_server: LocalHTTPS
) -> None:
    fleet.edit_config('allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com"]',
                      'allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com", "127.0.0.1"]')
    text = fleet.config.read_text().replace("[releases]\n", f'[releases]\nallow_private_addresses = true\n'
                                                          f'extra_ca_file = "{https_server.cert}"\n', 1)
    fleet.config.write_text(text)
    https_server.routes["/releases/FoundryVTT-Node-13.347.zip"] = Route(body=release_zips["wrapped"].read_bytes())
    svc = open_services(load_config(fleet.config), actor="test")
    wizard = make_wizard(svc)
    make_invites(svc).create(ALICE, "7d")
    wizard.start(ALICE)
    wizard.submit_details(ALICE, "linked", LICENSE)
    link = https_server.url("/releases/FoundryVTT-Node-13.347.zip?verify=SECRET-TOKEN")
    view = wizard.submit_release(ALICE, url=link)
    assert view.step == READY and view.has_download_url and view.release_version is None
    assert "SECRET-TOKEN" not in str(view.to_dict())
    progress: list[tuple[str, int, int | None]] = []
    said: list[str] = []
    created = wizard.provision(ALICE, progress=lambda stage, done, total: progress.append((stage, done, total)),
                               say=said.append)
    assert created.instance.release == "13.347" and created.instance.owner == ALICE
    downloaded = [done for stage, done, _total in progress if "download" in stage]
    assert downloaded and downloaded[-1] == release_zips["wrapped"].stat().st_size, progress[-3:]
    assert https_server.count("/releases/FoundryVTT-Node-13.347.zip") == 1
    assert not any("SECRET-TOKEN" in line for line in said)
    assert not (svc.config.paths.database.parent / "wizards" / f"{ALICE}.json").exists()
