"""Backup destinations answer: each one of fleet.toml is asked as a backup round would open it (its
driver's own `check_online`), within a time limit, so one that does not answer is found before the first
round misses it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.services.doctor.report import Check, failed, passed, skipped

DESTINATION_TIMEOUT = 20.0


class ReachableDestination(Protocol):
    target: str

    def check_online(self, timeout: float | None = None) -> bool | None:
        """Raises when it does not answer or refuses; False: it answers but holds nothing yet (the first
        round makes it)."""


@dataclass(frozen=True)
class DestinationProbe:
    name: str  # [[backups.destinations]] name
    destination: ReachableDestination | FleetError  # the driver, or why it could not even be built
    try_it: str  # a command that asks it the same way, for a person to run


def destination_checks(probes: Sequence[DestinationProbe], timeout: float = DESTINATION_TIMEOUT) -> list[Check]:
    if not probes:
        return [skipped("backup destinations", "none in fleet.toml ([[backups.destinations]]): snapshots stay on "
                                               "this host only")]
    return [_check(p, timeout) for p in probes]


def _check(probe: DestinationProbe, timeout: float) -> Check:
    name = f"backup destination {probe.name}"
    dest = probe.destination
    if isinstance(dest, FleetError):
        return failed(name, dest.message, dest.hint or "fix the destination in fleet.toml")
    try:
        there = dest.check_online(timeout)
    except FleetError as e:  # the drivers' hints speak of the next round; a person wants to see it answer now
        return failed(name, e.message, f"try it as the fleet does: `{probe.try_it}`")
    if there is False:
        return passed(name, f"{dest.target} answers; nothing there yet (the first backup round makes it)")
    return passed(name, f"{dest.target} answers")
