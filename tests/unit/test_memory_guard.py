"""The memory guard: a wake is admitted only if the host's available memory, less what the wakes
admitted just before will take, covers the instance's limit and the host's reserve."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from foundry_fleet.services.memory_guard import MemoryGuard

LIMIT, RESERVE, HOLD = 512, 256, 120.0


@dataclass
class Host:
    """What the guard reads: MemAvailable (None: the host does not say) and the time."""

    available: int | None
    now: float = 1000.0

    def available_mb(self) -> int | None:
        return self.available

    def clock(self) -> float:
        return self.now


def guard(host: Host, limit: int | None = LIMIT, reserve: int = RESERVE) -> MemoryGuard:
    return MemoryGuard(host.available_mb, limit, reserve, hold_for=HOLD, clock=host.clock)


def test_a_wake_needs_the_instances_limit_and_the_reserve_free() -> None:
    host = Host(available=LIMIT + RESERVE - 1)
    assert guard(host).admit("alice") == (
        "the host is full: 767 MiB free, waking alice needs 768 MiB "
        "(its limit of 512 MiB and 256 MiB kept for the host)")
    host.available = LIMIT + RESERVE
    assert guard(host).admit("alice") is None


def test_an_instance_without_a_memory_limit_needs_the_reserve_alone() -> None:
    host = Host(available=RESERVE)
    assert guard(host, limit=None).admit("alice") is None
    host.available = RESERVE - 1
    refused = guard(host, limit=None).admit("alice")
    assert refused is not None and "waking alice needs 256 MiB (its limit of 0 MiB and 256 MiB" in refused


def test_two_wakes_at_once_do_not_both_count_on_the_same_free_memory() -> None:
    """Room for one: the second visit, to another sleeping instance, comes before the first has taken its
    memory (MemAvailable has not moved yet), and is refused."""
    host = Host(available=1000)
    memory = guard(host)
    assert memory.admit("alice") is None
    assert memory.admit("bob") == (
        "the host is full: 488 MiB free (512 MiB of it promised to instances starting now), waking bob needs "
        "768 MiB (its limit of 512 MiB and 256 MiB kept for the host)")
    # Room for two: both pass, and a third finds what the two took promised.
    host.available = 2 * (LIMIT + RESERVE)
    memory = guard(host)
    assert memory.admit("alice") is None and memory.admit("bob") is None
    refused = memory.admit("carol")
    assert refused is not None and "the host is full: 512 MiB free (1024 MiB of it promised" in refused


def test_an_instance_asking_again_is_not_counted_against_itself() -> None:
    """A second wake of the same instance (a retry, a start command after a visit) replaces its own
    promise instead of adding to it."""
    host = Host(available=LIMIT + RESERVE)
    memory = guard(host)
    assert memory.admit("alice") is None
    assert memory.admit("alice") is None
    refused = memory.admit("bob")
    assert refused is not None and "(512 MiB of it promised" in refused


def test_what_a_wake_was_promised_is_freed_after_hold_for() -> None:
    """By then the instance has started and takes its memory itself (MemAvailable shows it), or it
    has not, and the memory is free again."""
    host = Host(available=1000)
    memory = guard(host)
    assert memory.admit("alice") is None
    host.now += HOLD - 0.5
    assert memory.admit("bob") is not None
    host.now += 0.5  # hold_for after alice's wake
    assert memory.admit("bob") is None
    # bob's own promise is held from its admission, not from alice's.
    host.now += HOLD - 0.5
    assert memory.admit("carol") is not None
    host.now += 0.5
    assert memory.admit("carol") is None


def test_a_host_that_does_not_say_what_is_available_wakes_its_instances() -> None:
    host = Host(available=None)
    memory = guard(host)
    for name in ("alice", "bob", "carol"):
        assert memory.admit(name) is None
    # Those wakes were not judged, so nothing of them is counted once the host says again.
    host.available = LIMIT + RESERVE
    assert memory.admit("dave") is None


@pytest.mark.parametrize("available", [0, 100])
def test_a_host_with_less_free_than_promised_says_none_is_free(available: int) -> None:
    host = Host(available=2000)
    memory = guard(host)
    assert memory.admit("alice") is None
    host.available = available  # something else took it meanwhile
    refused = memory.admit("bob")
    assert refused is not None and refused.startswith("the host is full: 0 MiB free (512 MiB of it promised")
