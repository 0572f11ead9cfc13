"""What the service layer hands to adapters: plain data, ready for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class InstanceView:
    name: str
    state: str
    desired: str
    state_reason: str
    release: str
    port: int
    host: str
    hosts: list[str]  # every hostname the edge routes to it: host first, then extra ones
    url: str
    data_dir: str
    install_dir: str
    pid: int | None
    restarts: int
    owner: str | None
    uid: int | None
    created_at: float
    suspended: str | None = None  # why an admin suspended it; None: not suspended
    node: str | None = None  # the node asked for at create; None: its runtime chose
    address: str | None = None  # where the edge reaches it now ("host:port"); None while no task runs
    home: str = "fleet"  # the home holding its data ([[nomad.homes]]; "fleet": the fleet's own)
    # Seconds without players or visits before it sleeps (its own setting, else the fleet's); None: never.
    sleeps_after: float | None = None
    idle_after_own: bool = False  # sleeps_after is its own setting (`instance set --idle-after`)
    idle_since: float | None = None  # running and idle since then (epoch seconds); None: busy or not running
    started_at: float | None = None  # when its running task started (epoch seconds); None: no task
    # "set" or "missing" (Config/license.json): without one Foundry shows its licence page to every visitor.
    # None: not known here (its data is on another home, or not readable by this user).
    license: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class InstanceStatusView(InstanceView):
    """An instance as the control API lists it: its view and the figures (see domain.instance.DAEMON_FIGURES)."""

    uptime_s: float | None = None  # since its task started
    players: int | None = None  # connected, as its last health check heard
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None  # None: no limit known
    cpu_percent: float | None = None  # 100 = one core
    last_backup_at: float | None = None  # its newest snapshot (epoch seconds); None: none seen


@dataclass(frozen=True)
class ReleaseView:
    version: str
    generation: int
    build: int
    layout: str
    entry: str
    node: str  # the Node.js range this generation needs
    sha256: str
    zip_bytes: int
    unpacked_bytes: int
    source: str
    instances: list[str]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EventView:
    at: float
    actor: str
    action: str
    target: str
    outcome: str
    message: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CreatedInstance:
    instance: InstanceView
    admin_password: str | None  # only when the fleet generated it: shown once, never stored in clear

    def to_dict(self) -> dict[str, object]:
        return {"instance": self.instance.to_dict(), "admin_password": self.admin_password}
