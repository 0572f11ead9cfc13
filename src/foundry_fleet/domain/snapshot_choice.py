"""Which snapshot a person means: its full name, `latest`, or a prefix only one snapshot has.

Names carry their time (nightly-2026-11-30T0300...), so a person types the start of one rather than
copying it whole; a prefix two snapshots share is refused with both named, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable

from foundry_fleet.domain.errors import InvalidInput, NotFound

LATEST = "latest"
_SHOWN = 10  # candidates named in a refusal; more would drown the message


def choose_snapshot(wanted: str, snapshots: Iterable[tuple[str, float]], instance: str) -> str:
    """The full name of the snapshot `wanted` means, among (name, created_at) pairs."""
    wanted = wanted.strip()
    known = sorted(snapshots, key=lambda s: s[1])
    names = [n for n, _ in known]
    if wanted in names:  # a snapshot labelled "latest" by hand still means itself
        return wanted
    if not names:
        raise NotFound(f"{instance} has no snapshots yet", "take one first")
    if wanted == LATEST:
        return names[-1]
    matching = [n for n in names if n.startswith(wanted)] if wanted else []
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise NotFound(f"{instance} has no snapshot named or starting with {wanted!r}",
                       "give a name from the list of its snapshots, or `latest`")
    shown = ", ".join(matching[-_SHOWN:]) + (f" (and {len(matching) - _SHOWN} older)" if len(matching) > _SHOWN else "")
    raise InvalidInput(f"{wanted!r} could be any of {len(matching)} snapshots of {instance}: {shown}",
                       "type more of the name")
