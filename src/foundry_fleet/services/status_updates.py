"""Status updates: the fleet's events, turned into short messages for the ops channel and the owner.

Fed by the event log (read since the last one seen, so nothing is missed while a delivery is slow), plus
periodic checks of what has no event (a quota filling up). Each update has a key (what happened to
which instance): the same key is sent at most once per `repeat_after`, later ones are counted and the
count is told with the next; the ops channel gets at most `ops_burst` messages per `ops_window`. A
tenant whose DMs cannot be delivered (DMs closed, not sharing a server) is not tried again for
`dm_block`, so one closed inbox never turns into a retry loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.domain.text import plain_from_discord
from foundry_fleet.services.disk_limits import DiskLimits, mib
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.store.models import NotificationRow

log = logging.getLogger(__name__)


class Undeliverable(ExternalFailure):
    """This recipient cannot be reached (for example a Discord user with DMs closed)."""


class Notifier(Protocol):
    """Where updates go: Discord (the bot), or the log when no bot is configured."""

    async def post_ops(self, text: str) -> None: ...

    async def send_dm(self, user_id: str, text: str) -> None:
        """Raises Undeliverable when the user cannot receive it."""


class LogNotifier:
    """Updates are worded for Discord (bold names, code, mentions); the daemon's console reads them as
    plain text, so the marks are taken out here and Discord keeps its markdown."""

    async def post_ops(self, text: str) -> None:
        log.info("status: %s", plain_from_discord(text))

    async def send_dm(self, user_id: str, text: str) -> None:
        log.info("status for %s: %s", user_id, plain_from_discord(text))


@dataclass(frozen=True)
class Update:
    key: str  # what happened to what: de-duplication is by this
    instance: str | None
    text: str


# action, outcome -> how it reads. Everything else (routine successes) is not worth a message.
_WORDING = {
    ("instance.crashed", "failed"): "crashed and is being restarted",
    ("instance.failed", "failed"): "has stopped after crashing repeatedly",
    ("instance.start", "failed"): "could not start",
    ("instance.wake", "refused"): "was not woken for a visitor",
    ("instance.restart", "ok"): "is running again after a crash",
    ("instance.upgrade", "ok"): "was upgraded",
    ("instance.upgrade", "failed"): "was not healthy on the new release and was rolled back",
    ("backup.snapshot", "failed"): "backup failed",
    ("backup.snapshot", "refused"): "backup was refused",
    ("backup.thin", "failed"): "removing old backups failed",
    ("backup.replicate", "failed"): "copying backups off-site failed",
    ("edge.certificate", "failed"): "has a certificate problem",
    ("edge.config", "failed"): "is out of date (Caddy keeps serving the last good configuration)",
    ("edge.config", "ok"): "serves the current configuration again",
    ("edge.hosts", "failed"): "asks for a hostname the edge does not serve it",
}


def update_for(action: str, outcome: str, target: str, message: str) -> Update | None:
    """The update an event deserves, if any (pure: no I/O)."""
    wording = _WORDING.get((action, outcome))
    if wording is None:
        return None
    detail = f": {message}" if message else ""
    return Update(key=f"{action}:{outcome}:{target}", instance=target, text=f"**{target}** {wording}{detail}")


class StatusUpdates:
    def __init__(self, events: EventLog, instances: InstanceViews, limits: DiskLimits,
                 sessions: sessionmaker[Session], notifier: Notifier, clock: Callable[[], float] = time.time,
                 repeat_after: float = 1800.0, ops_burst: int = 20, ops_window: float = 600.0,
                 dm_block: float = 86400.0, quota_warn: float = 0.9) -> None:
        """`sessions`: where what was sent, and to whom delivery is blocked, is kept."""
        self.events = events
        self.instances = instances
        self.limits = limits
        self.sessions = sessions
        self.notifier = notifier
        self.clock = clock
        self.repeat_after = repeat_after
        self.ops_burst, self.ops_window = ops_burst, ops_window
        self.dm_block = dm_block
        self.quota_warn = quota_warn
        self._ops_sent: deque[float] = deque()
        self._last_event: int | None = None

    # sources ------------------------------------------------------------------------------

    def start_from_now(self) -> None:
        """Only events from here on: a restart does not repeat yesterday's news."""
        self._last_event = self.events.last_id()

    def new_updates(self) -> list[Update]:
        if self._last_event is None:
            self.start_from_now()
        updates = []
        for event in self.events.since(self._last_event or 0):
            self._last_event = event.id
            update = update_for(event.action, event.outcome, event.target, event.message)
            if update is not None:
                updates.append(update)
        return updates

    def quota_updates(self) -> list[Update]:
        """Instances whose data and snapshots use more than `quota_warn` of their disk limit (held by a ZFS
        quota; on plain directories by refusing new snapshots at the limit)."""
        if self.limits.limit is None:
            return []  # no limits to fill: spare the walk over every instance's data
        out = []
        for use in self.limits.uses():
            if use.fraction is None or use.fraction <= self.quota_warn:
                continue
            text = (f"**{use.instance}** uses {100 * use.fraction:.0f}% of its storage quota "
                    f"({mib(use.used)} of {mib(use.limit or 0)}, snapshots included)")
            if use.over:
                text += (": its writes fail until old snapshots go or the limit is raised"
                         if self.limits.storage.enforces_limits
                         else ": new backups are refused until it uses less")
            out.append(Update(f"quota:{use.instance}", use.instance, text))
        return out

    # delivery -----------------------------------------------------------------------------

    async def deliver(self, update: Update) -> bool:
        """Send unless the same update went out recently; True if it went out."""
        now = self.clock()
        suppressed = await asyncio.to_thread(self._claim, update.key, now)
        if suppressed is None:
            return False
        text = update.text + (f" (and {suppressed} more time(s) since the last message)" if suppressed else "")
        if self._ops_allowed(now):
            await self.notifier.post_ops(text)
        owner = await asyncio.to_thread(self._owner_of, update.instance)
        if owner is not None and await asyncio.to_thread(self._dm_allowed, owner, now):
            try:
                await self.notifier.send_dm(owner, text)
            except Undeliverable as e:
                log.info("status updates for %s cannot be delivered (%s); not trying again for %.0f h",
                         owner, e.message, self.dm_block / 3600)
                await asyncio.to_thread(self._block_dm, owner, now)
        return True

    async def run_once(self, check_quotas: bool = False) -> int:
        updates = await asyncio.to_thread(self.new_updates)
        if check_quotas:
            updates += await asyncio.to_thread(self.quota_updates)
        sent = 0
        for update in updates:
            try:
                sent += await self.deliver(update)
            except Exception:  # noqa: BLE001 - one failed delivery must not stop the others
                log.exception("could not deliver a status update")
        return sent

    async def run(self, every: float = 5.0, quota_every: float = 300.0) -> None:
        """Forever, from where `start_from_now` was called (the daemon calls it early, so what its own
        start records is told), else from now."""
        if self._last_event is None:
            self.start_from_now()
        last_quota = 0.0
        while True:
            now = time.monotonic()
            try:
                await self.run_once(check_quotas=now - last_quota >= quota_every)
            except Exception:  # noqa: BLE001 - a failed round (a pool that does not answer) is tried again
                log.exception("could not gather status updates")
            if now - last_quota >= quota_every:
                last_quota = now
            await asyncio.sleep(every)

    # state --------------------------------------------------------------------------------

    def _claim(self, key: str, now: float) -> int | None:
        """None if `key` was sent within repeat_after (counted); else how many were held back since."""
        with self.sessions.begin() as s:
            row = s.get(NotificationRow, key)
            if row is not None and now - row.last_sent_at < self.repeat_after:
                row.suppressed += 1
                return None
            held = row.suppressed if row is not None else 0
            if row is None:
                s.add(NotificationRow(key=key, last_sent_at=now, suppressed=0))
            else:
                row.last_sent_at, row.suppressed = now, 0
            return held

    def _ops_allowed(self, now: float) -> bool:
        while self._ops_sent and now - self._ops_sent[0] > self.ops_window:
            self._ops_sent.popleft()
        if len(self._ops_sent) >= self.ops_burst:
            return False
        self._ops_sent.append(now)
        return True

    def _owner_of(self, instance: str | None) -> str | None:
        if instance is None:
            return None
        try:
            return self.instances.get(instance).owner
        except Exception:  # noqa: BLE001 - a deleted instance has no owner to tell
            return None

    def _dm_allowed(self, user: str, now: float) -> bool:
        with self.sessions() as s:
            row = s.get(NotificationRow, f"dm-blocked:{user}")
            return row is None or now - row.last_sent_at >= self.dm_block

    def _block_dm(self, user: str, now: float) -> None:
        with self.sessions.begin() as s:
            row = s.get(NotificationRow, f"dm-blocked:{user}")
            if row is None:
                s.add(NotificationRow(key=f"dm-blocked:{user}", last_sent_at=now, suppressed=0))
            else:
                row.last_sent_at = now
