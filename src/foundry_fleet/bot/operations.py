"""One operation at a time per instance, from the bot: a second one is told "busy" at once rather
than queued behind the first (the control API would queue it, and the person would wait blind)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from foundry_fleet.domain.errors import Conflict


class Busy(Conflict):
    pass


class InstanceOperations:
    def __init__(self) -> None:
        self._running: dict[str, str] = {}

    def busy(self, name: str) -> str | None:
        """What is running on `name`, if anything."""
        return self._running.get(name)

    def check(self, name: str) -> None:
        what = self._running.get(name)
        if what is not None:
            raise Busy(f"{name} is busy: {what} is in progress", "try again once it has finished")

    @contextmanager
    def hold(self, name: str, what: str) -> Iterator[None]:
        self.check(name)
        self._running[name] = what
        try:
            yield
        finally:
            self._running.pop(name, None)
