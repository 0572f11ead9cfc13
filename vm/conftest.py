"""The VM lane's host side: one boot of the Debian guest runs every scenario under vm/guest/scenarios,
and each of them is reported here as a test of its own, with the guest's output when it failed."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: the stand-in releases

import lane  # noqa: E402
from tests.support.foundry_standin import build_release_zip  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402

# The guest's own tests; the host collects only the files beside this one.
collect_ignore = ["guest"]
BOOT_TIMEOUT = float(os.environ.get("FOUNDRY_FLEET_VM_TIMEOUT", "900"))


def _share(tmp: Path) -> tuple[Path, Path, Path]:
    """The share's fixed part (scenarios, entry, stand-in releases) and the wheels for the image."""
    wheels_dir = tmp / "build"
    fleet_wheels, lane_wheels = lane.build_wheels(wheels_dir)
    share = tmp / "share"
    shutil.copytree(lane.LANE / "guest" / "scenarios", share / "scenarios")
    shutil.copy(lane.LANE / "guest" / "entry", share / "entry")
    (share / "wheels").mkdir()
    shutil.copy(lane.fleet_wheel(fleet_wheels), share / "wheels")
    # Foundry 12 runs on Debian bookworm's Node.js 18.
    build_release_zip(share / "releases", ReleaseLayout.NODE, generation=12, build=331)
    select = os.environ.get("FOUNDRY_FLEET_VM_SELECT")
    if select:
        (share / "select").write_text(select)
    return share, fleet_wheels, lane_wheels


@pytest.fixture(scope="session")
def guest_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lane.GuestRun]:
    tmp = tmp_path_factory.mktemp("vm")
    share, fleet_wheels, lane_wheels = _share(tmp)
    image, built = lane.ensure_image(fleet_wheels, lane_wheels, tmp / "build-image.log")
    print(f"\nVM image {image.path.name} ({'built now' if built else 'cached'}), kernel {image.kernel_version}")
    boot = lane.boot(image, share, timeout=BOOT_TIMEOUT)
    print(f"guest ran {boot.seconds:.1f} s, entry exit {boot.exit_code}")
    yield lane.GuestRun(boot, share, lane.junit_cases(share / "out" / "junit.xml"),
                        os.environ.get("FOUNDRY_FLEET_VM_SELECT") or None)
