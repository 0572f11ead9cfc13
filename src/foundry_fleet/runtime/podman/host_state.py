"""What Podman leaves on the host for a container, checked and repaired from the host's side.

Network namespace mounts: Podman keeps each container's network namespace as a bind mount at
`/run/netns/netns-<uuid>` (its `SandboxKey`) and needs it to list, stop and clean up the container.
On a shared host those mounts can be lost (another program's mount changes under /run/netns; seen
here: the file stays, the mount is gone, and Podman then fails with "unknown FS magic" for that
container, for *every* listing of containers, and when tearing its network down, which leaves its
port forwarding rules behind). While the container's init lives, its namespace is still at
/proc/<pid>/ns/net: mounting that again restores what Podman expects.

Processes: conmon, each container's monitor, carries the container's name (`-n NAME`), so the fleet
can tell its containers' processes from others' without asking the API (which may not run yet).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from foundry_fleet.runtime import procfs

NETNS_DIR = Path("/run/netns")
_LOST = re.compile(r"network namespace (?:for|of) container ([0-9a-f]{64}): retrieving network namespace at "
                   r"(/run/netns/[A-Za-z0-9._-]+): unknown FS magic")


def lost_namespaces(message: str) -> list[tuple[str, Path]]:
    """(container id, namespace path) of each lost namespace mount Podman's error names."""
    return [(cid, Path(path)) for cid, path in _LOST.findall(message)]


def namespace_lost(sandbox_key: str | None) -> bool:
    """Is the container's namespace file there without its mount?"""
    if not sandbox_key:
        return False
    path = Path(sandbox_key)
    if path.parent != NETNS_DIR:
        return False
    return path.is_file() and not os.path.ismount(path)


def remount_namespace(path: Path, pid: int) -> bool:
    """Mount the network namespace of process `pid` at `path` again; False when it cannot be."""
    if path.parent != NETNS_DIR or pid <= 0 or not path.is_file() or os.path.ismount(path):
        return False
    source = f"/proc/{pid}/ns/net"
    try:
        if os.readlink(source) == os.readlink("/proc/self/ns/net"):
            return False  # the process shares the host's network: not a container's namespace
    except OSError:
        return False
    return subprocess.run(["mount", "--bind", source, str(path)], capture_output=True, timeout=10).returncode == 0


def forget_namespace_file(path: Path) -> None:
    """Delete a namespace file Podman no longer knows (its mount gone, its container removed)."""
    if path.parent == NETNS_DIR and path.is_file() and not os.path.ismount(path):
        path.unlink(missing_ok=True)


def fleet_monitors(fleet_id: str) -> set[int]:
    """The conmon processes of the fleet's containers (`-n foundry-fleet-<fleet id>-<instance>`)."""
    prefix = f"foundry-fleet-{fleet_id}-"
    found = set()
    for pid in procfs.all_pids():
        st = procfs.stat(pid)
        if st is None or st.comm != "conmon":
            continue
        words = procfs.cmdline(pid)
        for flag, value in zip(words, words[1:], strict=False):
            if flag in ("-n", "--name") and value.startswith(prefix):
                found.add(pid)
    return found
