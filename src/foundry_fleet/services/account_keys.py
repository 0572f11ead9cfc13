"""The setup wizard reads the new tenant's license key from their own foundryvtt.com account.

The tenant types their username and password; they are used for one login, then dropped: never
written to a file, the database, an event or a log line, never shown back. The keys read go to the
wizard (services/wizard.py), which keeps them as it keeps a pasted key.

Each attempt is one login, never retried here: the site answers 429 to hosts that log in often, and
the fleet's own `release add --account` must keep working. Attempts are counted per Discord user in
the event log (so a restart forgets nothing): ATTEMPTS in WINDOW_S, whatever their outcome, so the
bot cannot be used to try password after password on someone's account.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from foundry_fleet.domain.errors import Conflict, ExternalFailure, InvalidInput, RateLimited
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.names import validate_discord_id
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.wizard import KEY_STEPS, SetupWizard, WizardView

if TYPE_CHECKING:  # the account pages need httpx; imported when a tenant first logs in
    from foundry_fleet.releases.account import FoundryAccount

ATTEMPTS = 5
WINDOW_S = 600.0
ACTION = "wizard.account"  # one event per login attempt: what the limit counts
MAX_USERNAME = 254  # an e-mail address at most
MAX_PASSWORD = 256


class AccountKeys:
    def __init__(self, wizard: SetupWizard, events: EventLog, releases: ReleaseRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self.wizard = wizard
        self.events = events
        self.releases = releases
        self.clock = clock
        self._lock = threading.Lock()
        self._logging_in: set[str] = set()  # one attempt at a time per user, or the count could be outrun

    def read(self, discord_user_id: str, username: str, password: str) -> WizardView:
        """Log in to the tenant's account once and hand its license keys to the wizard. Any failure
        leaves the wizard as it was."""
        user = validate_discord_id(discord_user_id)
        username = username.strip()
        if not username or not password or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
            raise InvalidInput("give the username (or e-mail) and the password of your foundryvtt.com account",
                               "or paste the license key instead")
        view = self.wizard.get(user)
        if view is None or view.step not in KEY_STEPS:
            raise Conflict("the license key cannot be changed at this point of the setup",
                           "continue from the latest message, or run /fleet setup")
        self.wizard.invites.require_pending(view.invite_id, user)  # before a login, not after it
        self._begin(user)
        try:
            keys = self._login_and_read(user, username, password)
        finally:
            with self._lock:
                self._logging_in.discard(user)
        return self.wizard.hold_account_keys(user, keys)

    def attempts_left(self, discord_user_id: str) -> int:
        return max(0, ATTEMPTS - len(self._recent_attempts(validate_discord_id(discord_user_id))))

    # internals ----------------------------------------------------------------------------

    def _begin(self, user: str) -> None:
        with self._lock:
            if user in self._logging_in:
                raise Conflict("a login to your foundryvtt.com account is already under way",
                               "wait for its answer")
            recent = self._recent_attempts(user)
            if len(recent) >= ATTEMPTS:
                wait = max(1.0, min(recent) + WINDOW_S - self.clock())
                self.events.record(ACTION + "_limited", f"discord:{user}", Outcome.REFUSED,
                                   f"{ATTEMPTS} logins to foundryvtt.com within {WINDOW_S / 60:.0f} min",
                                   actor=f"discord:{user}")
                raise RateLimited(f"too many logins to foundryvtt.com; try again in {wait / 60:.0f} min",
                                  f"at most {ATTEMPTS} tries in {WINDOW_S / 60:.0f} minutes; "
                                  "or paste the license key from your account page", retry_after=wait)
            self._logging_in.add(user)

    def _recent_attempts(self, user: str) -> list[float]:
        since = self.clock() - WINDOW_S
        events = self.events.search(target=f"discord:{user}", action_prefix=ACTION, limit=4 * ATTEMPTS)
        return [e.at for e in events if e.action == ACTION and e.at > since]

    def _login_and_read(self, user: str, username: str, password: str) -> list[str]:
        from foundry_fleet.releases.account import LoginRefused, SiteUnavailable

        def attempt(outcome: Outcome, message: str) -> None:  # never the username or the password
            self.events.record(ACTION, f"discord:{user}", outcome, message, actor=f"discord:{user}")

        try:
            with self._account(username, password) as account:
                keys = account.license_keys()
        except LoginRefused:
            attempt(Outcome.REFUSED, "foundryvtt.com refused the username or password")
            left = self.attempts_left(user)
            raise InvalidInput("foundryvtt.com refused that username or password",
                               f"check them by logging in on foundryvtt.com ({left} more "
                               f"{'try' if left == 1 else 'tries'} here within {WINDOW_S / 60:.0f} minutes), "
                               "or paste the license key instead") from None
        except SiteUnavailable as e:
            attempt(Outcome.FAILED, f"foundryvtt.com answered HTTP {e.status}")
            if e.status == 429:
                raise ExternalFailure("foundryvtt.com is refusing logins from this server for now (HTTP 429)",
                                      "it limits servers that log in often: try again in a few minutes, "
                                      "or paste the license key instead") from None
            raise ExternalFailure(f"foundryvtt.com is not working right now (HTTP {e.status})",
                                  "try again later, or paste the license key instead") from None
        except ExternalFailure as e:
            attempt(Outcome.FAILED, e.message)
            raise ExternalFailure(f"could not read your license keys: {e.message}",
                                  "try again later, or paste the license key instead") from None
        attempt(Outcome.OK, f"read {len(keys)} license key(s) from a foundryvtt.com account")
        return keys

    def _account(self, username: str, password: str) -> FoundryAccount:
        from foundry_fleet.releases.account import AccountCredentials

        # No waiting on a 429: the tenant is waiting, and one login per attempt is the rule.
        return self.releases.foundry_account(AccountCredentials(username, password), max_total_wait=0.0)
