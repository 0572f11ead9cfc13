"""What a person meets first: `--help` of every command and usage errors, on the typer and click a fresh
install gets. Each prints one clear message and its exit code, never a Python traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import typer

from foundry_fleet.cli.main import app
from tests.support.cli import run_main
from tests.support.harness import BIN


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the CLI, as the words that name it."""
    paths: list[tuple[str, ...]] = [()]

    def walk(command: object, prefix: tuple[str, ...]) -> None:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            paths.append((*prefix, name))
            walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


def test_the_cli_has_the_commands_people_look_for() -> None:
    paths = {" ".join(p) for p in command_paths()}
    assert {"init", "up", "status", "instance create", "instance list", "backup restore", "storage init",
            "runtime show", "runtime set", "runtime image", "nomad render", "instance move", "panel login",
            "instance import", "instance export", "trust"} <= paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "(top)")
def test_help_of_every_command_is_its_usage(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(monkeypatch, capsys, *path, "--help")
    assert code == 0, err
    assert out.startswith("Usage: foundry-fleet " + " ".join(path)), out[:200]
    assert "Traceback" not in out + err and err == ""


@pytest.mark.parametrize("args, says", [
    (["instance", "lst"], "No such command 'lst'"),
    (["bogus"], "No such command 'bogus'"),
    (["instance", "create"], "Missing argument"),
    (["instance", "create", "alice", "--release"], "requires an argument"),
    (["instance", "logs", "alice", "-n", "many"], "Invalid value for '--lines'"),
    (["instance", "logs", "alice", "--lines", "notanumber"], "Invalid value for '--lines'"),
    (["events", "--limit", "0"], "Invalid value for '--limit'"),
    (["init", "--no-such-flag"], "No such option"),
    (["init", "--bogus"], "No such option: --bogus"),
    (["runtime", "set"], "Missing argument 'DRIVER'"),
    (["runtime", "sett", "podman"], "No such command 'sett'"),
    (["init", "--runtime"], "requires an argument"),
    (["init", "--nomad-addr"], "requires an argument"),
    (["nomad", "rendr"], "No such command 'rendr'"),
    (["instance", "move", "alice"], "Missing option '--node'"),
    (["nomad", "render", "--format", "xml"], "Invalid value for '--format'"),
    (["nomad", "render", "alice", "bob"], "Got unexpected extra argument"),
])
def test_a_usage_error_is_one_message_and_exit_code_2(args: list[str], says: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert says in err and err.count("Error:") == 1, err
    assert err.startswith("Usage: foundry-fleet"), err  # the usage line, then the one message
    assert "Traceback" not in out + err and len(err.splitlines()) <= 6, err


@pytest.mark.parametrize("args, says, code", [
    (["instance", "lst"], "No such command 'lst'", 2),
    (["init", "--help"], "POOL[/PATH]", 0),  # help texts are plain text, never read as markup
    (["instance", "create"], "Missing argument", 2),
    (["init", "--bogus"], "No such option", 2),
    (["instance", "logs", "alice", "--lines", "notanumber"], "Invalid value", 2),
])
def test_the_installed_command_answers_usage_errors_and_help_plainly(args: list[str], says: str, code: int) -> None:
    p = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == code, p.stderr
    assert says in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr


@pytest.mark.parametrize("args", [["init", "--runtime", "docker"], ["init", "--runtime", "fake"],
                                  ["runtime", "set", "docker"], ["runtime", "set", "fake"]])
def test_a_runtime_driver_that_is_not_offered_is_refused_naming_the_ones_that_are(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fake` runs nothing (it is for the tests): a person is never offered it, nor anything unknown."""
    from foundry_fleet.services.init import init_fleet

    config = init_fleet(tmp_path / "fleet")
    before = config.read_text()
    code, out, err = run_main(monkeypatch, capsys, "--config", str(config), *args, "--root", str(tmp_path / "new")) \
        if args[0] == "init" else run_main(monkeypatch, capsys, "--config", str(config), *args)
    assert code == 2, err
    assert f"error: unknown runtime driver '{args[-1]}'" in err and "hint: use local or nomad or podman" in err, err
    assert "Traceback" not in out + err and config.read_text() == before and not (tmp_path / "new").exists()
    assert "fake" not in run_main(monkeypatch, capsys, "init", "--help")[1]
    assert "fake" not in run_main(monkeypatch, capsys, "runtime", "set", "--help")[1]


@pytest.mark.parametrize("args", [["--version"], ["--version", "status"], ["--config", "nowhere.toml", "--version"]])
def test_version_prints_the_installed_distributions_version(args: list[str], monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """From the installed distribution's metadata, before anything else is read (no fleet.toml needed)."""
    from importlib.metadata import version

    code, out, err = run_main(monkeypatch, capsys, *args)
    assert (code, out, err) == (0, f"foundry-fleet {version('foundry-fleet')}\n", "")
    assert "--version" in run_main(monkeypatch, capsys, "--help")[1]


def test_the_installed_command_prints_its_version() -> None:
    from importlib.metadata import version

    p = subprocess.run([str(BIN), "--version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"foundry-fleet {version('foundry-fleet')}\n", "")
