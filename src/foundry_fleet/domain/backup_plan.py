"""Snapshot plans in znapzend's syntax, and znapzend's thinning rule (pure: tested without ZFS).

A plan is `retention=>interval[,...]`, e.g. `7d=>1h,30d=>1d,1y=>1w`: keep one snapshot per hour
for 7 days, one per day for 30 days, one per week for a year. Snapshots are taken on epoch-aligned
slots of the smallest interval. Thinning goes through the snapshots oldest first: a snapshot's band
is the smallest retention that still covers its age (none: it goes); within a band, only the first
snapshot of each interval slot stays. A snapshot whose time is now is never destroyed, and one
whose name does not follow the time format (a manual snapshot, say) is never touched at all.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from dataclasses import dataclass

from foundry_fleet.domain.errors import InvalidInput

# znapzend's units; note `m` is a month (30 days), minutes are `min`.
_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("min", "mins", "minute", "minutes"), 60),
    (("h", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "week", "weeks"), 7 * 86400),
    (("m", "mon", "mons", "month", "months"), 30 * 86400),
    (("y", "year", "years"), 365.25 * 86400),
):
    for _n in _names:
        _UNITS[_n] = _seconds

_DURATION = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$", re.ASCII)
DEFAULT_TSFORMAT = "%Y-%m-%d-%H%M%SZ"  # znapzend's default, in UTC
MAX_YEARS = 1000  # "keep for ever" fits; anything longer is a typo
MAX_DURATION = MAX_YEARS * _UNITS["y"]
# The most snapshots one instance's plan may keep. Every snapshot is listed on each backup round,
# in `backup list` and on the tenant's backups page, and is a tree of hard links (directory storage)
# or a ZFS snapshot (zfs-fuse lists them at ~0.6 ms each: 10,000 take ~6 s). The default plan keeps
# ~250 and one snapshot a minute for a whole week (10,080) is already past it, while `100y=>1s`
# would ask for ~3 billion.
MAX_SNAPSHOTS = 10_000


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.lower())
    if not m or m.group(2) not in _UNITS:
        raise InvalidInput(
            f"{text.strip()!r} is not a duration",
            "write a number and a unit: s, min, h, d, w, m (month), y — e.g. 7d or 30min",
        )
    value = int(m.group(1))
    if value <= 0:
        raise InvalidInput(f"{text.strip()!r} is not a positive duration", "use a number above zero")
    # Compared as integers first: 10**400 seconds is not even a float.
    if value > MAX_DURATION or value * _UNITS[m.group(2)] > MAX_DURATION:
        raise InvalidInput(f"{text.strip()!r} is longer than {MAX_YEARS} years", f"use at most {MAX_YEARS}y")
    return value * _UNITS[m.group(2)]


@dataclass(frozen=True, order=True)
class Band:
    retention: float  # seconds a snapshot of this band is kept
    interval: float  # seconds between the snapshots kept in this band


@dataclass(frozen=True)
class Plan:
    bands: tuple[Band, ...]  # sorted by retention
    text: str

    @property
    def snapshots_kept(self) -> int:
        """At most how many snapshots the plan keeps: each band's retention over its interval, added up."""
        return math.ceil(sum(b.retention / b.interval for b in self.bands))

    @property
    def smallest_interval(self) -> float:
        return min(b.interval for b in self.bands)

    @property
    def longest_retention(self) -> float:
        return self.bands[-1].retention

    def band_for(self, age: float) -> Band | None:
        """The band of a snapshot this old: the smallest retention that still covers it."""
        for band in self.bands:
            if age <= band.retention:
                return band
        return None

    def __str__(self) -> str:
        return self.text


