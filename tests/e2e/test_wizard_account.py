"""The setup wizard reads the new tenant's license key from their own foundryvtt.com account.

Discord is played by the strict recorder (tests/support/discord_gateway_recorder.py), foundryvtt.com
by its strict stand-in on loopback (tests/support/foundryvtt_standin.py); the fleet is real. The
password typed in the form must reach the site's login and nothing else: no message, no log line,
no event, no file.
"""

from __future__ import annotations

import json
import logging
import stat
import time
from pathlib import Path

import pytest

from foundry_fleet.bot.client import FleetBot
from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput, RateLimited
from foundry_fleet.services.account_keys import ATTEMPTS, WINDOW_S, AccountKeys
from foundry_fleet.services.wizard import RELEASE
from foundry_fleet.wiring.services import make_invites, make_wizard, open_services
from tests.e2e.test_bot import BOSS, CAROL, LICENSE, ask, play, press, private
from tests.support.discord_gateway_recorder import DiscordGatewayRecorder, Message, Person
from tests.support.foundryvtt_standin import (
    KEYS, PASSWORD, USERNAME, FoundrySite, foundry_site, foundry_site_session,
)
from tests.support.harness import Clock, FleetHarness

__all__ = ["foundry_site", "foundry_site_session"]  # fixtures

pytestmark = pytest.mark.e2e

READ_KEY = "Read my key from foundryvtt.com"
WRONG = "hunter2-not-the-password"
ERIN = Person(777777777777777777, "erin")


def bare(key: str) -> str:
    return key.replace("-", "")


@pytest.fixture
def site_fleet(fleet: FleetHarness, foundry_site: FoundrySite, release_zips: dict[str, Path],
               caplog: pytest.LogCaptureFixture) -> FleetHarness:
    """A fleet whose account pages are the stand-in's, with release 13.345 cached; every log captured."""
    caplog.set_level(logging.DEBUG)
    fleet.edit_config('allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com"]',
                      'allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com", "127.0.0.1"]\n'
                      f'allow_private_addresses = true\nextra_ca_file = "{foundry_site.cert}"\n'
                      f'account_site = "{foundry_site.base}"')
    fleet.cli("release", "add", str(release_zips["node"]))
    return fleet


def invite(fleet: FleetHarness, person: Person) -> None:
    make_invites(open_services(load_config(fleet.config))).create(person.sid, "1d")


async def log_in(rec: DiscordGatewayRecorder, bot: FleetBot, person: Person, message: Message,
                 password: str = PASSWORD, label: str = READ_KEY) -> Message:
    """`person` presses `label`, types the account's username and `password`; the answer, once final."""
    opener = await press(rec, bot, person, message, label)
    assert opener.initial == 9 and opener.modal is not None
    assert opener.modal["title"] == "Read your key from foundryvtt.com"
    submitted = rec.feed(bot, rec.submit(person, opener, {"Username or e-mail": USERNAME, "Password": password}))
    answer = await rec.reply(submitted)
    assert submitted.initial == 5 and answer.ephemeral  # "thinking" while it logs in, privately
    return answer


def held_secrets(fleet: FleetHarness, person: Person) -> dict[str, str]:
    """What the wizard keeps for `person` in its 0600 file (the key waits there, as a pasted one does)."""
    return json.loads((fleet.root / "state" / "wizards" / f"{person.sid}.json").read_text())


def assert_never_kept(fleet: FleetHarness, rec: DiscordGatewayRecorder, caplog: pytest.LogCaptureFixture,
                      *passwords: str) -> None:
    """The passwords are in no log line, no Discord message (not even the tenant's own), no event, no file
    of the fleet (its database, its wizards' secrets, its logs); the full license keys are in no message."""
    events = fleet.cli("events", "--json").out
    assert '"wizard.account"' in events
    shown = [text for m in rec.messages.values() for text in (m.text(), *m.history)]
    files = [p for p in fleet.root.rglob("*") if p.is_file() and not p.is_symlink()]
    for password in passwords:
        assert password not in caplog.text
        assert password not in events
        assert not any(password in text for text in shown)
        leaks = [p for p in files if password.encode() in p.read_bytes()]
        assert not leaks, leaks
    for key in KEYS:
        assert not any(key in text or bare(key) in text for text in shown)


