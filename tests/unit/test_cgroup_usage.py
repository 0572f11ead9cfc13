"""What a task's groups tell of its memory and CPU, on trees laid out as the kernel lays out each hierarchy.

The machines the suite runs on have cgroup v1 with cpuacct mounted apart from cpu, where the local
runtime's driver tests read the real files; the layouts of other hosts (v2, and v1 with cpu,cpuacct in one
mount as systemd mounts them) are read here from the same files with the values a kernel writes.
"""

from __future__ import annotations

from pathlib import Path

from foundry_fleet.runtime.cgroups import TaskCgroups

MIB = 1024 * 1024


def v2_group(tmp_path: Path, **files: str) -> TaskCgroups:
    group = tmp_path / "fleet" / "alpha"
    group.mkdir(parents=True)
    for name, text in files.items():
        (group / name.replace("_", ".", 1)).write_text(text)
    return TaskCgroups("alpha", 2, {"memory": group, "cpu": group, "pids": group})


def v1_groups(tmp_path: Path, cpuacct: bool, limit: str) -> TaskCgroups:
    dirs = {c: tmp_path / c / "fleet" / "alpha" for c in ("memory", "cpu", "pids")}
    for d in dirs.values():
        d.mkdir(parents=True)
    (dirs["memory"] / "memory.usage_in_bytes").write_text(f"{150 * MIB}\n")
    (dirs["memory"] / "memory.limit_in_bytes").write_text(limit)
    (dirs["cpu"] / "cpu.stat").write_text("nr_periods 0\nnr_throttled 0\nthrottled_time 0\n")
    if cpuacct:
        (dirs["cpu"] / "cpuacct.usage").write_text("2500000000\n")
    return TaskCgroups("alpha", 1, dirs)


def test_v2_reads_memory_current_its_limit_and_usage_usec(tmp_path: Path) -> None:
    cg = v2_group(tmp_path, memory_current=f"{200 * MIB}\n", memory_max=f"{512 * MIB}\n",
                  cpu_stat="usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    assert (cg.memory_bytes(), cg.memory_limit_bytes(), cg.cpu_seconds()) == (200 * MIB, 512 * MIB, 1.5)


def test_v2_without_a_limit_says_none_and_cpu_stat_needs_no_cpu_controller(tmp_path: Path) -> None:
    group = tmp_path / "alpha"
    group.mkdir()
    (group / "memory.current").write_text("4096\n")
    (group / "memory.max").write_text("max\n")
    (group / "cpu.stat").write_text("usage_usec 250\nuser_usec 200\nsystem_usec 50\n")
    cg = TaskCgroups("alpha", 2, {"memory": group, "pids": group})  # the cpu controller not usable
    assert (cg.memory_bytes(), cg.memory_limit_bytes(), cg.cpu_seconds()) == (4096, None, 0.00025)


def test_v1_with_cpuacct_beside_cpu_reads_its_total(tmp_path: Path) -> None:
    cg = v1_groups(tmp_path, cpuacct=True, limit=f"{256 * MIB}\n")
    assert (cg.memory_bytes(), cg.memory_limit_bytes(), cg.cpu_seconds()) == (150 * MIB, 256 * MIB, 2.5)


def test_v1_with_cpuacct_apart_has_no_total_and_the_unlimited_ceiling_is_no_limit(tmp_path: Path) -> None:
    cg = v1_groups(tmp_path, cpuacct=False, limit="9223372036854771712\n")
    assert (cg.memory_bytes(), cg.memory_limit_bytes(), cg.cpu_seconds()) == (150 * MIB, None, None)


def test_groups_gone_or_unusable_tell_nothing(tmp_path: Path) -> None:
    gone = TaskCgroups("alpha", 2, {"memory": tmp_path / "gone", "cpu": tmp_path / "gone"})
    none = TaskCgroups("alpha", 1, {})
    for cg in (gone, none):
        assert (cg.memory_bytes(), cg.memory_limit_bytes(), cg.cpu_seconds()) == (None, None, None)
