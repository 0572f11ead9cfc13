"""The cgroup v2 code path, on a temporary tree laid out like a cgroup2 mount.

These machines run cgroup v1 (one hierarchy per controller), where the v1 path is tested for real
(tests/drivers/test_runtime_local.py, tests/e2e). Current Debian and Ubuntu hosts mount only cgroup v2,
so what the fleet writes there is checked here: a plain directory tree stands in for the kernel,
which fills a new group with its control files, enables a controller for children through
`cgroup.subtree_control`, refuses to remove a group that still holds processes, and empties one on
`cgroup.kill`. Every write the runtime makes is recorded and compared.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from foundry_fleet.runtime import cgroups
from foundry_fleet.runtime.base import ResourceLimits
from foundry_fleet.runtime.cgroups import CgroupHost, ForwarderCgroup, unified_mount

HOST_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
CONTROLLER_FILES = {
    "memory": {"memory.max": "max\n", "memory.swap.max": "max\n", "memory.current": "0\n",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"},
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}


class Cgroup2Tree:
    """A directory tree that answers like a cgroup2 mount to the calls runtime/cgroups.py makes."""

    def __init__(self, root: Path, controllers: tuple[str, ...] = HOST_CONTROLLERS, swap: bool = True) -> None:
        self.root = root
        self.swap = swap
        self.writes: list[tuple[str, str]] = []  # (path relative to the root, value)
        root.mkdir(parents=True, exist_ok=True)
        for name, text in {"cgroup.controllers": " ".join(controllers) + "\n", "cgroup.subtree_control": "\n",
                           "cgroup.procs": "", "cgroup.max.depth": "max\n"}.items():
            (root / name).write_text(text)

    def enabled(self, group: Path, file: str = "cgroup.subtree_control") -> list[str]:
        return (group / file).read_text().split()

    def available(self, group: Path) -> list[str]:
        """What a group may enable: the host's at the root, else what its parent enables for it."""
        return self.enabled(group, "cgroup.controllers") if group == self.root else self.enabled(group.parent)

    def make_group(self, path: Path) -> None:
        if path.is_dir():
            return
        self.make_group(path.parent)
        path.mkdir()
        for name, text in {"cgroup.controllers": "\n", "cgroup.subtree_control": "\n", "cgroup.procs": "",
                           "cgroup.kill": "", "cgroup.events": "populated 0\nfrozen 0\n"}.items():
            (path / name).write_text(text)
        self._give_files(path)

    def _give_files(self, group: Path) -> None:
        """The control files of every controller the parent enables for `group` (the kernel adds them
        when a group is made, and when its parent enables one more)."""
        controllers = self.available(group)
        (group / "cgroup.controllers").write_text(" ".join(controllers) + "\n")
        for controller in controllers:
            for name, text in CONTROLLER_FILES.get(controller, {}).items():
                if name == "memory.swap.max" and not self.swap:
                    continue
                if not (group / name).exists():
                    (group / name).write_text(text)

    def write(self, path: Path, value: str) -> None:
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such control file", str(path))
        self.writes.append((str(path.relative_to(self.root)), value))
        if path.name == "cgroup.subtree_control":
            wanted = value.removeprefix("+")
            if wanted not in self.available(path.parent):
                raise OSError(errno.ENOENT, "controller not available to this group", str(path))
            path.write_text(" ".join(sorted({*self.enabled(path.parent), wanted})) + "\n")
            for child in path.parent.iterdir():
                if child.is_dir():
                    self._give_files(child)
        elif path.name == "cgroup.kill":
            for pid in self.members(path.parent):
                os.kill(pid, signal.SIGKILL)
            (path.parent / "cgroup.procs").write_text("")  # the kernel empties the group
        else:
            path.write_text(value)

    def members(self, group: Path) -> list[int]:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]

    def remove_group(self, path: Path) -> None:
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such group", str(path))
        if self.members(path) or any(p.is_dir() for p in path.iterdir()):
            raise OSError(errno.EBUSY, "group in use", str(path))
        for f in path.iterdir():
            f.unlink()
        path.rmdir()


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cgroup2Tree:
    t = Cgroup2Tree(tmp_path / "cgroup2")
    monkeypatch.setattr(cgroups, "_write", t.write)
    monkeypatch.setattr(cgroups, "_make_group", t.make_group)
    monkeypatch.setattr(cgroups, "_remove_group", t.remove_group)
    return t


def test_the_host_is_seen_as_cgroup_v2_and_enables_each_controller_down_to_the_fleets_parent(
        tree: Cgroup2Tree) -> None:
    host = CgroupHost("ops/foundry-fleet-ab12cd34", root=tree.root)
    assert host.version == 2
    states = host.controllers()
    parent = tree.root / "ops" / "foundry-fleet-ab12cd34"
    assert {c: s.available for c, s in states.items()} == {"memory": True, "cpu": True, "pids": True}
    assert states["memory"].detail == f"cgroup v2 at {parent}"
    assert host.parent_dir("memory") == host.parent_dir("pids") == parent  # one tree, not one per controller
    # Every ancestor passes every controller on, written once each as "+name".
    for group in (tree.root, tree.root / "ops", parent):
        assert tree.enabled(group) == ["cpu", "memory", "pids"], group
    assert tree.writes == [
        (where, f"+{controller}")
        for controller in ("memory", "cpu", "pids")
        for where in ("cgroup.subtree_control", "ops/cgroup.subtree_control",
                      "ops/foundry-fleet-ab12cd34/cgroup.subtree_control")
    ]
    assert [c.name for c in host.capabilities()] == ["cgroup-memory", "cgroup-cpu", "cgroup-pids"]


