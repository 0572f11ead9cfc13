"""One operation at a time per instance, refused rather than queued.

Wings' `server/power.go` teaches it: a power action on a server that is busy restoring is refused at
once with the reason (`ErrServerIsRestoring`). Queueing would leave the person waiting blind behind
an upgrade that may take minutes; a refusal that names what is under way tells them when to retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from foundry_fleet.domain.errors import Conflict


# What a restore holds an instance as: the edge tells its visitors so (services/edge_sites.py).
RESTORING = "restoring"


class InstanceBusy(Conflict):
    """The instance is in the middle of another operation (`doing` names it)."""

    def __init__(self, name: str, doing: str) -> None:
        super().__init__(f"{name} is {doing}", "one operation at a time per instance: try again once it has finished")
        self.instance = name
        self.doing = doing


class OperationLock:
    """What each instance is busy with. Held within one event loop, so no thread lock is needed:
    the check and the claim happen without an await in between."""

    def __init__(self) -> None:
        self._doing: dict[str, str] = {}

    def busy(self, name: str) -> str | None:
        """What `name` is busy with ("restoring", "being upgraded" ...), or None."""
        return self._doing.get(name)

    @contextmanager
    def hold(self, name: str, doing: str) -> Iterator[None]:
        """Claim `name` for one operation; InstanceBusy at once if another holds it."""
        if (other := self._doing.get(name)) is not None:
            raise InstanceBusy(name, other)
        self._doing[name] = doing
        try:
            yield
        finally:
            del self._doing[name]