def test_the_only_key_of_the_account_becomes_the_instances_license(
    site_fleet: FleetHarness, foundry_site: FoundrySite, caplog: pytest.LogCaptureFixture
) -> None:
    foundry_site.state.keys = (KEYS[0],)
    site_fleet.up()

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        rec.secrets.update({PASSWORD, KEYS[0], bare(KEYS[0])})
        await ask(rec, bot, BOSS, "invite", user=ERIN)
        [dm] = rec.dms_to(ERIN)
        assert dm.labels() == ["Set up my instance", READ_KEY] and "foundryvtt.com account" in dm.content

        read = await log_in(rec, bot, ERIN, dm)  # straight from the invite: it starts the wizard
        private(read, "License key ending in `UVWX` read from your foundryvtt.com account",
                "your password was not kept", "step 1 of 2", "Choose the instance's name")
        assert read.labels() == ["Enter the name", READ_KEY, "Cancel setup"]
        assert foundry_site.state.logins == 1 and foundry_site.count("POST /auth/login/") == 1

        opener = await press(rec, bot, ERIN, read, "Enter the name")
        [key_field] = [c for c in opener.modal["components"] if c.get("label") == "Foundry license key"]
        assert key_field["component"]["required"] is False and "ending in UVWX" in key_field["description"]
        step2 = await rec.reply(rec.feed(bot, rec.submit(ERIN, opener, {"Instance name": "erin"})))
        private(step2, "Step 2 of 2", "`erin`")
        opener = await press(rec, bot, ERIN, step2, "Next: choose the release")
        making = rec.feed(bot, rec.submit(ERIN, opener, {"Release (13.345)": "13.345"}))
        await rec.reply(making)
        await rec.until(lambda: making.followups, 60, "the instance to be made")
        private(making.followups[0], "is running at https://erin.")

    rec = play(site_fleet, scenario)
    erin = site_fleet.instance("erin")
    assert erin["owner"] == ERIN.sid
    assert bare(KEYS[0]) in Path(erin["data_dir"], "Config", "license.json").read_text()
    assert not (site_fleet.root / "state" / "wizards" / f"{ERIN.sid}.json").exists()  # gone with the wizard
    assert foundry_site.state.logins == 1
    assert_never_kept(site_fleet, rec, caplog, PASSWORD)


def test_the_tenant_chooses_among_the_accounts_keys_by_their_last_characters(
    site_fleet: FleetHarness, foundry_site: FoundrySite, caplog: pytest.LogCaptureFixture
) -> None:
    invite(site_fleet, ERIN)
    choices = ["Key 1 of 2, ending in UVWX", "Key 2 of 2, ending in UUUU"]

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        rec.secrets.update({PASSWORD, *KEYS, *map(bare, KEYS)})
        start = await ask(rec, bot, ERIN, "setup")
        choice = await log_in(rec, bot, ERIN, start)
        private(choice, "Your foundryvtt.com account has 2 license keys", "last 4 characters")
        assert choice.options() == choices
        assert choice.labels() == ["Paste a key instead", "Cancel setup"]
        assert "license" not in held_secrets(site_fleet, ERIN)  # nothing chosen yet

        # Left there: /fleet setup shows the same choice (the keys wait in the wizard's 0600 file).
        resumed = await ask(rec, bot, ERIN, "setup")
        assert resumed.options() == choices
        chosen = await rec.answered(rec.feed(bot, rec.choose(ERIN, resumed, choices[1])))
        assert chosen.initial == 7  # the message with the list becomes the next step
        private(resumed, "License key ending in `UUUU` chosen", "step 1 of 2")
        assert resumed.options() == [] and resumed.labels() == ["Enter the name", READ_KEY, "Cancel setup"]
        assert held_secrets(site_fleet, ERIN) == {"license": bare(KEYS[1])}

        opener = await press(rec, bot, ERIN, resumed, "Enter the name")
        step2 = await rec.reply(rec.feed(bot, rec.submit(ERIN, opener, {"Instance name": "erin"})))
        private(step2, "Step 2 of 2")
        assert held_secrets(site_fleet, ERIN) == {"license": bare(KEYS[1])}

        # The list is gone once used: an old copy of it says so, and changes nothing.
        stale = await rec.reply(rec.feed(bot, rec.choose(ERIN, choice, choices[0])))
        assert "no keys from your foundryvtt.com account to choose from" in private(stale)
        assert held_secrets(site_fleet, ERIN) == {"license": bare(KEYS[1])}

    rec = play(site_fleet, scenario)
    assert foundry_site.state.logins == 1
    assert_never_kept(site_fleet, rec, caplog, PASSWORD)