def parse_plan(text: str) -> Plan:
    """`7d=>1h,30d=>1d,1y=>1w` -> Plan; every mistake is named with what to write instead."""
    if not text or not text.strip():
        raise InvalidInput("the snapshot plan is empty", "write retention=>interval pairs, e.g. 7d=>1h,30d=>1d")
    bands: list[Band] = []
    seen: dict[float, str] = {}
    for part in text.split(","):
        if "=>" not in part:
            raise InvalidInput(f"{part.strip()!r} in the plan is not retention=>interval", "e.g. 7d=>1h")
        left, right = part.split("=>", 1)
        retention, interval = parse_duration(left), parse_duration(right)
        if retention < interval:
            raise InvalidInput(
                f"in {part.strip()!r} the retention is shorter than the interval",
                "keep snapshots at least as long as the time between them, e.g. 7d=>1h",
            )
        if retention in seen:
            raise InvalidInput(
                f"the retention {left.strip()} is given twice ({seen[retention]} and {part.strip()})",
                "give each retention once",
            )
        seen[retention] = part.strip()
        bands.append(Band(retention, interval))
    bands.sort()
    canonical = ",".join(seen[b.retention].replace(" ", "") for b in bands)
    plan = Plan(tuple(bands), canonical)
    if plan.snapshots_kept > MAX_SNAPSHOTS:
        raise InvalidInput(
            f"the plan {canonical} would keep up to {plan.snapshots_kept:,} snapshots of each instance, "
            f"more than the limit of {MAX_SNAPSHOTS:,}",
            "keep frequent snapshots for a shorter time and older ones further apart, e.g. 7d=>1h,30d=>1d,1y=>1w")
    return plan


def current_slot(now: float, plan: Plan) -> float:
    """The start of the epoch-aligned slot `now` falls in: when the latest due snapshot is stamped."""
    step = plan.smallest_interval
    return (now // step) * step


class TimeFormat:
    """A strftime format for snapshot names; a trailing `Z` means UTC. Parses names back quickly."""

    _FIELDS = {"%Y": r"(?P<Y>\d{4})", "%m": r"(?P<m>\d{2})", "%d": r"(?P<d>\d{2})",
               "%H": r"(?P<H>\d{2})", "%M": r"(?P<M>\d{2})", "%S": r"(?P<S>\d{2})"}

    def __init__(self, fmt: str = DEFAULT_TSFORMAT) -> None:
        self.fmt = fmt
        self.utc = fmt.endswith("Z")
        pattern, i = "", 0
        while i < len(fmt):
            token = fmt[i:i + 2]
            if token in self._FIELDS:
                pattern += self._FIELDS[token]
                i += 2
            elif fmt[i] == "%":
                raise InvalidInput(f"the snapshot time format {fmt!r} uses {token}",
                                   "use only %Y %m %d %H %M %S and plain characters")
            else:
                pattern += re.escape(fmt[i])
                i += 1
        if not all(f in fmt for f in ("%Y", "%m", "%d", "%H", "%M", "%S")):
            raise InvalidInput(f"the snapshot time format {fmt!r} does not name the second",
                               "include %Y %m %d %H %M %S, e.g. %Y-%m-%d-%H%M%SZ")
        self._regex = re.compile(f"^{pattern}$")

    def name(self, t: float) -> str:
        return time.strftime(self.fmt, time.gmtime(t) if self.utc else time.localtime(t))

    def parse(self, name: str) -> float | None:
        """The time a snapshot name stands for, or None for a name in another format."""
        m = self._regex.match(name)
        if m is None:
            return None
        try:
            fields = (int(m["Y"]), int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"]))
            if self.utc:
                return float(calendar.timegm((*fields, 0, 0, 0)))
            return time.mktime((*fields, 0, 0, -1))
        except (ValueError, OverflowError):
            return None


@dataclass(frozen=True)
class Thinning:
    keep: list[str]
    destroy: list[str]


def thin(names: list[str], now: float, plan: Plan, fmt: TimeFormat) -> Thinning:
    """Which snapshots znapzend's rule keeps and which it destroys (names in any order)."""
    timed: list[tuple[float, str]] = []
    keep: list[str] = []
    for name in names:
        t = fmt.parse(name)
        if t is None:
            keep.append(name)  # not ours to judge: manual or foreign snapshots stay
        else:
            timed.append((t, name))
    timed.sort()
    taken: set[tuple[float, int]] = set()
    destroy: list[str] = []
    for t, name in timed:
        if t >= now:
            keep.append(name)  # never the snapshot of this very moment (or a clock ahead of ours)
            continue
        band = plan.band_for(now - t)
        if band is None:
            destroy.append(name)
            continue
        slot = (band.retention, int(t // band.interval))
        if slot in taken:
            destroy.append(name)
        else:
            taken.add(slot)
            keep.append(name)
    return Thinning(keep=keep, destroy=destroy)
