"""Print mmdebstrap mirror lines for a Debian suite from the host's apt sources, with `contrib` added.

The image is built from the same mirrors the host already uses (the lane must not name one of its own):
each distinct URI of the host's one-line (sources.list) or deb822 (*.sources) entries for the suite,
its -updates and its -security, as `deb URI SUITE main contrib`.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCES = Path("/etc/apt")


def _entries() -> list[tuple[list[str], list[str]]]:
    """(uris, suites) of every `deb` entry the host has."""
    found: list[tuple[list[str], list[str]]] = []
    lists = [SOURCES / "sources.list", *sorted((SOURCES / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                rest = words[1:]
                if rest[0].startswith("["):  # options such as [signed-by=...]
                    while rest and not rest[0].endswith("]"):
                        rest = rest[1:]
                    rest = rest[1:]
                if len(rest) >= 2:
                    found.append(([rest[0]], [rest[1]]))
    for path in sorted((SOURCES / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith((" ", "#")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                found.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return found


def mirror_lines(suite: str) -> list[str]:
    wanted = {suite, f"{suite}-updates", f"{suite}-security", f"{suite}/updates"}
    lines: list[str] = []
    for uris, suites in _entries():
        for uri in uris:
            for s in suites:
                line = f"deb {uri} {s} main contrib"
                if s in wanted and line not in lines:
                    lines.append(line)
    return lines


if __name__ == "__main__":
    print("\n".join(mirror_lines(sys.argv[1])))
