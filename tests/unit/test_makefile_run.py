"""`make run` hands INIT_ARGS to `init` (only when it makes the fleet) and ARGS to `up`, as the README
says; read from make's own plan of the commands (`make -n`), so nothing is installed or started."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]


def planned(*assignments: str) -> list[str]:
    done = subprocess.run(["make", "-n", "-C", str(CHECKOUT), "run", *assignments], capture_output=True,
                          text=True, timeout=60, check=True)
    return [" ".join(line.split()) for line in done.stdout.replace("\\\n", " ").splitlines()]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_passes_init_args_to_init_and_args_to_up(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    lines = planned(f"ROOT={root}", "RUNTIME=local", "INIT_ARGS=--web-port 18080 --instance-ports 30100-30199",
                    "ARGS=--leave-running")
    (init,) = [line for line in lines if " init " in line]
    (up,) = [line for line in lines if line.rstrip().endswith("up --leave-running")]
    # init only when there is no fleet.toml yet, so a second `make run` keeps the fleet as it is.
    assert init.startswith(f"[ -f {root}/fleet.toml ] || ") and f"--root {root} --runtime local" in init
    assert init.split()[-4:] == ["--web-port", "18080", "--instance-ports", "30100-30199"]
    assert f"--config {root}/fleet.toml up --leave-running" in up


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_on_nomad_names_the_nomad_address(tmp_path: Path) -> None:
    lines = planned(f"ROOT={tmp_path}", "RUNTIME=nomad", "NOMAD_ADDR=http://127.0.0.1:4646")
    (init,) = [line for line in lines if " init " in line]
    assert "--runtime nomad --nomad-addr http://127.0.0.1:4646" in init
