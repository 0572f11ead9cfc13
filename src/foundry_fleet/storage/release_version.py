"""Which Foundry version an unpacked release tree holds, as the release cache lays it out: what the
storage drivers key their own copies of a release by (a ZFS home's release dataset, a directory home's
copy on another file system)."""

from __future__ import annotations

import json
from pathlib import Path

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.release import parse_version


def release_version_of(release_dir: Path) -> str:
    """The Foundry version of an unpacked release tree, as the release cache lays it out.

    The cache keeps a release at `versions/<version>/` next to its manifest `versions/<version>.json`;
    a wrapped zip's app root is one folder further down (`versions/13.347/FoundryVTT-13.347/`). So:
    the release dir or one of its two parents that has a `<its name>.json` manifest beside it saying
    `"version": "<its name>"` gives the version; failing that, a release dir named like a version
    (`13.345`). Anything else is refused rather than guessed.
    """
    release_dir = Path(release_dir)
    for candidate in [release_dir, *list(release_dir.parents)[:2]]:
        manifest = candidate.parent / f"{candidate.name}.json"
        if not manifest.is_file():
            continue
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("version") == candidate.name:
            parse_version(candidate.name)
            return candidate.name
    try:
        parse_version(release_dir.name)
    except InvalidInput:
        raise InvalidInput(
            f"cannot tell which Foundry version {release_dir} holds",
            "install releases from the release cache (its manifest names the version)",
        ) from None
    return release_dir.name
