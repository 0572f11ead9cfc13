"""The podman side of a test fleet: the containers the fleet labelled as its own, found and removed by
that label when its test ends (a daemon killed on purpose leaves them running, as conmon keeps them),
then the fleet's network and its firewall chains (a daemon that stops cleanly removes them itself).

The `podman` command runs with the fleet's own containers.conf (`<root>/run/podman/containers.conf`)
when the fleet wrote one, else with one holding what this host needs (runc, explicit ulimits, cgroupfs,
file events; see FIELD-NOTES "Podman"), so a clean-up never depends on the host's defaults.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
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
    # `podman ps` fails now and then while a container it lists is being torn down (its network
    # namespace just went): asked again, it answers.
    for _ in range(20):
        p = podman("ps", "-a", "--format", "json", *filters, conf=fleet_containers_conf(root), check=False)
        if p.returncode == 0:
            return [_container(row) for row in json.loads(p.stdout or "[]")]
        time.sleep(0.05)
    raise ListingFailed(f"podman ps failed ({p.returncode}): {p.stderr.strip()}")


class ListingFailed(AssertionError):
    """`podman ps` kept failing; its message names the containers it failed on."""

    def containers(self) -> list[str]:
        return sorted(set(re.findall(r"container ([0-9a-f]{64})", str(self))))


def _container(row: dict[str, Any]) -> Container:
    names = row.get("Names") or [""]
    return Container(id=row["Id"], name=names[0], state=row.get("State", ""), image=row.get("Image", ""),
                     labels=row.get("Labels") or {})


def inspect(container: str, root: Path) -> dict[str, Any]:
    out = podman("container", "inspect", container, conf=fleet_containers_conf(root)).stdout
    return json.loads(out)[0]


def remove_containers_of(fleet_id: str, root: Path) -> list[Container]:
    """Remove (by force) every container labelled for the fleet; returns those there were.

    A container podman cannot list (its network namespace mount was lost: "unknown FS magic") is
    removed by the id the failed listing names, and the fleet's are listed again."""
    for _ in range(5):
        try:
            found = containers_of(fleet_id, root)
        except ListingFailed as e:
            if not e.containers():
                raise
            podman("rm", "-f", "-t", "0", *e.containers(), conf=fleet_containers_conf(root), check=False)
            continue
        if found:
            podman("rm", "-f", "-t", "0", *[c.id for c in found], conf=fleet_containers_conf(root))
        return found
    return containers_of(fleet_id, root)


def networks_of(fleet_id: str, root: Path) -> list[str]:
    out = podman("network", "ls", "--format", "{{.Name}}", "--filter", f"label={FLEET_LABEL}={fleet_id}",
                 conf=fleet_containers_conf(root)).stdout
    return out.split()


def remove_fleet_podman(fleet_id: str, root: Path) -> list[Container]:
    """Remove the fleet's containers, then its networks and their firewall chains; returns the
    containers there were."""
    from foundry_fleet.runtime.podman.fleet_network import FleetNetwork

    found = remove_containers_of(fleet_id, root)
    for network in networks_of(fleet_id, root):
        podman("network", "rm", "-f", network, conf=fleet_containers_conf(root))
    FleetNetwork(fleet_id).remove_firewall()
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
