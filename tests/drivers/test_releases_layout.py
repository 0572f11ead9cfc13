"""detect_layout / read_version: the three release shapes, wrappers, and package.json problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import InvalidInput, Unsupported
from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.releases.layout import detect_layout, read_version


def lay_out(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def pkg(generation: object = 13, build: object = 345) -> str:
    return json.dumps({"release": {"generation": generation, "build": build}})


@pytest.mark.parametrize(
    ("files", "layout", "version"),
    [
        ({"main.js": "", "package.json": pkg(13, 345)}, ReleaseLayout.NODE, (13, 345)),
        ({"resources/app/main.mjs": "", "resources/app/package.json": pkg(13, 346)}, ReleaseLayout.LINUX, (13, 346)),
        ({"resources/app/main.js": "", "resources/app/package.json": pkg(12, 331)}, ReleaseLayout.LEGACY_NODE, (12, 331)),
    ],
)
def test_each_layout_is_detected(tmp_path: Path, files: dict[str, str], layout: ReleaseLayout, version: tuple[int, int]) -> None:
    root = lay_out(tmp_path, files)
    found, app_root, entry = detect_layout(root)
    assert (found, app_root, entry) == (layout, root, layout.entry)
    assert (app_root / entry).is_file()
    assert read_version(app_root, found) == version


def test_a_single_wrapping_folder_is_looked_through(tmp_path: Path) -> None:
    lay_out(tmp_path, {"FoundryVTT-13.345/main.js": "", "FoundryVTT-13.345/package.json": pkg(), "__MACOSX/x": ""})
    layout, app_root, entry = detect_layout(tmp_path)
    assert layout is ReleaseLayout.NODE
    assert app_root == tmp_path / "FoundryVTT-13.345"
    assert (app_root / entry).is_file()


def test_main_js_without_package_json_at_the_root_is_not_the_node_build(tmp_path: Path) -> None:
    # A stray main.js at the root of a Linux tree must not win over the real entry.
    lay_out(tmp_path, {"main.js": "", "resources/app/main.mjs": "", "resources/app/package.json": pkg()})
    assert detect_layout(tmp_path)[0] is ReleaseLayout.LINUX


def test_two_top_level_folders_are_not_a_wrapper(tmp_path: Path) -> None:
    lay_out(tmp_path, {"a/main.js": "", "a/package.json": pkg(), "b/readme": ""})
    with pytest.raises(InvalidInput) as caught:
        detect_layout(tmp_path)
    assert caught.value.message == (
        "no Foundry server entry point found (looked for main.js, resources/app/main.mjs, resources/app/main.js)"
    )
    assert "Node.js or Linux build" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("package_text", "words"),
    [
        (json.dumps({"release": {"build": 345}}), "package.json has no release.generation"),
        (json.dumps({"name": "foundryvtt"}), "package.json has no release.generation"),
        (json.dumps({"release": {"generation": 13}}), "package.json has no release.build"),
        (json.dumps({"release": {"generation": "13", "build": 345}}), "release.generation is '13', not a whole number"),
        (json.dumps({"release": {"generation": 13, "build": True}}), "release.build is True, not a whole number"),
        (json.dumps({"release": {"generation": 13, "build": 1234567}}), "is not a Foundry version"),
        ("{not json", "not valid JSON"),
    ],
)
def test_package_json_problems_are_named(tmp_path: Path, package_text: str, words: str) -> None:
    lay_out(tmp_path, {"main.js": "", "package.json": package_text})
    layout, app_root, _ = detect_layout(tmp_path)
    with pytest.raises(InvalidInput) as caught:
        read_version(app_root, layout)
    assert words in caught.value.message


def test_missing_package_json_next_to_the_entry(tmp_path: Path) -> None:
    lay_out(tmp_path, {"resources/app/main.js": "", "package.json": pkg()})  # package.json in the wrong place
    layout, app_root, _ = detect_layout(tmp_path)
    with pytest.raises(InvalidInput, match="no package.json next to the entry point resources/app/main.js"):
        read_version(app_root, layout)


def test_unknown_generation_is_unsupported(tmp_path: Path) -> None:
    lay_out(tmp_path, {"main.js": "", "package.json": pkg(99, 1)})
    layout, app_root, _ = detect_layout(tmp_path)
    with pytest.raises(Unsupported, match="generation 99 is not known"):
        read_version(app_root, layout)
