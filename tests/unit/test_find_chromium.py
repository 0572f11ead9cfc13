"""The browser tests find Chromium under the names distributions give it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cdp_browser import find_chromium


def _installed(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("name", ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"])
def test_found_under_each_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    installed = _installed(tmp_path, name)
    assert find_chromium() == str(installed)


def test_chromium_setting_wins_and_none_found_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CHROMIUM", raising=False)
    assert find_chromium() is None
    _installed(tmp_path, "chromium")
    mine = _installed(tmp_path, "my-chrome")
    monkeypatch.setenv("CHROMIUM", str(mine))
    assert find_chromium() == str(mine)
