"""When an instance is idle enough to sleep (pure: no I/O).

An instance is idle while its Foundry counts no connected user (`users` of `/api/status`) and the edge
has no request of its hosts under way. Every Foundry page, the join and setup screens included, keeps a
websocket open through the edge, so an open browser tab is a request under way for as long as it stays
open; a GM on the setup screen (whom `users` may not count) keeps the instance awake that way.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry_fleet.domain.backup_plan import parse_duration
from foundry_fleet.domain.errors import InvalidInput

OFF = "off"
FOLLOW_FLEET = "fleet"  # an instance's setting that follows [instances] idle_after
SHORTEST = 1.0  # seconds; tests use seconds, a host minutes or hours
LONGEST = 30 * 86400.0


def parse_idle_after(text: str) -> float | None:
    """"2h", "90min", "45s" -> seconds; "off" -> None (the instance never sleeps)."""
    cleaned = text.strip().lower()
    if cleaned in (OFF, "never", "none"):
        return None
    if cleaned == FOLLOW_FLEET:
        raise InvalidInput("`fleet` is an instance's setting, not an idle time", "write a duration, or off")
    if cleaned.rstrip("s").endswith(("m", "mon", "month")):
        raise InvalidInput(f"{text.strip()!r} is not an idle time",
                           "minutes are `min` (as in backup plans, `m` is a month): e.g. 60min or 2h")
    try:
        seconds = parse_duration(cleaned)
    except InvalidInput:
        raise InvalidInput(f"{text.strip()!r} is not an idle time",
                           "write a duration such as 60min, 2h or 1d, or off") from None
    if not SHORTEST <= seconds <= LONGEST:
        raise InvalidInput(f"an idle time of {text.strip()!r} is out of range", "use between 1s and 30d, or off")
    return seconds


def format_idle_after(seconds: float | None) -> str:
    """The shortest exact way to write it back: 3600 -> "1h", None -> "off"."""
    if seconds is None:
        return OFF
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    # Never `:g` alone: from a million seconds on it writes 1e+06, which is neither exact nor readable.
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:g}s"


@dataclass(frozen=True)
class IdleSetting:
    """An instance's own choice (`instance set --idle-after`) over the fleet's (`[instances] idle_after`)."""

    own: float | None  # seconds; 0 = off for this instance; None = the fleet's
    fleet: float | None  # seconds; None = off

    @property
    def idle_after(self) -> float | None:
        """Seconds of idleness before it sleeps; None: it never sleeps."""
        if self.own is None:
            return self.fleet
        return self.own or None


@dataclass(frozen=True)
class Activity:
    users: int | None  # connected users as Foundry counts them; None: it did not say (not answering)
    requests_in_flight: int  # requests of its hosts under way at the edge (an open websocket is one)

    @property
    def busy(self) -> bool:
        # A Foundry that does not answer is never taken for an idle one: health checks deal with it.
        return self.users is None or self.users > 0 or self.requests_in_flight > 0


def idle_since(previous: float | None, activity: Activity, now: float) -> float | None:
    """Since when the instance has been idle (None: it is busy now)."""
    if activity.busy:
        return None
    return previous if previous is not None else now


def sleep_due(since: float | None, idle_after: float | None, now: float) -> bool:
    return since is not None and idle_after is not None and now - since >= idle_after
