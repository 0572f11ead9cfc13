"""The podman side of a test fleet: the containers the fleet labelled as its own, found and removed by
that label when its test ends (a daemon killed on purpose leaves them running, as conmon keeps them),
then the fleet's network and its firewall chains (a daemon that stops cleanly removes them itself).

The `podman` command runs with the fleet's own containers.conf (`<root>/run/podman/containers.conf`)
when the fleet wrote one, else with one the fleet would write (runc, explicit ulimits, cgroupfs, file
events; see FIELD-NOTES "Podman"), so a clean-up never depends on the host's defaults.

`podman ps` loads every container of the host, whatever the filter, and fails on any whose network
namespace mount is gone ("unknown FS magic"): for a moment while a container is torn down, or until it
is mounted again when another program's mount change lost it (runtime/podman/host_state.py). The
fleet's own are mounted again here as its runtime would; another's is its owner's business, so the
question is asked again until then.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.podman import containers_conf
from foundry_fleet.runtime.podman.container_spec import FLEET_LABEL, INSTANCE_LABEL, container_name
from foundry_fleet.runtime.podman.host_state import lost_namespaces, remount_namespace

__all__ = ["FLEET_LABEL", "INSTANCE_LABEL", "Container", "FleetPodman", "podman_missing", "uses_podman"]

PATIENCE = 10.0  # seconds a listing is asked again while another's lost namespace mount makes it fail


def podman_missing() -> str | None:
    """Why the podman runtime cannot run here (for a skip's reason), or None when it can."""
    if os.geteuid() != 0:
        return "needs root (the podman runtime runs rootful containers)"
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"needs {tool} (`make test` installs it)"
    if containers_conf.find_init() is None:
        return "needs catatonit, the containers' init (`make test` installs it)"
    return None


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


@functools.cache
def _default_conf_text() -> str:
    return containers_conf.render(containers_conf.find_init(), containers_conf.oci_runtime())


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


class ListingFailed(AssertionError):
    """podman kept failing on a container's lost network namespace; the message names the containers."""

    def containers(self) -> list[str]:
        return sorted(set(re.findall(r"container ([0-9a-f]{64})", str(self))))


@dataclass(frozen=True)
class FleetPodman:
    """podman as the fleet at `root` (id `fleet_id`) uses it."""

    fleet_id: str
    root: Path

    @property
    def conf(self) -> Path:
        own = self.root / "run" / "podman" / containers_conf.CONF_NAME
        if own.is_file():
            return own
        # A fleet that has not written its own yet: the same settings, beside its root in the test's
        # folder, so the run's folder (removed when the run passes) takes it away too.
        fallback = self.root.parent / f"{self.root.name}-podman" / containers_conf.CONF_NAME
        if not fallback.is_file():
            fallback.parent.mkdir(parents=True, exist_ok=True)
            fallback.write_text(_default_conf_text())
        return fallback

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                           env=containers_conf.environment(self.conf), stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def _patiently(self, *args: str) -> str:
        """`podman args` answered, its own lost namespace mounts mounted again, another's waited for."""
        deadline = time.monotonic() + PATIENCE
        while True:
            p = self.run(*args, check=False)
            if p.returncode == 0:
                return p.stdout
            lost = lost_namespaces(p.stderr)
            if not lost or time.monotonic() > deadline:
                cls = ListingFailed if lost else AssertionError
                raise cls(f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
            for cid, path in lost:
                monitor = self.monitor_of(cid)
                init = procfs.children(monitor)[:1] if monitor is not None else []
                if init:
                    remount_namespace(path, init[0])
            time.sleep(0.05)

    def containers(self, instance: str | None = None) -> list[Container]:
        """Every container (running or not) labelled for the fleet, or for one of its instances."""
        filters = ["--filter", f"label={FLEET_LABEL}={self.fleet_id}"]
        if instance is not None:
            filters += ["--filter", f"label={INSTANCE_LABEL}={instance}"]
        rows = json.loads(self._patiently("ps", "-a", "--format", "json", *filters) or "[]")
        return [Container(id=row["Id"], name=(row.get("Names") or [""])[0], state=row.get("State", ""),
                          image=row.get("Image", ""), labels=row.get("Labels") or {}) for row in rows]

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(self._patiently("container", "inspect", container))[0]

    def exists(self, container: str) -> bool:
        return self.run("container", "exists", container, check=False).returncode == 0

    def monitor_of(self, cid: str) -> int | None:
        """The conmon of container `cid` when it names the container as one of the fleet's."""
        prefix = container_name(self.fleet_id, "")
        for pid in procfs.all_pids():
            words = procfs.cmdline(pid)
            if not words or not words[0].endswith("conmon") or cid not in words:
                continue
            flags = dict(zip(words, words[1:], strict=False))
            if flags.get("-c") == cid and flags.get("-n", "").startswith(prefix):
                return pid
        return None

    def networks(self) -> list[str]:
        return self.run("network", "ls", "--format", "{{.Name}}", "--filter",
                        f"label={FLEET_LABEL}={self.fleet_id}").stdout.split()

    def remove_containers(self) -> list[Container]:
        """Remove (by force) every container labelled for the fleet; returns those there were. One of
        ours that podman still cannot list is removed by the id the failed listing names."""
        for _ in range(5):
            try:
                found = self.containers()
            except ListingFailed as e:
                # The listing names whichever container of the host it failed on: only ours go.
                own = [cid for cid in e.containers() if self.monitor_of(cid) is not None]
                if not own:
                    raise
                self.run("rm", "-f", "-t", "0", *own, check=False)
                continue
            if found:
                self.run("rm", "-f", "-t", "0", *[c.id for c in found])
            return found
        return self.containers()

    def remove_all(self) -> list[Container]:
        """The fleet's containers, then its networks and their firewall chains; the containers there were."""
        from foundry_fleet.runtime.podman.fleet_network import FleetNetwork, sweep_dead_forwarding

        found = self.remove_containers()
        for network in self.networks():
            self.run("network", "rm", "-f", network)
        fleet_network = FleetNetwork(self.fleet_id)
        fleet_network.remove_firewall()
        # A teardown netavark did not finish (a daemon killed on purpose) must not leave forwarding that
        # catches a later test's port, whichever runtime that test's fleet uses.
        sweep_dead_forwarding(fleet_network.name, None, set(), set())
        return found
