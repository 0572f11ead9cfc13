"""The CLI run in this process, as `foundry-fleet ARGS` from a shell would run it."""

from __future__ import annotations

import sys

import pytest

from foundry_fleet.cli.main import main


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `foundry-fleet ARGS`."""
    monkeypatch.setattr(sys, "argv", ["foundry-fleet", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err
