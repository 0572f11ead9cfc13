"""Per-task control groups: memory, CPU and process-count limits, OOM detection, clean removal.

Layout: cgroup v1 puts each controller in its own tree, so a task gets
`/sys/fs/cgroup/<controller>/<parent>/<task>` for memory, cpu and pids. cgroup v2 (only when the
unified hierarchy is mounted at /sys/fs/cgroup itself) gives one directory `<parent>/<task>`.

The task joins its groups itself, before it drops privileges (see local.py), so this module only
creates, reads and removes groups; it never moves processes.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.runtime.base import Capability, ResourceLimits

CONTROLLERS = ("memory", "cpu", "pids")
CFS_PERIOD_US = 100_000
# cgroup v1 says "no memory limit" with its largest page count in bytes (2**63 less a page): no real limit
# comes near this.
V1_NO_LIMIT = 1 << 62
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# The three ways this module changes a cgroup file system. Kept apart so that a test can stand in
# for the kernel (which fills a new group with its control files) on a plain directory tree laid out
# like cgroup v2, the hierarchy of current hosts but not of the cgroup v1 machines the suite runs on.


def _write(path: Path, value: str) -> None:
    # cgroup files want exactly one write() of the value.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _make_group(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _remove_group(path: Path) -> None:
    path.rmdir()


def _read_kv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    except OSError:
        pass
    return out


CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ControllerState:
    name: str
    available: bool
    detail: str


class CgroupHost:
    """The host's cgroup setup as seen by the fleet: which controllers it can use, under `parent`."""

    def __init__(self, parent: str = "foundry-fleet", root: Path = CGROUP_ROOT) -> None:
        if not parent or parent.startswith("/") or ".." in Path(parent).parts:
            raise ValueError(f"cgroup parent {parent!r} must be a relative path without '..'")
        self.parent = parent
        self.root = root
        self.version = 2 if (root / "cgroup.controllers").exists() else 1
        self._states: dict[str, ControllerState] | None = None

    def parent_dir(self, controller: str) -> Path:
        if self.version == 2:
            return self.root / self.parent
        return self.root / controller / self.parent

    def controllers(self) -> dict[str, ControllerState]:
        """Probe once: a controller is usable when its parent group exists or can be made."""
        if self._states is None:
            self._states = {c: self._probe(c) for c in CONTROLLERS}
        return self._states

    def usable(self) -> list[str]:
        return [c for c, s in self.controllers().items() if s.available]

    def capabilities(self) -> list[Capability]:
        return [
            Capability(f"cgroup-{s.name}", s.available, s.detail) for s in self.controllers().values()
        ]

    def _probe(self, controller: str) -> ControllerState:
        version = f"cgroup v{self.version}"
        if self.version == 1:
            mount = self.root / controller
            if not (mount / "cgroup.procs").exists():
                return ControllerState(controller, False, f"{version}: {mount} is not a mounted controller")
        else:
            enabled = (self.root / "cgroup.controllers").read_text().split()
            if controller not in enabled:
                return ControllerState(controller, False, f"{version}: controller not enabled at {self.root}")
        target = self.parent_dir(controller)
        try:
            _make_group(target)
            if self.version == 2:
                self._enable_subtree(controller)
        except OSError as exc:
            return ControllerState(controller, False, f"{version}: cannot use {target}: {exc.strerror}")
        if not os.access(target, os.W_OK):
            return ControllerState(controller, False, f"{version}: {target} is not writable")
        return ControllerState(controller, True, f"{version} at {target}")

    def _enable_subtree(self, controller: str) -> None:
        # v2: a controller reaches a group only when every ancestor lists it in subtree_control.
        path = self.root
        for part in Path(self.parent).parts:
            control = path / "cgroup.subtree_control"
            if controller not in control.read_text().split():
                _write(control, f"+{controller}")
            path = path / part
        control = path / "cgroup.subtree_control"
        if controller not in control.read_text().split():
            _write(control, f"+{controller}")

    def remove_parent(self) -> None:
        """Remove the (empty) parent groups, e.g. when the fleet is uninstalled."""
        for controller in CONTROLLERS:
            try:
                _remove_group(self.parent_dir(controller))
            except (FileNotFoundError, OSError):
                pass
        self._states = None

    def task(self, name: str) -> TaskCgroups:
        if not _SAFE_NAME.match(name):
            raise ValueError(f"task name {name!r} cannot name a cgroup")
        usable = self.usable()
        if self.version == 2:
            dirs = {c: self.root / self.parent / name for c in usable}
        else:
            dirs = {c: self.root / c / self.parent / name for c in usable}
        return TaskCgroups(name, self.version, dirs)


