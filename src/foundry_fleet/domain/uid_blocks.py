"""Blocks of uids for a fleet's instances: which ones are free on a host (pure: tested without a host).

Two fleets on one host must never share a uid: a tenant of one could signal, trace or read the files
of a tenant of the other. Each fleet takes a block of BLOCK_SIZE uids (one per instance, as many as a
fleet could ever have) that no other fleet, user, group or subordinate id range uses.
"""

from __future__ import annotations

from collections.abc import Iterable

IdRange = tuple[int, int]  # inclusive

BLOCK_SIZE = 65536
# What every fleet used before fleets claimed their blocks: fleets made then still have it (in their
# fleet.toml or as the default of a missing key), so a new fleet keeps off it.
LEGACY_BLOCK: IdRange = (200000, 265535)
FIRST_BLOCK = LEGACY_BLOCK[1] + 1
LAST_ID = 2**31 - 1  # uids above this confuse too many tools (and -1 as a uid_t means "no change")


def overlaps(a: IdRange, b: IdRange) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def first_free_block(taken: Iterable[IdRange], size: int = BLOCK_SIZE, start: int = FIRST_BLOCK,
                     last: int = LAST_ID) -> IdRange | None:
    """The lowest block of `size` ids from `start` (in steps of `size`) that touches no taken range."""
    busy = sorted(r for r in taken if r[1] >= start)
    low = start
    for lo, hi in busy:
        if lo > low + size - 1:
            break  # the gap before this range holds the block
        if hi >= low:
            # Jump past it, staying on the grid of blocks so blocks line up the same on every host.
            low = start + ((hi + 1 - start + size - 1) // size) * size
    return (low, low + size - 1) if low + size - 1 <= last else None
