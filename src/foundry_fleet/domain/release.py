"""What a Foundry release is, and which Node.js each major needs."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from foundry_fleet.domain.errors import InvalidInput, Unsupported


class ReleaseLayout(str, enum.Enum):
    """The three shapes of a Foundry release zip (detected, never assumed)."""

    NODE = "node"  # v13+ Node.js build: main.js at the root
    LINUX = "linux"  # Electron tree: resources/app/main.mjs
    LEGACY_NODE = "legacy-node"  # v12 and older: resources/app/main.js

    @property
    def entry(self) -> str:
        return {
            ReleaseLayout.NODE: "main.js",
            ReleaseLayout.LINUX: "resources/app/main.mjs",
            ReleaseLayout.LEGACY_NODE: "resources/app/main.js",
        }[self]


@dataclass(frozen=True)
class NodeRange:
    """Node.js majors a Foundry generation runs on, inclusive; None = no upper bound known."""

    minimum: int
    maximum: int | None

    def allows(self, node_major: int) -> bool:
        return node_major >= self.minimum and (self.maximum is None or node_major <= self.maximum)

    def __str__(self) -> str:
        if self.maximum is None:
            return f">={self.minimum}"
        if self.maximum == self.minimum:
            return str(self.minimum)
        return f"{self.minimum}-{self.maximum}"


# From Foundry's requirements page over time (see FIELD-NOTES): v12 breaks on 21, v13 on 23.
_NODE_RANGES: dict[int, NodeRange] = {
    10: NodeRange(14, 18),
    11: NodeRange(16, 20),
    12: NodeRange(18, 20),
    13: NodeRange(20, 22),
    14: NodeRange(24, 24),
}


def node_range_for(generation: int) -> NodeRange:
    """The Node.js range for a Foundry generation; unknown generations are refused, not guessed."""
    try:
        return _NODE_RANGES[generation]
    except KeyError:
        known = ", ".join(str(g) for g in sorted(_NODE_RANGES))
        raise Unsupported(
            f"Foundry generation {generation} is not known to this fleet (known: {known})",
            "upgrade foundry-fleet to a version that knows this release",
        ) from None


_VERSION = re.compile(r"^(\d{1,3})\.(\d{1,6})$")


def parse_version(text: str) -> tuple[int, int]:
    """`13.345` -> (13, 345)."""
    m = _VERSION.match(text.strip())
    if not m:
        raise InvalidInput(
            f"{text!r} is not a Foundry version", "versions look like 13.345 (generation.build)"
        )
    return int(m.group(1)), int(m.group(2))


def format_version(generation: int, build: int) -> str:
    return f"{generation}.{build}"


@dataclass(frozen=True)
class ReleaseInfo:
    """A release unpacked in the cache, ready to install."""

    version: str
    generation: int
    build: int
    layout: ReleaseLayout
    entry: str  # path of the Node entry point, relative to `path`
    sha256: str  # of the zip
    zip_bytes: int
    unpacked_bytes: int
    path: str  # absolute path of the unpacked, read-only tree
    source: str  # where it came from, without secrets (query strings dropped)

    @property
    def node_range(self) -> NodeRange:
        return node_range_for(self.generation)
