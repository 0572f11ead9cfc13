"""What the panel shows of each instance, gathered in one place: its row in the database and what the
daemon knows in memory (players from the health checks, memory and CPU from the sampler, the newest
snapshot from the backups' reading, shared with /metrics, certificate problems from the certificate watch).

One read of the instances' rows per page, whatever their number; everything else is a lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from foundry_fleet.domain.instance import InstanceState
from foundry_fleet.services.access import Access, Principal
from foundry_fleet.services.views import InstanceView


class ResourcePointLike(Protocol):
    at: float
    memory_bytes: int
    cpu_percent: float | None
    memory_limit_bytes: int | None


class ResourceReader(Protocol):
    """The sampler's side the panel reads (services/resource_samples.py)."""

    def latest(self, name: str) -> ResourcePointLike | None: ...

    def history(self, name: str) -> Sequence[ResourcePointLike]: ...


@dataclass(frozen=True)
class InstanceCard:
    view: InstanceView
    uptime_s: float | None  # running: since its task started
    players: int | None  # connected, as the last health check heard; None: unknown or not running
    memory_bytes: int | None
    memory_limit_bytes: int | None
    cpu_percent: float | None  # 100 = one core
    memory_history: tuple[int, ...]  # bytes, oldest first, over the sampler's history
    cpu_history: tuple[float | None, ...]  # None: no rate for that sample (the first after a start)
    history_slots: int  # how many samples a full history holds
    last_backup_at: float | None
    certificate: str  # "valid", "not checked yet", "not served" or the problem

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def state(self) -> str:
        return self.view.state

    def figures(self) -> dict[str, Any]:
        """The figures `foundry-fleet status` shows beside the instance's row (see domain.instance.DAEMON_FIGURES)."""
        return {"uptime_s": self.uptime_s, "players": self.players, "memory_bytes": self.memory_bytes,
                "memory_limit_bytes": self.memory_limit_bytes, "cpu_percent": self.cpu_percent,
                "last_backup_at": self.last_backup_at}


@dataclass(frozen=True)
class CardSources:
    players: Callable[[str], int | None]
    resources: ResourceReader | None  # None: no sampler (nothing shown)
    newest_snapshots: Callable[[], dict[str, float]]
    certificate_problems: Callable[[], dict[str, str] | None]  # host -> problem; None: not checked yet
    history_slots: int = 120  # how many samples a full history holds


class PanelCards:
    def __init__(self, access: Access, sources: CardSources, clock: Callable[[], float] = time.time) -> None:
        self.access = access
        self.sources = sources
        self.clock = clock

    def cards(self, principal: Principal) -> list[InstanceCard]:
        """Every instance `principal` may see, by name."""
        return self.for_views(self.access.visible(principal))

    def for_views(self, views: Sequence[InstanceView]) -> list[InstanceCard]:
        """The cards of views already read (the control API reads them once for its whole answer)."""
        newest = self.sources.newest_snapshots()
        problems = self.sources.certificate_problems()
        return [self._card(v, newest, problems) for v in views]

    def figures(self, views: Sequence[InstanceView]) -> dict[str, dict[str, Any]]:
        """Each instance's figures, by name: the control API's `status` and `instances` carry these."""
        return {c.name: c.figures() for c in self.for_views(views)}

    def card(self, principal: Principal, name: str, action: str = "view") -> InstanceCard:
        """One instance; NotFound for one that is not theirs (see Access.instance)."""
        view = self.access.instance(principal, name, action)
        return self._card(view, self.sources.newest_snapshots(), self.sources.certificate_problems())

    def _card(self, view: InstanceView, newest: dict[str, float], problems: dict[str, str] | None) -> InstanceCard:
        running = view.state == InstanceState.RUNNING.value
        latest = self.sources.resources.latest(view.name) if running and self.sources.resources else None
        history = self.sources.resources.history(view.name) if running and self.sources.resources else ()
        return InstanceCard(
            view=view,
            uptime_s=max(0.0, self.clock() - view.started_at) if running and view.started_at else None,
            players=self.sources.players(view.name) if running else None,
            memory_bytes=latest.memory_bytes if latest else None,
            memory_limit_bytes=latest.memory_limit_bytes if latest else None,
            cpu_percent=latest.cpu_percent if latest else None,
            memory_history=tuple(p.memory_bytes for p in history),
            cpu_history=tuple(p.cpu_percent for p in history),
            history_slots=self.sources.history_slots,
            last_backup_at=newest.get(view.name),
            certificate=_certificate(view, running, problems),
        )


def _certificate(view: InstanceView, running: bool, problems: dict[str, str] | None) -> str:
    if not running:
        return "not served"  # a stopped instance's hosts get a small page; their certificate is not watched
    if problems is None:
        return "not checked yet"
    found = [problems[h] for h in view.hosts if h in problems]
    return "; ".join(found) if found else "valid"