def test_a_wrong_password_a_busy_or_down_site_leave_the_wizard_as_it_was_and_attempts_are_limited(
    site_fleet: FleetHarness, foundry_site: FoundrySite, caplog: pytest.LogCaptureFixture
) -> None:
    invite(site_fleet, CAROL)

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        rec.secrets.update({PASSWORD, WRONG, *KEYS, *map(bare, KEYS)})
        start = await ask(rec, bot, CAROL, "setup")
        assert start.labels() == ["Enter name and license", READ_KEY, "Cancel setup"]
        assert "password is used for that one login and not kept" in private(start, "step 1 of 2")
        before = bot.wizard.get(CAROL.sid)

        wrong = await log_in(rec, bot, CAROL, start, WRONG)
        private(wrong, "foundryvtt.com refused that username or password", "Nothing in your setup changed")
        assert wrong.labels() == ["Try again", "Paste the key instead", "Cancel setup"]
        assert bot.wizard.get(CAROL.sid) == before and foundry_site.state.logins == 0

        foundry_site.state.rate_limited = 1
        busy = await log_in(rec, bot, CAROL, wrong, PASSWORD, label="Try again")
        private(busy, "refusing logins from this server for now (HTTP 429)", "try again in a few minutes",
                "Nothing in your setup changed")
        assert foundry_site.count("POST /auth/login/") == 2  # one login per attempt: no waiting, no retry
        assert bot.wizard.get(CAROL.sid) == before

        foundry_site.state.down = True
        down = await log_in(rec, bot, CAROL, busy, PASSWORD, label="Try again")
        private(down, "foundryvtt.com is not working right now (HTTP 503)", "Nothing in your setup changed")
        foundry_site.state.down = False

        foundry_site.state.keys = ()
        none = await log_in(rec, bot, CAROL, down, PASSWORD, label="Try again")
        private(none, "your foundryvtt.com account has no license key", "Nothing in your setup changed")
        assert bot.wizard.get(CAROL.sid) == before

        last = await log_in(rec, bot, CAROL, none, WRONG, label="Try again")
        private(last, "refused that username or password")
        requests = len(foundry_site.state.requests)

        # The sixth attempt within 10 minutes is refused before anything is sent to the site.
        opener = await press(rec, bot, CAROL, last, "Try again")
        refused = await rec.reply(rec.feed(bot, rec.submit(CAROL, opener, {
            "Username or e-mail": USERNAME, "Password": PASSWORD})))
        private(refused, "too many logins to foundryvtt.com; try again in 10 min", f"at most {ATTEMPTS} tries")
        assert refused.labels() == ["Paste the key instead", "Cancel setup"]
        assert len(foundry_site.state.requests) == requests
        assert bot.wizard.get(CAROL.sid) == before

        # Nothing was lost: pasting the key goes on as before.
        opener = await press(rec, bot, CAROL, refused, "Paste the key instead")
        step2 = await rec.reply(rec.feed(bot, rec.submit(CAROL, opener, {
            "Instance name": "carol", "Foundry license key": LICENSE})))
        private(step2, "Step 2 of 2", "`carol`")
        assert held_secrets(site_fleet, CAROL) == {"license": bare(LICENSE)}

    rec = play(site_fleet, scenario)
    events = site_fleet.cli("events", "--json").json()
    attempts = [e for e in events if e["action"] == "wizard.account"]
    assert [e["outcome"] for e in attempts] == ["refused", "failed", "failed", "ok", "refused"]
    assert all(e["actor"] == e["target"] == f"discord:{CAROL.id}" for e in attempts)
    assert any(e["action"] == "wizard.account_limited" and e["outcome"] == "refused" for e in events)
    assert USERNAME not in json.dumps(events)
    assert_never_kept(site_fleet, rec, caplog, PASSWORD, WRONG)


def test_the_attempt_limit_is_per_user_and_ends_after_ten_minutes(
    site_fleet: FleetHarness, foundry_site: FoundrySite
) -> None:
    services = open_services(load_config(site_fleet.config), actor="test")
    invites = make_invites(services)
    wizard = make_wizard(services, invites)
    clock = Clock(time.time())  # events are stamped with the real time: the window is counted from it
    account = AccountKeys(wizard, services.events, services.releases, clock)
    with pytest.raises(Conflict, match="cannot be changed at this point"):
        account.read(CAROL.sid, USERNAME, PASSWORD)  # no setup under way: nothing is sent to the site
    assert foundry_site.state.requests == []
    for person in (CAROL, ERIN):
        invites.create(person.sid, "1d")
        wizard.start(person.sid)

    for left in range(ATTEMPTS - 1, -1, -1):
        with pytest.raises(InvalidInput, match="refused that username or password") as refused:
            account.read(CAROL.sid, USERNAME, WRONG)
        assert f"({left} more {'try' if left == 1 else 'tries'} here within 10 minutes)" in str(refused.value.hint)
    with pytest.raises(RateLimited) as limited:
        account.read(CAROL.sid, USERNAME, PASSWORD)
    assert abs(limited.value.retry_after - WINDOW_S) < 60  # from the first of the five (the test clock stands still)
    assert foundry_site.count("POST /auth/login/") == ATTEMPTS

    assert account.read(ERIN.sid, USERNAME, PASSWORD).key_choices == ("UVWX", "UUUU")  # Erin's tries are her own
    clock.now += WINDOW_S + 1
    assert account.read(CAROL.sid, USERNAME, PASSWORD).key_choices == ("UVWX", "UUUU")

    secrets = site_fleet.root / "state" / "wizards" / f"{CAROL.sid}.json"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    with pytest.raises(InvalidInput, match="not a Foundry license key"):
        wizard.submit_details(CAROL.sid, "carol", "")  # a list to choose from is not a key
    with pytest.raises(InvalidInput, match="there is no key 3"):
        wizard.choose_account_key(CAROL.sid, 3)
    assert wizard.choose_account_key(CAROL.sid, 1).license_ending == "UVWX"
    after = wizard.submit_details(CAROL.sid, "carol", "")  # empty: the key read from the account stays
    assert after.step == RELEASE and after.license_ending == "UVWX"
    assert held_secrets(site_fleet, CAROL) == {"license": bare(KEYS[0])}
