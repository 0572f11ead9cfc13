"""The exposure score `systemd-analyze security --offline=yes` gives the unit `foundry-fleet service
install` writes, for the local and the podman runtime, beside a plain unit running the same daemon
(ExecStart only) as the anchor.

Target (issue: deployment): <= 5.0 for the local runtime.
Run: .venv/bin/python bench/unit_exposure.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.config import load_config  # noqa: E402
from foundry_fleet.deploy.service_install import unit_spec_for  # noqa: E402
from foundry_fleet.deploy.systemd_unit import UNIT_NAME, render_unit  # noqa: E402
from foundry_fleet.services.init import init_fleet  # noqa: E402


def exposure(text: str, where: Path) -> float:
    where.mkdir(parents=True, exist_ok=True)
    (where / UNIT_NAME).write_text(text)
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(where / UNIT_NAME)],
                         capture_output=True, text=True, check=False).stdout
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    if found is None:
        raise SystemExit(f"systemd-analyze printed no score:\n{out}")
    return float(found.group(1))


def main() -> None:
    print(describe())
    print(subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True).stdout.splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        scores = {}
        for runtime in ("local", "podman"):
            config_path = init_fleet(Path(tmp, runtime), None, None, None, None, "directory", False, runtime=runtime,
                                     runtimes=["local", "podman", "nomad"])
            unit = render_unit(unit_spec_for(load_config(config_path), config_path, leave_running=True))
            scores[runtime] = exposure(unit, Path(tmp, "units", runtime))
            if runtime == "local":
                plain = "\n".join(line for line in unit.splitlines()
                                  if line.startswith(("[", "ExecStart=", "Description=", "WantedBy="))) + "\n"
                scores["plain"] = exposure(plain, Path(tmp, "units", "plain"))
    for name, what in (("local", "the unit, local runtime"), ("podman", "the unit, podman runtime"),
                       ("plain", "a plain unit (ExecStart only)")):
        print(f"{what:32} exposure {scores[name]:.1f}")
    print(f"plain / unit (local): {scores['plain'] / scores['local']:.1f}x the exposure; target <= 5.0: "
          f"{'met' if scores['local'] <= 5.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
