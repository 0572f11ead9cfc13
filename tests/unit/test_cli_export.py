"""`instance export` never writes a zip to a terminal, and never asks the daemon for one it would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.cli import run_main


def test_export_refuses_a_terminal_before_asking_the_daemon(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("FOUNDRY_FLEET_CONFIG", str(tmp_path / "nowhere" / "fleet.toml"))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run_main(monkeypatch, capsys, "instance", "export", "alice")
    assert code == 2 and "terminal" in err and "-o FILE" in err  # not exit 6: the daemon was never asked
    assert out == ""


def test_an_import_of_a_missing_file_says_so_without_the_daemon(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("FOUNDRY_FLEET_CONFIG", str(tmp_path / "nowhere" / "fleet.toml"))
    code, _, err = run_main(monkeypatch, capsys, "instance", "import", "alice", str(tmp_path / "missing.zip"))
    assert code == 2 and "cannot read" in err
