"""Figures as people read them: sizes, durations and ages."""

from __future__ import annotations


def human_bytes(n: int | float) -> str:
    """512 B, 1.5 KiB, 3.2 GiB, 1.1 TiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float) -> str:
    """A short duration: 45 s, 12 min, 3 h 20 min, 4 d 2 h. (cli/render.compact_duration writes a time
    left until an instance sleeps in the notation of its idle setting instead: see there why both.)"""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"
