"""The control groups a test fleet's daemon makes, found and removed once its processes are gone.

The daemon gives each fleet a parent group named after its root (`foundry-fleet-<8 hex>`, see the
daemon's wiring) in every hierarchy it uses: on cgroup v1 one per controller (memory, cpu, pids) plus
the forwarders' group in the v2 hierarchy beside them; on v2 one tree. It leaves them when it stops,
since instances may outlive it; a test fleet's must not outlive its test.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def fleet_cgroup_parent(root: Path) -> str:
    """The cgroup parent of the fleet whose (resolved) root is `root`, as the daemon names it."""
    return "foundry-fleet-" + hashlib.sha256(str(root).encode()).hexdigest()[:8]


def groups_under(parent: str, cgroup_root: Path = CGROUP_ROOT) -> list[Path]:
    """Every group `parent` and its descendants, in every hierarchy under `cgroup_root`, deepest first."""
    tops = [cgroup_root / parent]
    try:
        tops += [h / parent for h in cgroup_root.iterdir() if h.is_dir() and not h.is_symlink()]
    except OSError:
        pass
    found: list[Path] = []
    for top in tops:
        if top.is_dir():
            found += [Path(d) for d, _dirs, _files in os.walk(top, topdown=False)]
    return found


def members(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_groups(parent: str, timeout: float = 10.0, cgroup_root: Path = CGROUP_ROOT) -> list[Path]:
    """rmdir every group under `parent`, deepest first, waiting (up to `timeout`) for processes that
    were just killed to leave them. Returns the groups still there (each still holds a process)."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for group in groups_under(parent, cgroup_root):
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                left.append(group)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)  # a killed process leaves its groups only once the kernel has reaped it


def describe(groups: list[Path]) -> str:
    return "; ".join(f"{g} (processes {members(g)})" for g in groups)


def fleet_firewall_chain(parent: str) -> str:
    """The INPUT chain of the fleet whose cgroup parent is `parent`, as the daemon names it."""
    return "FOUNDRY-FLEET-" + parent.removeprefix("foundry-fleet-")


def remove_fleet_firewall(parent: str) -> None:
    """Remove the firewall chains of the fleet whose cgroup parent is `parent` (the daemon names both
    after the fleet: `foundry-fleet-<id>`, `FOUNDRY-FLEET-<id>` and its `-OUT` chain); nothing when
    there are none."""
    from foundry_fleet.runtime.firewall import EgressFilter, PortFirewall

    chain = fleet_firewall_chain(parent)
    PortFirewall(chain).remove()
    EgressFilter(f"{chain[:24]}-OUT").remove()
