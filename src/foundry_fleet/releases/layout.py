"""Which of Foundry's three release shapes an unpacked tree is, and which version it holds."""

from __future__ import annotations

import json
from pathlib import Path

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.release import ReleaseLayout, format_version, node_range_for, parse_version

# Files some archivers add next to the real content; they do not make a second top-level folder.
_ARCHIVER_LITTER = frozenset({"__MACOSX", ".DS_Store"})
_MAX_PACKAGE_JSON_BYTES = 1024 * 1024
_HINT = "download the Node.js or Linux build of Foundry from your foundryvtt.com account"


def detect_layout(root: Path) -> tuple[ReleaseLayout, Path, str]:
    """(layout, app root, entry relative to the app root) of an unpacked release.

    `app_root / entry` is the file to start with node. A single wrapping folder (`FoundryVTT-13.345/`)
    is looked through. Checked in order: NODE (main.js with package.json beside it), LINUX
    (resources/app/main.mjs), LEGACY_NODE (resources/app/main.js).
    """
    root = Path(root)
    layout = _layout_at(root)
    if layout is None:
        wrapper = _single_wrapper(root)
        if wrapper is not None:
            root, layout = wrapper, _layout_at(wrapper)
    if layout is None:
        looked = ", ".join(item.entry for item in ReleaseLayout)
        raise InvalidInput(f"no Foundry server entry point found (looked for {looked})", _HINT)
    return layout, root, layout.entry


def read_version(app_root: Path, layout: ReleaseLayout) -> tuple[int, int]:
    """(generation, build) from the package.json next to the entry; the generation must be known."""
    package = (Path(app_root) / layout.entry).parent / "package.json"
    if not package.is_file():
        raise InvalidInput(f"no package.json next to the entry point {layout.entry}", _HINT)
    if package.stat().st_size > _MAX_PACKAGE_JSON_BYTES:
        raise InvalidInput("package.json next to the entry point is implausibly large", _HINT)
    try:
        data = json.loads(package.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"package.json next to the entry point is not valid JSON ({e})", _HINT) from None
    release = data.get("release") if isinstance(data, dict) else None
    if not isinstance(release, dict):
        release = {}
    generation = _whole_number(release, "generation")
    build = _whole_number(release, "build")
    # Round-trip through the domain's parser: it bounds both numbers the way version strings are.
    generation, build = parse_version(format_version(generation, build))
    node_range_for(generation)  # raises Unsupported for a generation this fleet does not know
    return generation, build


def _whole_number(release: dict[str, object], key: str) -> int:
    if key not in release:
        raise InvalidInput(f"package.json has no release.{key}", _HINT)
    value = release[key]
    # bool is an int subclass; `true` is not a build number.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"package.json release.{key} is {value!r}, not a whole number", _HINT)
    return value


def _layout_at(root: Path) -> ReleaseLayout | None:
    if (root / "main.js").is_file() and (root / "package.json").is_file():
        return ReleaseLayout.NODE
    if (root / ReleaseLayout.LINUX.entry).is_file():
        return ReleaseLayout.LINUX
    if (root / ReleaseLayout.LEGACY_NODE.entry).is_file():
        return ReleaseLayout.LEGACY_NODE
    return None


def _single_wrapper(root: Path) -> Path | None:
    children = [child for child in root.iterdir() if child.name not in _ARCHIVER_LITTER]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return None
