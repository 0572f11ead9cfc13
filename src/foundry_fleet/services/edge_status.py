"""What the edge cannot serve, told as events (and so as status updates) and in `foundry-fleet status`:
a config Caddy refused (the last good one keeps serving) and hostnames two instances claim."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundry_fleet.domain.events import Outcome
from foundry_fleet.edge.driver import EdgeStatus
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.hostnames import Hostnames

EDGE_TARGET = "edge"


def edge_problem_reporter(events: EventLog) -> Callable[[str | None], None]:
    """For `Edge(on_problem=...)`: a refused config is an event, and so is Caddy taking one again."""

    def report(problem: str | None) -> None:
        if problem is None:
            events.record("edge.config", EDGE_TARGET, Outcome.OK, "Caddy serves the current configuration again",
                          actor="edge")
        else:
            events.record("edge.config", EDGE_TARGET, Outcome.FAILED, problem, actor="edge")

    return report


def report_host_conflicts(hostnames: Hostnames, events: EventLog) -> int:
    """One event per hostname an instance asks for but is not served (its owner hears of it too)."""
    conflicts = hostnames.conflicts()
    for c in conflicts:
        events.record("edge.hosts", c.instance, Outcome.FAILED, f"{c.describe()}; {_fix(c.instance)}", actor="edge")
    return len(conflicts)


def _fix(instance: str) -> str:
    return f"set its hostnames again without it (`foundry-fleet instance hosts {instance} HOST...`, or --clear)"


def edge_report(hostnames: Hostnames, status: EdgeStatus | None) -> dict[str, Any]:
    """The edge's part of `status`: is Caddy up to date, why not, and which claimed hosts it does not serve."""
    return {
        "in_sync": status.in_sync if status else None,
        "problem": status.problem if status else None,
        "since": status.since if status else None,
        "config_loads": status.loads if status else None,
        "host_conflicts": [
            {"host": c.host, "instance": c.instance, "holder": c.holder, "why": c.why} for c in hostnames.conflicts()
        ],
    }
