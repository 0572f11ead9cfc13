"""Who follows changes to instances: the edge, in the daemon, re-reads its sites after each one.

The services that change instances (creating, deleting, desired state, hostnames) call `notify()`
once their change is committed; the wiring subscribes whoever must follow. A process with no
subscriber (the CLI, a test) notifies nobody."""

from __future__ import annotations

from collections.abc import Callable


class Changes:
    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every change to instances. It may be called from any thread."""
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            listener()
