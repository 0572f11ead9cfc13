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


class DesiredState(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    # Being deleted: set before the data is moved away, so an interrupted delete is finished (by
    # archiving, which never loses data) the next time the fleet starts.
    DELETED = "deleted"


# States in which a process may exist and must be stopped before the instance is deleted.
LIVE_STATES = frozenset({InstanceState.STARTING, InstanceState.RUNNING, InstanceState.STOPPING})
