"""Instance states and the rules for moving between them."""

from __future__ import annotations

import enum


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
