"""Whether the host has the memory to wake an instance, checked before it starts.

A wake that would overcommit the host is refused (the visitor's page says the host is full, the admins
get a status update) rather than started for the OOM killer to choose a victim among everyone's
tables. What a wake needs is the instance's memory limit (what it may grow to) plus a reserve for the
host; what it can count on is the host's available memory (MemAvailable) less what the wakes admitted
in the last `hold_for` seconds will take: several visits at once to several sleeping instances must not
all pass on the same free memory, before any of them has taken it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class MemoryGuard:
    def __init__(self, available_mb: Callable[[], int | None], instance_limit_mb: int | None, reserve_mb: int,
                 hold_for: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.available_mb = available_mb
        self.instance_limit_mb = instance_limit_mb or 0
        self.reserve_mb = reserve_mb
        self.hold_for = hold_for  # how long an admitted wake's memory counts as taken: its start time
        self.clock = clock
        self._admitted: dict[str, tuple[int, float]] = {}  # name -> (MiB, until)

    @property
    def needs_mb(self) -> int:
        return self.instance_limit_mb + self.reserve_mb

    def admit(self, name: str) -> str | None:
        """None: wake it (its memory now counts as taken); otherwise why not, in words for people."""
        available = self.available_mb()
        if available is None:
            return None  # the host does not say: nothing to judge by, and a wake is better than none
        now = self.clock()
        self._admitted = {n: held for n, held in self._admitted.items() if held[1] > now and n != name}
        pending = sum(mb for mb, _until in self._admitted.values())
        free = available - pending
        if free < self.needs_mb:
            starting = f" ({pending} MiB of it promised to instances starting now)" if pending else ""
            return (f"the host is full: {max(free, 0)} MiB free{starting}, waking {name} needs {self.needs_mb} MiB "
                    f"(its limit of {self.instance_limit_mb} MiB and {self.reserve_mb} MiB kept for the host)")
        self._admitted[name] = (self.instance_limit_mb, now + self.hold_for)
        return None
