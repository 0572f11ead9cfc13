"""Tables: tenants, releases, instances, events, replication state."""

from __future__ import annotations

import time

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
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
    # Hostnames besides <name>.<domain> (a tenant's own domain); the edge routes and certifies them all.
    extra_hosts: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    # znapzend-style plan for this instance's snapshots; None follows the fleet's [backups] plan.
    backup_plan: Mapped[str | None] = mapped_column(Text, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    crash_times: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time, onupdate=time.time)

    owner: Mapped[Tenant | None] = relationship(back_populates="instances")
    release: Mapped[Release] = relationship()


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
