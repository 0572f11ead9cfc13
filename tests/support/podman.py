"""The podman side of a test fleet: the containers the fleet labelled as its own, found and removed by
that label when its test ends (a daemon killed on purpose leaves them running, as conmon keeps them).

The `podman` command runs with the fleet's own containers.conf (`<root>/run/podman/containers.conf`)
when the fleet wrote one, else with one holding what this host needs (runc, explicit ulimits, cgroupfs,
file events; see FIELD-NOTES "Podman"), so a clean-up never depends on the host's defaults.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLEET_LABEL = "foundry-fleet.fleet"
INSTANCE_LABEL = "foundry-fleet.instance"

HOST_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def podman_missing() -> str | None:
    """Why the podman runtime cannot run here (for a skip's reason), or None when it can."""
    if os.geteuid() != 0:
        return "needs root (the podman runtime runs rootful containers)"
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"needs {tool} (`make test` installs it)"
    return None


@functools.cache
def _host_conf() -> Path:
    path = Path(tempfile.mkdtemp(prefix="foundry-fleet-tests-podman-")) / "containers.conf"
    path.write_text(HOST_CONTAINERS_CONF)
    return path


def fleet_containers_conf(root: Path) -> Path:
    own = root / "run" / "podman" / "containers.conf"
    return own if own.is_file() else _host_conf()


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    state: str  # podman's word: "running", "exited", "created", ...
    image: str
    labels: dict[str, str]

    @property
    def instance(self) -> str | None:
        return self.labels.get(INSTANCE_LABEL)


def podman(*args: str, conf: Path | None = None, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(conf or _host_conf())}
    p = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def containers_of(fleet_id: str, root: Path, instance: str | None = None) -> list[Container]:
    """Every container (running or not) labelled for the fleet, or for one of its instances."""
    filters = ["--filter", f"label={FLEET_LABEL}={fleet_id}"]
    if instance is not None:
        filters += ["--filter", f"label={INSTANCE_LABEL}={instance}"]
    out = podman("ps", "-a", "--format", "json", *filters, conf=fleet_containers_conf(root)).stdout
    return [_container(row) for row in json.loads(out or "[]")]


def _container(row: dict[str, Any]) -> Container:
    names = row.get("Names") or [""]
    return Container(id=row["Id"], name=names[0], state=row.get("State", ""), image=row.get("Image", ""),
                     labels=row.get("Labels") or {})


def inspect(container: str, root: Path) -> dict[str, Any]:
    out = podman("container", "inspect", container, conf=fleet_containers_conf(root)).stdout
    return json.loads(out)[0]


def remove_containers_of(fleet_id: str, root: Path) -> list[Container]:
    """Remove (by force) every container labelled for the fleet; returns those there were."""
    found = containers_of(fleet_id, root)
    if found:
        podman("rm", "-f", "-t", "0", *[c.id for c in found], conf=fleet_containers_conf(root))
    return found


def uses_podman(root: Path, config: Path) -> bool:
    """Does (or did) the fleet run its instances in podman? Its configuration says so, or its run
    directory holds podman's files (a fleet switched back to local may have left containers)."""
    if (root / "run" / "podman").exists():
        return True
    try:
        driver = tomllib.loads(config.read_text()).get("runtime", {}).get("driver")
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return driver == "podman"
