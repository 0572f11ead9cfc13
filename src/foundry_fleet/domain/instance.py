"""Instance states and the rules for moving between them."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping


class InstanceState(str, enum.Enum):
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    # Stopped for being idle while it is to run (its desired state stays "running"): its hosts go to the
    # fleet's wake handler, and the first visit starts it. Not a stop, a crash or a failure.
    SLEEPING = "sleeping"


class DesiredState(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    # Being deleted: set before the data is moved away, so an interrupted delete is finished (by
    # archiving, which never loses data) the next time the fleet starts.
    DELETED = "deleted"


# States in which a process may exist and must be stopped before the instance is deleted.
LIVE_STATES = frozenset({InstanceState.STARTING, InstanceState.RUNNING, InstanceState.STOPPING})


# While an instance that is to run is not (yet) serving, a visit goes to the fleet's wake handler: it
# starts a sleeping one, and shows one on its way up, or one that failed and why, with a page that
# follows it until Foundry answers. The edge routes a sleeping and a waking instance the same way, so a
# sleep/wake cycle changes the edge's config twice: when it falls asleep, and once it serves again.
# Not "stopped": an instance that is to run is stopped only while the fleet itself is down (it stops its
# instances as it exits) or for a moment before a start; its page says it is stopped.
WAKE_HANDLER_STATES = frozenset({
    InstanceState.SLEEPING, InstanceState.STARTING, InstanceState.STOPPING, InstanceState.FAILED,
})


def goes_to_wake_handler(state: str, desired: str, suspended: bool) -> bool:
    """Whether the edge sends the instance's visitors to the wake handler (else: Foundry when it runs, or
    the static page saying it is stopped or suspended)."""
    return (desired == DesiredState.RUNNING.value and not suspended
            and state in {s.value for s in WAKE_HANDLER_STATES})


# The order instances are summed up in: serving first, then asleep, then down, then in trouble.
# What only the daemon knows of an instance, beside its row: `status` and `instances` carry these keys,
# each None while unknown (not running, not sampled yet, no daemon).
DAEMON_FIGURES = ("uptime_s", "players", "memory_bytes", "memory_limit_bytes", "cpu_percent", "last_backup_at")

SUMMARY_ORDER = ("running", "starting", "sleeping", "stopping", "stopped", "suspended", "failed", "creating")


def states_summary(instances: Iterable[Mapping[str, object]]) -> str:
    """Instances (as their views' JSON) counted by state, in one line: "4 instances: 1 running, 3 sleeping".
    A suspended instance counts as suspended, whatever its state."""
    counts = Counter("suspended" if i.get("suspended") else str(i.get("state")) for i in instances)
    total = sum(counts.values())
    if not total:
        return "no instances"
    order = [s for s in SUMMARY_ORDER if counts[s]] + sorted(set(counts) - set(SUMMARY_ORDER))
    return f"{total} instance{'s' if total != 1 else ''}: " + ", ".join(f"{counts[s]} {s}" for s in order)
