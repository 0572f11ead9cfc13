"""The tenant's setup wizard, as a state machine the bot (or anything else) drives.

    (pending invite) --start--> details --submit_details--> release --submit_release--> ready
    ready --provision--> done                      (the instance exists; the invite is used)
    ready --provision fails--> release or details  (with what to fix; nothing half-made is left)
    any step --cancel--> (no wizard; the invite stays pending until it expires)

`start` resumes a wizard that was left half-way. The license key and a timed download URL are
secrets: they wait in a 0600 file (`state/wizards/<user>.json`) and are removed with the wizard,
never stored in the database or shown again. A provisioning interrupted by a crash is settled by
`repair` at the next start: done if the instance was made, else back to `release`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.foundry_options import normalise_license_key
from foundry_fleet.domain.names import validate_discord_id, validate_instance_name
from foundry_fleet.domain.release import parse_version
from foundry_fleet.domain.urls import redact_url
from foundry_fleet.releases.fetch import check_download_url
from foundry_fleet.releases.policy import ProgressCallback
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.services.provisioning import Provisioning
from foundry_fleet.services.invites import Invites
from foundry_fleet.services.views import CreatedInstance
from foundry_fleet.store.models import Instance, WizardRow

DETAILS, RELEASE, READY, PROVISIONING, DONE = "details", "release", "ready", "provisioning", "done"


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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SetupWizard:
    def __init__(self, fleet: Fleet, invites: Invites | None = None,
                 create: Callable[..., CreatedInstance] | None = None) -> None:
        self.fleet = fleet
        self.invites = invites or Invites(fleet)
        # The daemon passes a create that also wakes the supervisor; by default the service's own.
        self.create = create or functools.partial(Provisioning(fleet).create, fleet.actor)
        self.secrets_dir = fleet.config.paths.database.parent / "wizards"

    # reading ------------------------------------------------------------------------------

    def get(self, discord_user_id: str) -> WizardView | None:
        user = validate_discord_id(discord_user_id)
        with self.fleet.sessions() as s:
            row = s.get(WizardRow, user)
            return self._view(row) if row is not None else None

    def release_choices(self) -> list[str]:
        """Cached releases, newest first: what the wizard offers before a download URL."""
        versions = [r.version for r in self.fleet.list_releases()]
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
        with self.fleet.sessions.begin() as s:
            row = s.get(WizardRow, user)
            if row is not None:
                s.delete(row)
                s.flush()
            s.add(WizardRow(discord_user_id=user, invite_id=invite.id, step=DETAILS, message=""))
        self.fleet.record_event("wizard.start", f"discord:{user}", Outcome.OK, f"invite {invite.id}", actor=f"discord:{user}")
        return self._require(user)

    def submit_details(self, discord_user_id: str, instance_name: str, license_key: str) -> WizardView:
        """Step 1: the instance's name (its subdomain) and the Foundry license key."""
        user = validate_discord_id(discord_user_id)
        wizard = self._require(user, DETAILS, RELEASE, READY)
        name = validate_instance_name(instance_name.strip().lower(), frozenset({self.fleet.config.fleet.fleet_host}))
        key = normalise_license_key(license_key)
        self._check_name_free(name, user)
        self.invites.require_pending(wizard.invite_id, user)
        self._write_secrets(user, {**self._read_secrets(user), "license": key})
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
            check_download_url(url, self.fleet.releases.policy)
            secrets_now["url"] = url
        self._write_secrets(user, secrets_now)
        self._update(user, step=READY, release_version=version, message="")
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
                version = self.fleet.add_release(secrets_now["url"], progress).version
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
        self.fleet.record_event("wizard.done", f"discord:{user}", Outcome.OK, f"instance {wizard.instance_name}",
                                actor=f"discord:{user}")
        return created

    def cancel(self, discord_user_id: str) -> None:
        user = validate_discord_id(discord_user_id)
        wizard = self._require(user)
        if wizard.step == PROVISIONING:
            raise Conflict("the instance is being made right now", "wait for it to finish")
        with self.fleet.sessions.begin() as s:
            row = s.get(WizardRow, user)
            if row is not None:
                s.delete(row)
        self._remove_secrets(user)
        self.fleet.record_event("wizard.cancel", f"discord:{user}", Outcome.OK, "the invite stays valid",
                                actor=f"discord:{user}")

    def repair(self) -> list[str]:
        """Settle wizards a crash left provisioning: done if their instance exists, else back a step."""
        settled = []
        with self.fleet.sessions() as s:
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
        with self.fleet.sessions() as s:
            taken = s.query(Instance.id).filter(Instance.name == name).first() is not None
            held = s.query(WizardRow).filter(WizardRow.instance_name == name, WizardRow.discord_user_id != user,
                                             WizardRow.step != DONE).first() is not None
        # Its host may be another instance's extra hostname: the tenant is not told whose.
        host_taken = self.fleet.host_holder(self.fleet.config.host_for(name)) is not None
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
        with self.fleet.sessions.begin() as s:
            row = s.get(WizardRow, user)
            if row is None:
                return
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = time.time()

    def _view(self, row: WizardRow) -> WizardView:
        held = self._read_secrets(row.discord_user_id)
        return WizardView(row.discord_user_id, row.invite_id, row.step, row.instance_name, row.release_version,
                          "license" in held, "url" in held, row.message)

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
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def _remove_secrets(self, user: str) -> None:
        self._secrets_path(user).unlink(missing_ok=True)