class TaskCgroups:
    """The groups of one task, one directory per usable controller (v2: the same directory)."""

    def __init__(self, name: str, version: int, dirs: dict[str, Path]) -> None:
        self.name = name
        self.version = version
        self.dirs = dirs

    def distinct_dirs(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def procs_files(self) -> list[Path]:
        """The cgroup.procs files a process writes its pid into to join every group."""
        return [d / "cgroup.procs" for d in self.distinct_dirs()]

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.distinct_dirs())

    def create(self, limits: ResourceLimits) -> None:
        """Make the groups (fresh ones, so OOM counters start at zero) and write the limits.

        A leftover group from an earlier run is removed first; one that still holds processes means
        the task is still running, which the caller must handle (recover or stop it).
        """
        if self.pids():
            raise RuntimeError(
                f"cgroups of {self.name!r} still hold processes {sorted(self.pids())}"
            )
        self.remove()
        for d in self.distinct_dirs():
            _make_group(d)
        if self.version == 2:
            self._limits_v2(limits)
        else:
            self._limits_v1(limits)

    def _limits_v1(self, limits: ResourceLimits) -> None:
        mem = self.dirs.get("memory")
        if mem is not None and limits.memory_mb is not None:
            value = str(limits.memory_mb * 1024 * 1024)
            _write(mem / "memory.limit_in_bytes", value)
            # With swap present, memory+swap gets the same ceiling so the limit is not a swap quota.
            memsw = mem / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, value)
        cpu = self.dirs.get("cpu")
        if cpu is not None and limits.cpu_percent is not None:
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, limits.cpu_percent * CFS_PERIOD_US // 100)))
        pids = self.dirs.get("pids")
        if pids is not None and limits.pids is not None:
            _write(pids / "pids.max", str(limits.pids))

    def _limits_v2(self, limits: ResourceLimits) -> None:
        if "memory" in self.dirs and limits.memory_mb is not None:
            d = self.dirs["memory"]
            _write(d / "memory.max", str(limits.memory_mb * 1024 * 1024))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
        if "cpu" in self.dirs and limits.cpu_percent is not None:
            quota = max(1000, limits.cpu_percent * CFS_PERIOD_US // 100)
            _write(self.dirs["cpu"] / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        if "pids" in self.dirs and limits.pids is not None:
            _write(self.dirs["pids"] / "pids.max", str(limits.pids))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files():
            try:
                found.update(int(p) for p in f.read_text().split())
            except (OSError, ValueError):
                continue
        return found

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding this group's memory limit."""
        mem = self.dirs.get("memory")
        if mem is None:
            return 0
        if self.version == 2:
            return int(_read_kv(mem / "memory.events").get("oom_kill", "0"))
        return int(_read_kv(mem / "memory.oom_control").get("oom_kill", "0"))

    def memory_bytes(self) -> int | None:
        mem = self.dirs.get("memory")
        if mem is None:
            return None
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            return int((mem / name).read_text())
        except (OSError, ValueError):
            return None

    def memory_limit_bytes(self) -> int | None:
        """The memory limit in force; None when there is none."""
        mem = self.dirs.get("memory")
        if mem is None:
            return None
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        try:
            text = (mem / name).read_text().strip()
            value = None if text == "max" else int(text)
        except (OSError, ValueError):
            return None
        return value if value is not None and value < V1_NO_LIMIT else None

    def cpu_seconds(self) -> float | None:
        """CPU time of everything the groups ever held, also of processes gone; None where the task's own
        groups keep no total: cgroup v1 with cpuacct mounted apart from cpu (it is not one of ours)."""
        if self.version == 2:
            # cpu.stat is in every v2 group, whether the cpu controller is enabled there or not.
            group = next(iter(self.dirs.values()), None)
            if group is None:
                return None
            try:
                return int(_read_kv(group / "cpu.stat")["usage_usec"]) / 1e6
            except (KeyError, ValueError):
                return None
        cpu = self.dirs.get("cpu")
        if cpu is None:
            return None
        try:
            # Present where cpu and cpuacct share a mount (/sys/fs/cgroup/cpu,cpuacct), as systemd mounts them.
            return int((cpu / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def kill(self, timeout: float = 5.0) -> bool:
        """SIGKILL every member until the groups are empty; True when they are."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.pids()
            if not members:
                return True
            for d in self.distinct_dirs():
                if self.version == 2 and (d / "cgroup.kill").exists():
                    try:
                        _write(d / "cgroup.kill", "1")
                    except OSError:
                        pass
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() >= deadline:
                return not self.pids()
            time.sleep(0.01)

    def remove(self) -> None:
        """Remove the groups; kills leftovers first. Missing groups are fine."""
        self.kill()
        for d in self.distinct_dirs():
            for attempt in range(50):
                try:
                    _remove_group(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY: a process that was just killed has not left the group yet.
                    if exc.errno != errno.EBUSY or attempt == 49:
                        raise
                    time.sleep(0.02)


def unified_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> tuple[Path, str] | None:
    """Where the cgroup v2 hierarchy is mounted and which of its directories is that mount's root.

    /sys/fs/cgroup on v2-only hosts, /sys/fs/cgroup/unified on hybrid ones; None without one.
    """
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and tail.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(_unescape_mountinfo(fields[4])), _unescape_mountinfo(fields[3])
    return None


def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes spaces, tabs, newlines and backslashes as octal escapes (\040 ...)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


class HelperCgroup:
    """A cgroup v2 group, under the fleet's parent, for helper processes that outlive the control plane
    as the tasks do. They must not stay in the control plane's own group: under systemd that is the
    service's, and stopping the service ends every process in it.
    """

    LEAF = ""  # each kind its own; never a task name (those begin with a letter or a digit)

    def __init__(self, parent: str, mount: tuple[Path, str] | None = None) -> None:
        if not parent or parent.startswith("/") or ".." in Path(parent).parts:
            raise ValueError(f"cgroup parent {parent!r} must be a relative path without '..'")
        self.parent = parent
        self.mount = mount if mount is not None else unified_mount()

    @property
    def directory(self) -> Path | None:
        return None if self.mount is None else self.mount[0] / self.parent / self.LEAF

    @property
    def procs_file(self) -> Path | None:
        return None if self.directory is None else self.directory / "cgroup.procs"

    def match_path(self) -> str:
        """The group's path from the root of the cgroup v2 hierarchy, as `-m cgroup --path` wants it."""
        if self.mount is None:
            raise ValueError("no cgroup v2 hierarchy is mounted")
        parts = [p for p in (*self.mount[1].split("/"), *Path(self.parent).parts, self.LEAF) if p]
        return "/".join(parts)

    def ensure(self) -> Path:
        """Make the group (idempotent); OSError when it cannot be made or joined."""
        if self.directory is None:
            raise FileNotFoundError("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")
        _make_group(self.directory)
        if not os.access(self.directory / "cgroup.procs", os.W_OK):
            raise PermissionError(f"{self.directory / 'cgroup.procs'} is not writable")
        return self.directory

    def pids(self) -> set[int]:
        try:
            return {int(p) for p in (self.procs_file or Path("/nonexistent")).read_text().split()}
        except (OSError, ValueError):
            return set()

    def remove(self, keep_parent: bool) -> None:
        """Remove the group if no helper is left in it, and its parent if empty and not also the
        tasks' parent (on v2-only hosts the task groups live there, with controllers enabled)."""
        if self.directory is None:
            return
        for d in (self.directory,) if keep_parent else (self.directory, self.directory.parent):
            try:
                _remove_group(d)
            except OSError:
                return


class ForwarderCgroup(HelperCgroup):
    """The cgroup v2 group every network forwarder of one fleet runs in, so that the firewall can
    tell their sockets apart (iptables `-m cgroup --path`) from everything else on the host.

    A socket belongs to the cgroup of the process that created it, for its whole life: a forwarder
    therefore joins the group before it execs slirp4netns (network.py), so that none of its sockets
    predates the move. The group persists across daemon restarts (forwarders outlive the daemon),
    and iptables resolves `--path` once, when a rule is loaded: the group must exist before the
    rules and is never removed while they are loaded.
    """

    LEAF = "_forwarders"


class LogWriterCgroup(HelperCgroup):
    """The group every task's log writer (logs.py) joins before it reads a line: a writer left in the
    control plane's group would die with a `systemctl stop` of the fleet, and the server writing to its
    pipe next would die of SIGPIPE, though it was meant to be left running for the next start."""

    LEAF = "_log-writers"


class EdgeCgroup(HelperCgroup):
    """The group the fleet's own Caddy runs in (edge/process.py): out of the control plane's, so that
    under systemd a restart of the fleet's service leaves the edge serving, as it leaves the tasks."""

    LEAF = "_edge"

    def adopt(self, pid: int) -> None:
        try:
            self.ensure()
            (self.directory / "cgroup.procs").write_text(f"{pid}\n")  # type: ignore[operator]
        except (OSError, ValueError):
            return  # not root, or no cgroup v2: Caddy stays with the daemon, as it did before

    def release(self) -> None:
        if not self.pids():
            # Where the unified hierarchy is the host's only one, the parent is also the tasks' (with
            # their controllers enabled), and stays; on a hybrid host it holds only helpers, and goes
            # with the last of them (a parent still holding a group is refused, and stays).
            self.remove(keep_parent=self.mount is not None and self.mount[0] == CGROUP_ROOT)
