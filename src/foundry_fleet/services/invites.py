"""Invites: how a Discord user becomes a tenant.

An invite is bound to one Discord user (`/fleet invite @user`, `foundry-fleet invite create
--discord-user ID`), or is a shareable code that binds itself to the first user who redeems it. Either
way it is single-use (used when the tenant's instance is made) and expires. A code is 128 bits from
`secrets`, shown once and stored only as its SHA-256; a user who tries wrong codes too often is locked
out for a while, so codes cannot be guessed through the bot.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.backup_plan import parse_duration
from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound, RateLimited
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.names import validate_discord_id
from foundry_fleet.services.events import EventLog
from foundry_fleet.store.models import CodeFailureRow, InviteRow

DEFAULT_EXPIRY = "7d"
MAX_EXPIRY_S = 90 * 86400.0
CODE_BYTES = 16  # 128 bits
LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW_S = 15 * 60.0
LOCKOUT_S = 30 * 60.0


def parse_expiry(text: str) -> float:
    """`7d`, `12h`, `30min` -> seconds, between 5 minutes and 90 days."""
    seconds = parse_duration(text)
    if not 300 <= seconds <= MAX_EXPIRY_S:
        raise InvalidInput(f"an invite expiring after {text} is not allowed", "give between 5min and 90d, e.g. 7d")
    return seconds


def hash_code(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


@dataclass(frozen=True)
class InviteView:
    id: int
    discord_user_id: str | None
    shareable: bool
    status: str  # pending, used, revoked, expired
    created_by: str
    created_at: float
    expires_at: float
    used_by: str | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def invite_status(row: InviteRow, now: float) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.used_at is not None:
        return "used"
    if row.expires_at <= now:
        return "expired"
    return "pending"


def _view(row: InviteRow, now: float) -> InviteView:
    return InviteView(row.id, row.discord_user_id, row.code_hash is not None, invite_status(row, now),
                      row.created_by, row.created_at, row.expires_at, row.used_by)


@dataclass(frozen=True)
class CreatedInvite:
    invite: InviteView
    code: str | None  # a shareable code, shown this once

    def to_dict(self) -> dict[str, object]:
        return {"invite": self.invite.to_dict(), "code": self.code}


class Invites:
    def __init__(self, sessions: sessionmaker[Session], events: EventLog, clock: Callable[[], float] = time.time) -> None:
        """`sessions`: where invites and failed code attempts are kept; `events`: the log, with the actor."""
        self.sessions = sessions
        self.events = events
        self.clock = clock

    def acting_as(self, actor: str) -> Invites:
        """The same invites, their events recorded as `actor`'s (the admin behind a panel form)."""
        return Invites(self.sessions, self.events.acting_as(actor), self.clock)

    def create(self, discord_user_id: str | None, expires: str = DEFAULT_EXPIRY, shareable: bool = False
               ) -> CreatedInvite:
        """An invite for one user, or (`shareable`, no user) a code for whoever redeems it first."""
        if discord_user_id is None and not shareable:
            raise InvalidInput("an invite is for one Discord user, or a shareable code",
                               "give --discord-user ID, or --code")
        user = validate_discord_id(discord_user_id) if discord_user_id is not None else None
        now = self.clock()
        ttl = parse_expiry(expires)
        code = secrets.token_urlsafe(CODE_BYTES) if shareable else None
        with self.sessions.begin() as s:
            if user is not None and s.scalar(select(InviteRow.id).where(
                    InviteRow.discord_user_id == user, InviteRow.used_at.is_(None), InviteRow.revoked_at.is_(None),
                    InviteRow.expires_at > now)) is not None:
                raise Conflict(f"Discord user {user} already has a pending invite", "revoke it first, or let them use it")
            row = InviteRow(discord_user_id=user, code_hash=hash_code(code) if code else None,
                            created_by=self.events.actor, created_at=now, expires_at=now + ttl)
            s.add(row)
            s.flush()
            view = _view(row, now)
        whom = f"Discord user {user}" if user else "a shareable code"
        self.events.record("invite.create", f"invite-{view.id}", Outcome.OK, f"{whom}, expires in {expires}")
        return CreatedInvite(view, code)

    def list(self, include_done: bool = False) -> list[InviteView]:
        now = self.clock()
        with self.sessions() as s:
            views = [_view(r, now) for r in s.scalars(select(InviteRow).order_by(InviteRow.id))]
        return views if include_done else [v for v in views if v.status == "pending"]

    def get(self, invite_id: int) -> InviteView:
        with self.sessions() as s:
            row = s.get(InviteRow, invite_id)
            if row is None:
                raise NotFound(f"there is no invite {invite_id}", "see `foundry-fleet invite list`")
            return _view(row, self.clock())

    def revoke(self, invite_id: int) -> InviteView:
        now = self.clock()
        with self.sessions.begin() as s:
            row = s.get(InviteRow, invite_id)
            if row is None:
                raise NotFound(f"there is no invite {invite_id}", "see `foundry-fleet invite list`")
            status = invite_status(row, now)
            if status != "pending":
                raise Conflict(f"invite {invite_id} is {status} already")
            row.revoked_at = now
            view = _view(row, now)
        self.events.record("invite.revoke", f"invite-{invite_id}", Outcome.OK, "")
        return view

    # redeeming ----------------------------------------------------------------------------

    def pending_for(self, discord_user_id: str) -> InviteView | None:
        """The user's usable invite (bound to them, not used, revoked or expired), if any."""
        user = validate_discord_id(discord_user_id)
        now = self.clock()
        with self.sessions() as s:
            row = s.scalars(select(InviteRow).where(InviteRow.discord_user_id == user).order_by(InviteRow.id.desc())
                            ).first()
            return _view(row, now) if row is not None and invite_status(row, now) == "pending" else None

    def redeem_code(self, code: str, discord_user_id: str) -> InviteView:
        """Bind a shareable code's invite to the user who brought it; wrong codes count toward a lockout."""
        user = validate_discord_id(discord_user_id)
        now = self.clock()
        self._check_lockout(user, now)
        with self.sessions.begin() as s:
            row = s.scalars(select(InviteRow).where(InviteRow.code_hash == hash_code(code or ""))).first()
            usable = row is not None and invite_status(row, now) == "pending" and row.discord_user_id in (None, user)
            if usable:
                assert row is not None
                row.discord_user_id = user
                view = _view(row, now)
        if not usable:
            self._count_failure(user, now)
            raise InvalidInput("that invite code is not valid (wrong, used, revoked or expired)",
                               "check the code with whoever invited you")
        self._clear_failures(user)
        self.events.record("invite.redeem", f"invite-{view.id}", Outcome.OK, f"code bound to {user}",
                           actor=f"discord:{user}")
        return view

    def consume(self, invite_id: int, discord_user_id: str) -> None:
        """Mark the invite used, once its tenant's instance exists (in the caller's transaction terms:
        refuses one that is no longer pending or belongs to someone else)."""
        now = self.clock()
        with self.sessions.begin() as s:
            row = s.get(InviteRow, invite_id)
            if row is None or row.discord_user_id != discord_user_id or invite_status(row, now) != "pending":
                raise Conflict("this invite cannot be used any more", "ask an admin for a new invite")
            row.used_at, row.used_by = now, discord_user_id

    def require_pending(self, invite_id: int, discord_user_id: str) -> InviteView:
        view = self.get(invite_id)
        if view.discord_user_id != discord_user_id or view.status != "pending":
            raise Conflict(f"this invite is {view.status if view.discord_user_id == discord_user_id else 'not yours'}",
                           "ask an admin for a new invite")
        return view

    # lockout ------------------------------------------------------------------------------

    def _check_lockout(self, user: str, now: float) -> None:
        with self.sessions() as s:
            row = s.get(CodeFailureRow, user)
            if row is not None and row.locked_until > now:
                wait = row.locked_until - now
                raise RateLimited(f"too many wrong invite codes; try again in {wait / 60:.0f} min",
                                  "ask whoever invited you for the exact code", retry_after=wait)

    def _count_failure(self, user: str, now: float) -> None:
        with self.sessions.begin() as s:
            row = s.get(CodeFailureRow, user)
            if row is None or now - row.first_at > LOCKOUT_WINDOW_S:
                if row is None:
                    row = CodeFailureRow(discord_user_id=user)
                    s.add(row)
                row.failures, row.first_at, row.locked_until = 0, now, 0.0
            row.failures += 1
            if row.failures >= LOCKOUT_FAILURES:
                row.locked_until = now + LOCKOUT_S
                locked = True
            else:
                locked = False
        if locked:
            self.events.record("invite.lockout", f"discord:{user}", Outcome.FAILED,
                               f"{LOCKOUT_FAILURES} wrong invite codes; locked for {LOCKOUT_S / 60:.0f} min",
                               actor=f"discord:{user}")

    def _clear_failures(self, user: str) -> None:
        with self.sessions.begin() as s:
            row = s.get(CodeFailureRow, user)
            if row is not None:
                s.delete(row)
