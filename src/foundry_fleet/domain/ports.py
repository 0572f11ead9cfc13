"""Choosing an instance's port: stable, inside the configured range, never shared."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from foundry_fleet.domain.errors import Conflict


def choose_port(
    low: int, high: int, taken: Iterable[int], is_free: Callable[[int], bool] = lambda _p: True
) -> int:
    """The lowest port in [low, high] no instance holds and the host reports free."""
    used = set(taken)
    for port in range(low, high + 1):
        if port not in used and is_free(port):
            return port
    raise Conflict(
        f"no free port left in the instance port range {low}-{high} ({len(used)} held by instances)",
        "widen [instances] port_range in fleet.toml, or delete unused instances",
    )
