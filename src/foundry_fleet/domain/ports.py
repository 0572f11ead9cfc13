"""Choosing an instance's port: stable, inside the configured range, never shared."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from foundry_fleet.domain.errors import Conflict, InvalidInput


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


def parse_port_range(text: str, ephemeral: tuple[int, int] | None = None) -> tuple[int, int]:
    """"A-B" as given to `init --instance-ports`. `ephemeral`: the kernel's range for outgoing
    connections (ip_local_port_range), which the instance ports must stay out of: any connection this
    host makes could take one of them, and the instance given it would not start."""
    low_text, dash, high_text = text.strip().partition("-")
    if not dash or not low_text.strip().isdigit() or not high_text.strip().isdigit():
        raise InvalidInput(f"--instance-ports {text!r} is not a range of ports", "give it as LOW-HIGH, e.g. 30100-30199")
    low, high = int(low_text), int(high_text)
    if not 1024 <= low <= high <= 65535:
        raise InvalidInput(f"--instance-ports {low}-{high} is not a range within 1024-65535",
                           "give LOW <= HIGH, both within 1024-65535")
    if ephemeral is not None and low <= ephemeral[1] and ephemeral[0] <= high:
        raise InvalidInput(
            f"--instance-ports {low}-{high} overlaps this host's ephemeral ports {ephemeral[0]}-{ephemeral[1]} "
            "(net.ipv4.ip_local_port_range), which any outgoing connection may take",
            f"choose a range below {ephemeral[0]} or above {ephemeral[1]}, e.g. 30000-30999")
    return low, high