def test_a_controller_the_host_does_not_offer_is_reported_and_left_out(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tree = Cgroup2Tree(tmp_path / "cgroup2", controllers=("cpu", "memory"))
    monkeypatch.setattr(cgroups, "_write", tree.write)
    monkeypatch.setattr(cgroups, "_make_group", tree.make_group)
    host = CgroupHost("foundry-fleet-1", root=tree.root)
    pids = host.controllers()["pids"]
    assert not pids.available and pids.detail == f"cgroup v2: controller not enabled at {tree.root}"
    assert host.usable() == ["memory", "cpu"]
    assert set(host.task("alice").dirs) == {"memory", "cpu"}


def test_a_task_group_gets_its_limits_written_as_cgroup_v2_spells_them(tree: Cgroup2Tree) -> None:
    host = CgroupHost("foundry-fleet-1", root=tree.root)
    host.controllers()
    tree.writes.clear()
    task = host.task("alice")
    group = tree.root / "foundry-fleet-1" / "alice"
    assert task.version == 2 and task.distinct_dirs() == [group]
    assert task.procs_files() == [group / "cgroup.procs"]  # one write joins every controller
    task.create(ResourceLimits(memory_mb=512, cpu_percent=150, pids=256))
    assert tree.writes == [
        ("foundry-fleet-1/alice/memory.max", str(512 * 1024 * 1024)),
        ("foundry-fleet-1/alice/memory.swap.max", "0"),  # the limit is on memory, not memory plus swap
        ("foundry-fleet-1/alice/cpu.max", "150000 100000"),  # 1.5 cores: quota and period in µs
        ("foundry-fleet-1/alice/pids.max", "256"),
    ]
    assert (group / "memory.max").read_text() == "536870912" and (group / "pids.max").read_text() == "256"
    # A tiny CPU share still gets the kernel's minimum quota; unset limits are not written.
    tree.writes.clear()
    host.task("bob").create(ResourceLimits(cpu_percent=0))
    assert tree.writes == [("foundry-fleet-1/bob/cpu.max", "1000 100000")]


def test_without_swap_accounting_no_swap_limit_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = Cgroup2Tree(tmp_path / "cgroup2", swap=False)
    monkeypatch.setattr(cgroups, "_write", tree.write)
    monkeypatch.setattr(cgroups, "_make_group", tree.make_group)
    monkeypatch.setattr(cgroups, "_remove_group", tree.remove_group)
    host = CgroupHost("foundry-fleet-1", root=tree.root)
    host.controllers()
    tree.writes.clear()
    host.task("alice").create(ResourceLimits(memory_mb=64))
    assert tree.writes == [("foundry-fleet-1/alice/memory.max", str(64 * 1024 * 1024))]


def test_oom_kills_and_memory_are_read_from_the_v2_files(tree: Cgroup2Tree) -> None:
    host = CgroupHost("foundry-fleet-1", root=tree.root)
    task = host.task("alice")
    task.create(ResourceLimits(memory_mb=64))
    group = task.dirs["memory"]
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    (group / "memory.current").write_text("12345678\n")
    assert task.oom_kills() == 2
    assert task.memory_bytes() == 12345678


def test_a_group_with_processes_is_emptied_by_cgroup_kill_then_removed(tree: Cgroup2Tree) -> None:
    host = CgroupHost("foundry-fleet-1", root=tree.root)
    task = host.task("alice")
    task.create(ResourceLimits(pids=16))
    group = task.dirs["pids"]
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (group / "cgroup.procs").write_text(f"{sleeper.pid}\n")  # as the task joining its group would
        assert task.pids() == {sleeper.pid}
        with pytest.raises(RuntimeError, match="still hold processes"):
            task.create(ResourceLimits(pids=16))  # a live task's groups are never recreated under it
        tree.writes.clear()
        task.remove()
        assert ("foundry-fleet-1/alice/cgroup.kill", "1") in tree.writes
        assert sleeper.wait(5) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not group.exists() and not task.exists()
    host.remove_parent()
    assert not (tree.root / "foundry-fleet-1").exists()


def test_the_forwarders_group_sits_under_the_fleets_parent_in_the_v2_tree(tree: Cgroup2Tree) -> None:
    forwarders = ForwarderCgroup("foundry-fleet-1", mount=(tree.root, "/"))
    assert forwarders.ensure() == tree.root / "foundry-fleet-1" / "_forwarders"
    assert forwarders.match_path() == "foundry-fleet-1/_forwarders"  # what iptables' -m cgroup --path wants
    assert ForwarderCgroup("foundry-fleet-1", mount=(tree.root, "/system.slice")).match_path() \
        == "system.slice/foundry-fleet-1/_forwarders"
    forwarders.remove(keep_parent=False)
    assert not (tree.root / "foundry-fleet-1").exists()


def test_the_unified_mount_is_found_in_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n"
        "33 25 0:28 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory\n"
        "35 25 0:30 /fleet /sys/fs/cgroup/my\\040unified rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    assert unified_mount(mountinfo) == (Path("/sys/fs/cgroup/my unified"), "/fleet")
    mountinfo.write_text("33 25 0:28 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory\n")
    assert unified_mount(mountinfo) is None
