"""The tenant's setup wizard, as a state machine the bot (or anything else) drives.

    (pending invite) --start--> details --submit_details--> release --submit_release--> ready
    ready --provision--> done                      (the instance exists; the invite is used)
    ready --provision fails--> release or details  (with what to fix; nothing half-made is left)
    any step --cancel--> (no wizard; the invite stays pending until it expires)

`start` resumes a wizard that was left half-way. The license key and a timed download URL are
secrets: they wait in a 0600 file (`state/wizards/<user>.json`) and are removed with the wizard,
never stored in the database or shown again (a key's last 4 characters are, to tell keys apart).
The key may also be read from the tenant's foundryvtt.com account (services/account_keys.py): one
key is kept as a pasted one is; several wait in the same file until the tenant chooses one. A
provisioning interrupted by a crash is settled by `repair` at the next start: done if the instance
was made, else back to `release`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.foundry_options import normalise_license_key
from foundry_fleet.domain.names import validate_discord_id, validate_instance_name
from foundry_fleet.domain.release import parse_version
from foundry_fleet.domain.urls import redact_url
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.releases.fetch import check_download_url
from foundry_fleet.releases.policy import ProgressCallback
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.invites import Invites
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.views import CreatedInstance
from foundry_fleet.store.models import Instance, WizardRow

DETAILS, RELEASE, READY, PROVISIONING, DONE = "details", "release", "ready", "provisioning", "done"
# The steps at which the license key may be given or changed (later ones through "Change name or license").
KEY_STEPS = (DETAILS, RELEASE, READY)
_ACCOUNT_KEYS = "account_keys"  # in the secrets file: the keys read from the account, waiting for a choice


@dataclass(frozen=True)
class WizardView:
    discord_user_id: str
    invite_id: int
    step: str
    instance_name: str | None
    release_version: str | None
    has_license: bool
    has_download_url: bool
    message: str
    license_ending: str | None = None  # the last 4 characters of the key held: enough to tell keys apart
    key_choices: tuple[str, ...] = ()  # the endings of the account's keys the tenant is to choose from

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SetupWizard:
    def __init__(self, config: FleetConfig, sessions: sessionmaker[Session], events: EventLog,
                 releases: ReleaseRegistry, hostnames: Hostnames, invites: Invites,
                 create: Callable[..., CreatedInstance]) -> None:
        """`sessions`: where each user's setup is kept; `create(name, release, license_key=, owner=)` makes
        and starts the instance (the daemon's also wakes its supervisor)."""
        self.config = config
        self.sessions = sessions
        self.events = events
        self.releases = releases
        self.hostnames = hostnames
        self.invites = invites
        self.create = create
        self.secrets_dir = config.paths.database.parent / "wizards"

    # reading ------------------------------------------------------------------------------

    def get(self, discord_user_id: str) -> WizardView | None:
        user = validate_discord_id(discord_user_id)
        with self.sessions() as s:
            row = s.get(WizardRow, user)
            return self._view(row) if row is not None else None

    def release_choices(self) -> list[str]:
        """Cached releases, newest first: what the wizard offers before a download URL."""
        versions = [r.version for r in self.releases.list()]
        return sorted(versions, key=lambda v: parse_version(v), reverse=True)

    # the steps ----------------------------------------------------------------------------

    def start(self, discord_user_id: str) -> WizardView:
        """Begin, or resume where it was left, for a user with a pending invite."""
        user = validate_discord_id(discord_user_id)
        existing = self.get(user)
        if existing is not None and existing.step != DONE:
            return existing
        invite = self.invites.pending_for(user)
        if invite is None:
            raise NotFound("you have no pending invite", "ask a fleet admin to invite you")
        with self.sessions.begin() as s:
            row = s.get(WizardRow, user)
            if row is not None:
                s.delete(row)
                s.flush()
            s.add(WizardRow(discord_user_id=user, invite_id=invite.id, step=DETAILS, message=""))
        self.events.record("wizard.start", f"discord:{user}", Outcome.OK, f"invite {invite.id}", actor=f"discord:{user}")
        return self._require(user)

    def submit_details(self, discord_user_id: str, instance_name: str, license_key: str) -> WizardView:
        """Step 1: the instance's name (its subdomain) and the Foundry license key; an empty key keeps
        the one held (read from the tenant's account, or pasted before)."""
        user = validate_discord_id(discord_user_id)
        wizard = self._require(user, *KEY_STEPS)
        name = validate_instance_name(instance_name.strip().lower(), frozenset({self.config.fleet.fleet_host}))
        held = self._read_secrets(user)
        if license_key.strip() or "license" not in held:
            key = normalise_license_key(license_key)
        else:
            key = held["license"]
        self._check_name_free(name, user)
        self.invites.require_pending(wizard.invite_id, user)
        kept = {k: v for k, v in held.items() if k != _ACCOUNT_KEYS}  # a pasted key ends a pending choice
        self._write_secrets(user, {**kept, "license": key})
        self._update(user, step=RELEASE, instance_name=name, message="")
        return self._require(user)

    def submit_release(self, discord_user_id: str, version: str | None = None, url: str | None = None) -> WizardView:
        """Step 2: a cached release by version, or a timed download URL from foundryvtt.com."""
        user = validate_discord_id(discord_user_id)
        self._require(user, RELEASE, READY)
        version, url = (version or "").strip() or None, (url or "").strip() or None
        if (version is None) == (url is None):
            raise InvalidInput("choose one: a release from the list, or a download link",
                               "pick a version, or paste the timed link from your foundryvtt.com account")
        secrets_now = {k: v for k, v in self._read_secrets(user).items() if k != "url"}
        if version is not None:
            if version not in self.release_choices():
                raise InvalidInput(f"release {version} is not in the fleet's cache",
                                   f"choose one of: {', '.join(self.release_choices()) or '(none yet)'}, or paste a link")
        else:
            assert url is not None
            check_download_url(url, self.releases.cache.policy)
            secrets_now["url"] = url
        self._write_secrets(user, secrets_now)
        self._update(user, step=READY, release_version=version, message="")
        return self._require(user)

    def hold_account_keys(self, discord_user_id: str, keys: list[str]) -> WizardView:
        """The license keys read from the tenant's foundryvtt.com account: a single one becomes the
        wizard's key (as a pasted one would); several wait for `choose_account_key`."""
        user = validate_discord_id(discord_user_id)
        wizard = self._require(user, *KEY_STEPS)
        self.invites.require_pending(wizard.invite_id, user)
        bare = [normalise_license_key(key) for key in keys]
        if not bare:
            raise NotFound("your foundryvtt.com account has no license key",
                           "buy or redeem a license on foundryvtt.com, or paste a key you were given")
        held = {k: v for k, v in self._read_secrets(user).items() if k != _ACCOUNT_KEYS}
        if len(bare) == 1:
            held["license"] = bare[0]
        else:
            held[_ACCOUNT_KEYS] = " ".join(bare)
        self._write_secrets(user, held)
        self._update(user, message="")
        return self._require(user)

    def choose_account_key(self, discord_user_id: str, number: int) -> WizardView:
        """Which of the account's keys (from 1, in the site's order) becomes the wizard's license key."""
        user = validate_discord_id(discord_user_id)
        self._require(user, *KEY_STEPS)
        held = self._read_secrets(user)
        keys = held.pop(_ACCOUNT_KEYS, "").split()
        if not keys:
            raise NotFound("there are no keys from your foundryvtt.com account to choose from",
                           "read them from your account again, or paste the key")
        if not 1 <= number <= len(keys):
            raise InvalidInput(f"your account has {len(keys)} license keys; there is no key {number}",
                               "choose one from the list")
        self._write_secrets(user, {**held, "license": keys[number - 1]})
        return self._require(user)

    def provision(self, discord_user_id: str, progress: ProgressCallback | None = None,
                  say: Callable[[str], None] = lambda _text: None) -> CreatedInstance:
        """Make the instance: fetch the release when a link was given, create, start. On failure the
        wizard goes back to the step that needs fixing, with the reason; nothing half-made remains."""
        user = validate_discord_id(discord_user_id)
        wizard = self._require(user, READY)
        assert wizard.instance_name is not None
        secrets_now = self._read_secrets(user)
        self.invites.require_pending(wizard.invite_id, user)
        self._update(user, step=PROVISIONING, message="")
        try:
            version = wizard.release_version
            if version is None:
                say("downloading the release ...")
                version = self.releases.add(secrets_now["url"], progress).version
            say(f"creating {wizard.instance_name} with Foundry {version} ...")
            created = self.create(wizard.instance_name, version, license_key=secrets_now.get("license"), owner=user)
        except FleetError as e:
            back = DETAILS if isinstance(e, Conflict) or "name" in e.message else RELEASE
            what = e.message if "url" not in secrets_now else e.message.replace(secrets_now["url"],
                                                                                 redact_url(secrets_now["url"]))
            self._update(user, step=back, message=f"{what}" + (f" ({e.hint})" if e.hint else ""))
            raise
        except BaseException:
            self._update(user, step=RELEASE, message="setting up failed unexpectedly; press Next to try again")
            raise
        self.invites.consume(wizard.invite_id, user)
        self._update(user, step=DONE, release_version=version, message="")
        self._remove_secrets(user)
        self.events.record("wizard.done", f"discord:{user}", Outcome.OK, f"instance {wizard.instance_name}",
                           actor=f"discord:{user}")
        return created

    def cancel(self, discord_user_id: str) -> None:
        user = validate_discord_id(discord_user_id)
        wizard = self._require(user)
        if wizard.step == PROVISIONING:
            raise Conflict("the instance is being made right now", "wait for it to finish")
        with self.sessions.begin() as s:
            row = s.get(WizardRow, user)
            if row is not None:
                s.delete(row)
        self._remove_secrets(user)
        self.events.record("wizard.cancel", f"discord:{user}", Outcome.OK, "the invite stays valid",
                           actor=f"discord:{user}")

    def repair(self) -> list[str]:
        """Settle wizards a crash left provisioning: done if their instance exists, else back a step."""
        settled = []
        with self.sessions() as s:
            stuck = [(r.discord_user_id, r.instance_name, r.invite_id)
                     for r in s.query(WizardRow).filter(WizardRow.step == PROVISIONING)]
            owners = {r.name: r.owner.discord_id if r.owner else None for r in s.query(Instance)}
        for user, name, invite_id in stuck:
            if name in owners and owners[name] == user:
                try:
                    self.invites.consume(invite_id, user)
                except Conflict:
                    pass  # consumed before the crash
                self._update(user, step=DONE, message="")
                self._remove_secrets(user)
            else:
                self._update(user, step=READY, message="setting up was interrupted; press Next to try again")
            settled.append(user)
        return settled

    # internals ----------------------------------------------------------------------------

    def _check_name_free(self, name: str, user: str) -> None:
        with self.sessions() as s:
            taken = s.query(Instance.id).filter(Instance.name == name).first() is not None
            held = s.query(WizardRow).filter(WizardRow.instance_name == name, WizardRow.discord_user_id != user,
                                             WizardRow.step != DONE).first() is not None
        # Its host may be another instance's extra hostname: the tenant is not told whose.
        host_taken = self.hostnames.holder(self.config.host_for(name)) is not None
        if taken or held or host_taken:
            raise Conflict(f"the name {name} is taken", "choose another name")

    def _require(self, user: str, *steps: str) -> WizardView:
        view = self.get(user)
        if view is None:
            raise NotFound("there is no setup in progress", "press the button in your invite to start")
        if steps and view.step not in steps:
            raise Conflict(f"the setup is at step {view.step!r}, not {' or '.join(repr(s) for s in steps)}",
                           "continue from the latest message, or cancel and start again")
        return view

    def _update(self, user: str, **values: object) -> None:
        with self.sessions.begin() as s:
            row = s.get(WizardRow, user)
            if row is None:
                return
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = time.time()

    def _view(self, row: WizardRow) -> WizardView:
        held = self._read_secrets(row.discord_user_id)
        key = held.get("license")
        return WizardView(row.discord_user_id, row.invite_id, row.step, row.instance_name, row.release_version,
                          key is not None, "url" in held, row.message, key[-4:] if key else None,
                          tuple(k[-4:] for k in held.get(_ACCOUNT_KEYS, "").split()))

    def _secrets_path(self, user: str) -> Path:
        return self.secrets_dir / f"{user}.json"

    def _read_secrets(self, user: str) -> dict[str, str]:
        try:
            data = json.loads(self._secrets_path(user).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_secrets(self, user: str, data: dict[str, str]) -> None:
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._secrets_path(user)
        write_atomic(path, json.dumps(data), 0o600)

    def _remove_secrets(self, user: str) -> None:
        self._secrets_path(user).unlink(missing_ok=True)
