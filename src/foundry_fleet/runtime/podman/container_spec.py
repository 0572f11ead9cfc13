"""A TaskSpec as a libpod container-create body (Podman's SpecGenerator JSON): pure, no I/O.

What the container gets, and why:
- the release at /foundry read-only, the instance's data at /data read-write and the shared assets at
  /data/Data/shared read-only (bind mounts, nosuid and nodev; not noexec: node only reads scripts, so
  it would stop nothing, and Foundry's native addons are loaded from the release);
- a read-only root filesystem (the image is Node only) with a small private /tmp (noexec);
- no IPv6: the fleet's network is IPv4 and firewalled (fleet_network.py);
- no capabilities, no-new-privileges, the data's owner as the (unprivileged) user;
- `init` (catatonit as PID 1): it forwards SIGTERM to node, which as PID 1 would ignore it;
- memory, CPU and pids limits; the port published on 127.0.0.1 only (the edge's side);
- conmon's k8s-file log in the instance's log directory, capped at log_max_bytes;
- no restart policy: the fleet's supervisor restarts, with its backoff and crash-loop limit.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.foundry_options import server_args
from foundry_fleet.runtime.base import TaskSpec

FLEET_LABEL = "foundry-fleet.fleet"
INSTANCE_LABEL = "foundry-fleet.instance"
INSTALL_MOUNT = "/foundry"
DATA_MOUNT = "/data"
LOG_NAME = "foundry.log"
TMP_SIZE = "64m"
NOBODY = 65534  # the user when the spec names none and the data belongs to root
CPU_PERIOD = 100_000  # microseconds; cpu_percent 100 = one core = a quota of one period
BIND = ["rbind", "nosuid", "nodev"]


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    body: dict[str, Any]
    log_path: Path


def container_name(fleet_id: str, instance: str) -> str:
    return f"foundry-fleet-{fleet_id}-{instance}"


def fleet_labels(fleet_id: str) -> dict[str, str]:
    return {FLEET_LABEL: fleet_id}


def log_path(spec: TaskSpec) -> Path:
    return spec.log_dir / LOG_NAME


def container_user(spec: TaskSpec, data_owner: tuple[int, int] | None = None) -> str:
    """`uid:gid` inside: the spec's, else the data's owner unless that is root, else nobody."""
    if spec.uid is not None:
        return f"{spec.uid}:{spec.gid if spec.gid is not None else spec.uid}"
    if data_owner is not None and data_owner[0] != 0:
        return f"{data_owner[0]}:{data_owner[1]}"
    return f"{NOBODY}:{NOBODY}"


def _entry(spec: TaskSpec) -> str:
    entry = posixpath.normpath(spec.release.entry)
    if entry.startswith("/") or entry == ".." or entry.startswith("../"):
        raise ValueError(f"the release entry {spec.release.entry!r} is not inside the release")
    return posixpath.join(INSTALL_MOUNT, entry)


def _limits(spec: TaskSpec) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if spec.limits.memory_mb is not None:
        size = spec.limits.memory_mb * 1024 * 1024
        limits["memory"] = {"limit": size, "swap": size}  # swap = limit: no swap beyond the memory
    if spec.limits.cpu_percent is not None:
        limits["cpu"] = {"quota": spec.limits.cpu_percent * CPU_PERIOD // 100, "period": CPU_PERIOD}
    if spec.limits.pids is not None:
        limits["pids"] = {"limit": spec.limits.pids}
    return limits


def _mounts(spec: TaskSpec) -> list[dict[str, Any]]:
    mounts = [
        {"destination": INSTALL_MOUNT, "source": str(spec.install_dir), "type": "bind", "options": ["ro", *BIND]},
        {"destination": DATA_MOUNT, "source": str(spec.data_dir), "type": "bind", "options": ["rw", *BIND]},
    ]
    if spec.shared_dir is not None:
        inside = posixpath.join(DATA_MOUNT, str(instance_layout.SHARED_MOUNT))
        mounts.append({"destination": inside, "source": str(spec.shared_dir), "type": "bind",
                       "options": ["ro", *BIND]})
    mounts.append({"destination": "/tmp", "source": "tmpfs", "type": "tmpfs",
                   "options": ["rw", "nosuid", "nodev", "noexec", f"size={TMP_SIZE}", "mode=1777"]})
    return mounts


_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")


def build(spec: TaskSpec, image: str, fleet_id: str, *, network: str | None = None,
          data_owner: tuple[int, int] | None = None, host_ip: str = "127.0.0.1") -> ContainerPlan:
    """The create body for `spec` running `image`, on `network` (None: Podman's default bridge), its port
    published on `host_ip` (a loopback address of the host's)."""
    if not _LABEL_VALUE.match(fleet_id) or not _LABEL_VALUE.match(spec.name):
        raise ValueError(f"{fleet_id!r}/{spec.name!r} cannot name a container")
    name = container_name(fleet_id, spec.name)
    log = log_path(spec)
    body: dict[str, Any] = {
        "name": name,
        "hostname": spec.name,
        "image": image,
        "labels": {**fleet_labels(fleet_id), INSTANCE_LABEL: spec.name},
        "command": ["node", *server_args(_entry(spec), spec.port, DATA_MOUNT)],
        "env": dict(spec.env),
        "work_dir": DATA_MOUNT,
        "user": container_user(spec, data_owner),
        "mounts": _mounts(spec),
        "read_only_filesystem": True,
        "read_only_tmpfs": False,  # our own /tmp only; /var/tmp and /run stay read-only
        "cap_drop": ["ALL"],
        "no_new_privileges": True,
        "init": True,
        "stop_signal": 15,
        "resource_limits": _limits(spec),
        "portmappings": [{"host_ip": host_ip, "host_port": spec.port, "container_port": spec.port,
                          "protocol": "tcp"}],
        "log_configuration": {"driver": "k8s-file", "path": str(log), "size": spec.log_max_bytes},
        "restart_policy": "no",
        "netns": {"nsmode": "bridge"},
        # The fleet's network is IPv4 (firewalled); IPv6 would still give a link-local way to the host.
        "sysctl": {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
    }
    if network is not None:
        body["Networks"] = {network: {}}
    return ContainerPlan(name=name, body=body, log_path=log)
