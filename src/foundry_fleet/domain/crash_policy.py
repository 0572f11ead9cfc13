"""When to restart a crashed instance, and when to give up (pure, so it is tested without processes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CrashPolicy:
    backoff_initial: float = 1.0  # seconds before the first restart
    backoff_max: float = 60.0
    max_crashes: int = 5  # more than this many crashes ...
    window: float = 600.0  # ... within this many seconds means a crash loop
    # A run this long resets the backoff: the instance was healthy, the crash is news.
    stable_after: float = 60.0


@dataclass(frozen=True)
class CrashDecision:
    give_up: bool
    delay: float
    recent: tuple[float, ...]  # crash times inside the window, newest last


def decide_after_crash(
    policy: CrashPolicy, recent_crashes: tuple[float, ...], now: float, ran_for: float
) -> CrashDecision:
    """Record a crash at `now` and say whether to restart (after `delay`) or mark the instance failed."""
    recent = tuple(t for t in recent_crashes if now - t <= policy.window) + (now,)
    if len(recent) > policy.max_crashes:
        return CrashDecision(give_up=True, delay=0.0, recent=recent)
    if ran_for >= policy.stable_after:
        # A long healthy run: restart quickly, but keep counting toward the loop limit.
        return CrashDecision(give_up=False, delay=policy.backoff_initial, recent=recent)
    exponent = len(recent) - 1
    delay = min(policy.backoff_max, policy.backoff_initial * (2**exponent))
    return CrashDecision(give_up=False, delay=delay, recent=recent)
