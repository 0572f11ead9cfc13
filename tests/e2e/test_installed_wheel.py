"""The fleet as a user installs it: its wheel in a venv of its own, outside the checkout, with the locked
dependencies and nothing from the source tree (no PYTHONPATH, another working directory). Its command
prints its version, makes a fleet and runs the daemon, which stops cleanly on SIGTERM.

The wheel is built once for the module, without build isolation and without the index (setuptools is in
the test venv, see pyproject.toml's test extra); the locked packages come from a wheelhouse kept
between runs (`_locked_wheels`), and are not byte-compiled at install (the commands compile what they
import, which is far less)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import py_compile
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.fleets import MADE
from tests.support.harness import FleetHarness, wait_until
from tests.support.ports import port_block

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "foundry_fleet"
RUN_LOCK = REPO / "requirements" / "run.lock"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _user_env() -> dict[str, str]:
    """This process's environment without what would let the venv see the checkout or this venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONSTARTUP")}
    return {**env, "COLUMNS": "200", "NO_COLOR": "1"}


def _run(argv: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(a) for a in argv], cwd=cwd, env=_user_env(), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{' '.join(map(str, argv))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def _locked_wheels(lock: Path) -> Path:
    """The wheels `lock` pins for this Python and platform, downloaded once for each content of the lock
    and kept outside the checkout ($XDG_CACHE_HOME/foundry-fleet/locked-wheels), the two newest sets:
    reading the index's pages (thousands of files for some packages) is most of an install's time. The
    install checks them against the lock's hashes all the same."""
    key = hashlib.sha256(lock.read_bytes() + f"{sys.implementation.cache_tag} {platform.machine()}".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "foundry-fleet" / "locked-wheels"
    wheels = cache / key.hexdigest()[:16]
    if not wheels.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
        try:
            # `pip wheel`, not `pip download`: a package published only as source is built here, once.
            _run([sys.executable, "-m", "pip", "wheel", "-q", "--require-hashes", "-w", partial, "-r", lock],
                 cwd=cache)
            with contextlib.suppress(OSError):  # another run put them there first
                partial.rename(wheels)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        sets = sorted((p for p in cache.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        for old in sets[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    return wheels


def _tree_files() -> set[str]:
    """The files of src/foundry_fleet as the wheel names them (bytecode aside)."""
    return {"foundry_fleet/" + p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet's wheel, built from a copy of the project: a build in the checkout would leave build/
    there, whose stale files a later build would pack. The copy keeps the tree's __pycache__ directories
    (`make test` compiles src), and has one at least: the wheel must leave them out."""
    tmp = tmp_path_factory.mktemp("wheel")
    project = tmp / "project"
    shutil.copytree(PACKAGE, project / "src" / "foundry_fleet")
    py_compile.compile(str(project / "src" / "foundry_fleet" / "__init__.py"), doraise=True)  # bytecode, surely
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp / "dist", project], cwd=tmp)
    [built] = (tmp / "dist").glob("foundry_fleet-*.whl")
    return built


def test_the_wheel_holds_every_file_of_the_package_and_no_bytecode(wheel: Path) -> None:
    """Migrations, their template, deploy/*.json: whatever lies under src/foundry_fleet is in the wheel."""
    names = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith(f"foundry_fleet-{VERSION}.dist-info/")}
    tree = _tree_files()
    not_python = {n for n in tree if not n.endswith(".py")}
    assert {"foundry_fleet/deploy/unit_settings.json", "foundry_fleet/store/migrations/script.py.mako"} <= not_python
    assert not_python - names == set(), "files of src/foundry_fleet missing from the wheel"
    assert names == tree, f"missing: {sorted(tree - names)}; not in the tree: {sorted(names - tree)}"


def test_the_installed_wheel_runs_a_fleet(wheel: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    home = tmp_path / "user"  # the working directory: nothing of the checkout around
    home.mkdir()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=home)
    python, command = venv / "bin" / "python", venv / "bin" / "foundry-fleet"
    # This venv's pip installs into that one (--python): the new venv needs no pip of its own.
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile"]
    _run([*pip, "--require-hashes", "--no-index", "--find-links", _locked_wheels(RUN_LOCK), "-r", RUN_LOCK], cwd=home)
    _run([*pip, "--no-deps", wheel], cwd=home)
    installed = time.monotonic()

    assert _run([command, "--version"], cwd=home).stdout == f"foundry-fleet {VERSION}\n"
    where = _run([python, "-c", "import foundry_fleet; print(foundry_fleet.__file__)"], cwd=home).stdout
    assert Path(where.strip()).is_relative_to(venv), where

    root = tmp_path / "fleet"
    low = port_block()
    _run([command, "init", "--root", root, "--http-port", low + 80, "--https-port", low + 81], cwd=home)
    h = FleetHarness(root=root, config=root / "fleet.toml")
    MADE.append(h)
    h.edit_config("port_range = [30000, 30999]", f"port_range = [{low}, {low + 49}]")
    h.edit_config("web_port = 8099", f"web_port = {low + 82}")
    status = [command, "--config", h.config, "status", "--json"]
    try:
        with open(root / "daemon.log", "wb") as log:
            daemon = subprocess.Popen([str(command), "--config", str(h.config), "up"], cwd=home, env=_user_env(),
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        h.daemons.append(daemon)

        def answers() -> bool:
            if daemon.poll() is not None:
                raise AssertionError(f"up exited {daemon.returncode}:\n{(root / 'daemon.log').read_text()}")
            return h.socket.exists() and json.loads(_run(status, cwd=home).stdout)["daemon"]["running"]

        wait_until(answers, 60, "`status` to see the daemon running", interval=0.2)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        assert code == 0, f"up exited {code} on SIGTERM:\n{(root / 'daemon.log').read_text()}"
    finally:
        h.tear_down()
    print(f"\ninstalled in {installed - started:.1f} s, ran in {time.monotonic() - installed:.1f} s")
