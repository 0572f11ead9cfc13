"""Reading instances: what `instance list`, `instance show`, `status` and the bot show of each."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from foundry_fleet.config import MAIN_HOME, FleetConfig
from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.idle import IdleSetting
from foundry_fleet.domain.errors import Conflict, NotFound
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.services.views import InstanceView
from foundry_fleet.storage.base import Storage
from foundry_fleet.store.models import Instance


def instance_row(session: Session, name: str) -> Instance:
    """The instance's row, or NotFound saying where to look."""
    row = session.scalar(select(Instance).where(Instance.name == name))
    if row is None:
        raise NotFound(f"no instance named {name!r}", "see `foundry-fleet instance list`")
    return row


def changeable_row(session: Session, name: str) -> Instance:
    """The instance's row when its desired state, node or home may change: not while it is being created
    (its layout is not done) or deleted."""
    row = instance_row(session, name)
    if row.state == InstanceState.CREATING.value:
        raise Conflict(f"instance {name} is still being created", "wait a moment and retry")
    if row.desired == DesiredState.DELETED.value:
        raise Conflict(f"instance {name} is being deleted", "wait a moment; it will be gone")
    return row


class InstanceViews:
    def __init__(self, config: FleetConfig, sessions: sessionmaker[Session], storage: Storage) -> None:
        self.config = config
        self.sessions = sessions
        self.storage = storage

    def view(self, row: Instance) -> InstanceView:
        paths = self.storage.paths(row.name)
        host = self.config.host_for(row.name)
        return InstanceView(
            name=row.name,
            state=row.state,
            desired=row.desired,
            state_reason=row.state_reason,
            release=row.release_version,
            port=row.port,
            host=host,
            hosts=[host, *(row.extra_hosts or [])],
            url=self.config.public_url(row.name),
            data_dir=str(paths.data),
            install_dir=str(paths.install),
            pid=row.pid,
            restarts=row.restarts,
            owner=row.owner.discord_id if row.owner else None,
            uid=row.uid,
            created_at=row.created_at,
            suspended=row.suspended_reason,
            node=row.node,
            address=row.address,
            home=row.home or MAIN_HOME,
            sleeps_after=IdleSetting(own=row.idle_after, fleet=self.config.instances.idle_after_seconds).idle_after,
            idle_after_own=row.idle_after is not None,
            idle_since=row.idle_since,
            started_at=_task_started_at(row.task),
            license=_license_state(paths.data) if (row.home or MAIN_HOME) == MAIN_HOME else None,
        )

    def list(self) -> list[InstanceView]:
        with self.sessions() as s:
            # Owners in the same round trip: a list of hundreds of instances is two queries, not one each.
            rows = s.scalars(select(Instance).options(selectinload(Instance.owner)).order_by(Instance.name)).all()
            return [self.view(r) for r in rows]

    def names(self) -> list[str]:
        """Every instance's name, in order (one column: no view is built)."""
        with self.sessions() as s:
            return list(s.scalars(select(Instance.name).order_by(Instance.name)))

    def get(self, name: str) -> InstanceView:
        with self.sessions() as s:
            return self.view(instance_row(s, name))


def _task_started_at(task: dict | None) -> float | None:
    started = task.get("started_at") if isinstance(task, dict) else None
    return float(started) if isinstance(started, int | float) and started > 0 else None


def _license_state(data: Path) -> str | None:
    try:
        (data / instance_layout.LICENSE).stat()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return None  # a CLI user who may not look into the tenant's files
    return "set"
