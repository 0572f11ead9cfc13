"""The lock files (requirements/*.lock) against pyproject.toml, offline: every package the fleet and its
tests ask for is pinned to a version inside its range, every pin carries hashes, and the run lock is
the test lock's packages at the same versions. `make lock-check` (CI) goes further against the index:
it recompiles them and fails on any difference."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: str
    hashes: frozenset[str]


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a lock file, by canonical name."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *hashes = line.split(" --hash=")
        req = Requirement(requirement)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {requirement!r} is not pinned"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} is pinned twice"
        pins[name] = Pin(name, Version(specs[0].version), str(req.marker or ""), frozenset(h.strip() for h in hashes))
    assert pins, f"{path.name} pins nothing"
    return pins


def requirements(section: list[str]) -> list[Requirement]:
    return [Requirement(r) for r in section]


RUN = requirements(PYPROJECT["project"]["dependencies"])
TEST = requirements(PYPROJECT["project"]["optional-dependencies"]["test"])


def assert_pinned_within_ranges(lock: dict[str, Pin], wanted: list[Requirement], lock_name: str) -> None:
    for req in wanted:
        pin = lock.get(canonicalize_name(req.name))
        assert pin is not None, f"{req} (pyproject.toml) is missing from {lock_name}: run `make lock`"
        assert req.specifier.contains(pin.version, prereleases=True), \
            f"{lock_name} pins {pin.name}=={pin.version}, outside {req} (pyproject.toml): run `make lock`"


def test_the_run_lock_pins_every_dependency_within_its_range() -> None:
    assert_pinned_within_ranges(read_lock(LOCKS / "run.lock"), RUN, "run.lock")


def test_the_test_lock_pins_every_dependency_and_test_requirement_within_its_range() -> None:
    assert_pinned_within_ranges(read_lock(LOCKS / "test.lock"), RUN + TEST, "test.lock")


def test_the_run_lock_has_no_test_requirement() -> None:
    """Beyond a package the fleet itself needs too (the run lock is what a user's install gets)."""
    run = read_lock(LOCKS / "run.lock")
    test_only = {canonicalize_name(r.name) for r in TEST} - {canonicalize_name(r.name) for r in RUN}
    assert not test_only & set(run), f"run.lock holds test requirements: {sorted(test_only & set(run))}"


@pytest.mark.parametrize("name", ["run.lock", "test.lock", "tools.lock"])
def test_every_pin_carries_its_hashes(name: str) -> None:
    """pip's --require-hashes refuses a file whose hash is not listed: a pin without one installs nothing."""
    for pin in read_lock(LOCKS / name).values():
        assert pin.hashes, f"{name}: {pin.name}=={pin.version} has no --hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), f"{name}: {pin.name}: {pin.hashes}"


def test_the_run_lock_is_the_test_locks_packages_at_the_same_versions() -> None:
    run, test = read_lock(LOCKS / "run.lock"), read_lock(LOCKS / "test.lock")
    assert set(run) <= set(test), f"in run.lock only: {sorted(set(run) - set(test))}"
    differ = [f"{n}: {run[n].version} / {test[n].version}" for n in run
              if (run[n].version, run[n].hashes, run[n].marker) != (test[n].version, test[n].hashes, test[n].marker)]
    assert not differ, f"run.lock and test.lock disagree: {differ}"


def test_the_locks_hold_from_the_oldest_python_the_fleet_supports() -> None:
    """tools/lock resolves for requires-python's floor and up: one file for Debian's 3.11 and newer Pythons."""
    floor = re.fullmatch(r">=\s*(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor, PYPROJECT["project"]["requires-python"]
    assert f"python_version={floor.group(1)}\n" in (REPO / "tools" / "lock").read_text()


def test_the_tools_lock_pins_uv_within_tools_in() -> None:
    wanted = [Requirement(line) for line in (LOCKS / "tools.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert_pinned_within_ranges(read_lock(LOCKS / "tools.lock"), wanted, "tools.lock")


def test_read_lock_reads_markers_and_refuses_a_range(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("# header\naudioop-lts==0.2.2 ; python_full_version >= '3.13' \\\n"
                    f"    --hash=sha256:{'a' * 64}\n    # via discord-py\n")
    pin = read_lock(lock)["audioop-lts"]
    assert (pin.version, pin.marker, pin.hashes) == (Version("0.2.2"), 'python_full_version >= "3.13"',
                                                      frozenset({f"sha256:{'a' * 64}"}))
    lock.write_text(f"typer>=0.12 \\\n    --hash=sha256:{'a' * 64}\n")
    with pytest.raises(AssertionError, match="not pinned"):
        read_lock(lock)
