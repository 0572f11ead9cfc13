"""Tables: tenants, releases, instances, moves under way, events, replication state, invites, setup wizards, sign-in
sessions and tickets, and what the notifier has sent."""

from __future__ import annotations

import time

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    discord_id: Mapped[str] = mapped_column(String(32), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float, default=time.time)

    instances: Mapped[list[Instance]] = relationship(back_populates="owner")


class Release(Base):
    __tablename__ = "releases"

    version: Mapped[str] = mapped_column(String(20), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    build: Mapped[int] = mapped_column(Integer)
    layout: Mapped[str] = mapped_column(String(20))
    entry: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    zip_bytes: Mapped[int] = mapped_column(Integer)
    unpacked_bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    added_at: Mapped[float] = mapped_column(Float, default=time.time)


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("port"), UniqueConstraint("uid"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    release_version: Mapped[str] = mapped_column(ForeignKey("releases.version"))
    port: Mapped[int] = mapped_column(Integer)
    uid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), nullable=True)
    desired: Mapped[str] = mapped_column(String(16), default="running")
    state: Mapped[str] = mapped_column(String(16), default="creating")
    state_reason: Mapped[str] = mapped_column(Text, default="")
    # The runtime's TaskHandle while a process exists; what re-attaching reads back.
    task: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Where the edge and the health check reach the running task ("host:port", as the runtime said),
    # and its server's pid for display; None while nothing runs.
    address: Mapped[str | None] = mapped_column(String(300), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Hostnames besides <name>.<domain> (a tenant's own domain); the edge routes and certifies them all.
    extra_hosts: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    # znapzend-style plan for this instance's snapshots; None follows the fleet's [backups] plan.
    backup_plan: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The node an operator asked for at create (`--node`): where a cluster runtime places it while its
    # data is nowhere yet. None: the runtime chooses.
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The home ([[nomad.homes]]) holding its data; None: the fleet's own ("fleet"). Read through
    # services/instance_homes.py, changed only by a move's commit.
    home: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Set by an admin: the instance stays stopped, and its tenant cannot start it, until resumed.
    suspended_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Seconds without players or visits before it sleeps: None follows [instances] idle_after, 0 is off.
    idle_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Since when it has had no players and no visits while running (None: busy, or not running). Kept
    # across daemon restarts, so a restart does not put off an instance's sleep.
    idle_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    crash_times: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time, onupdate=time.time)

    owner: Mapped[Tenant | None] = relationship(back_populates="instances")
    release: Mapped[Release] = relationship()


class MoveRow(Base):
    """A move of an instance's data to another home, under way: what the next daemon start rolls back
    ("copying": the source still holds the instance) or finishes ("committed": the target does)."""

    __tablename__ = "moves"

    instance: Mapped[str] = mapped_column(ForeignKey("instances.name", ondelete="CASCADE"), primary_key=True)
    source_home: Mapped[str] = mapped_column(String(40))
    target_home: Mapped[str] = mapped_column(String(40))
    source_node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    target_node: Mapped[str] = mapped_column(String(255))
    phase: Mapped[str] = mapped_column(String(16))  # "copying" | "committed"
    started_at: Mapped[float] = mapped_column(Float, default=time.time)
    # The move stops the instance, so its desired state cannot tell afterwards whether a roll-back or a
    # finish is to start it again: this does.
    was_running: Mapped[bool] = mapped_column(Boolean, default=False)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(100), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class ReplicationRow(Base):
    """Where one instance's snapshots stand on one backup destination (what `backup status` shows even
    while the destination is offline)."""

    __tablename__ = "replication"
    __table_args__ = (UniqueConstraint("instance", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance: Mapped[str] = mapped_column(String(63), index=True)
    destination: Mapped[str] = mapped_column(String(40))
    last_snapshot: Mapped[str | None] = mapped_column(Text, nullable=True)  # newest snapshot it holds
    last_snapshot_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # when that was taken
    last_sync_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    bytes_sent: Mapped[int] = mapped_column(Integer, default=0)  # in the last successful round


class InviteRow(Base):
    """An invitation to become a tenant: bound to one Discord user, or a shareable code (stored hashed).
    Single-use: `used_at` is set once, by the redeeming user."""

    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    discord_user_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    code_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class CodeFailureRow(Base):
    """Wrong invite codes tried by one Discord user: enough of them within the window locks them out."""

    __tablename__ = "code_failures"

    discord_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[float] = mapped_column(Float, default=time.time)
    locked_until: Mapped[float] = mapped_column(Float, default=0.0)


class WizardRow(Base):
    """A tenant's setup in progress (one per Discord user). The license key is not here: it waits in a
    0600 file beside the database until the instance is made."""

    __tablename__ = "wizards"

    discord_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    invite_id: Mapped[int] = mapped_column(ForeignKey("invites.id"))
    step: Mapped[str] = mapped_column(String(20))
    instance_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    release_version: Mapped[str | None] = mapped_column(String(20), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")  # what the last step said (errors included)
    started_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time, onupdate=time.time)


class WebSessionRow(Base):
    """A signed-in browser on one tenant host (the cookie carries the id, signed); logout deletes it."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    discord_user_id: Mapped[str] = mapped_column(String(32), index=True)
    host: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    expires_at: Mapped[float] = mapped_column(Float)


class UsedTicketRow(Base):
    """Sign-in tickets already redeemed: each works once."""

    __tablename__ = "used_tickets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class NotificationRow(Base):
    """The last time a status update with this key went out, for de-duplication and rate limits."""

    __tablename__ = "notifications"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_sent_at: Mapped[float] = mapped_column(Float)
    suppressed: Mapped[int] = mapped_column(Integer, default=0)


class SftpKeyRow(Base):
    """A public key that may sign in over SFTP as its instance."""

    __tablename__ = "sftp_keys"
    __table_args__ = (UniqueConstraint("instance", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance: Mapped[str] = mapped_column(ForeignKey("instances.name", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(100))
    key_type: Mapped[str] = mapped_column(String(40))
    public_key: Mapped[str] = mapped_column(Text)  # OpenSSH one-line form, comment included
    added_by: Mapped[str] = mapped_column(String(100), default="")
    added_at: Mapped[float] = mapped_column(Float, default=time.time)
