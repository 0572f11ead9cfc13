"""Reading processes from /proc.

A pid alone is not an identity: the kernel reuses pids. A process is identified by its pid *and*
its start time (field 22 of /proc/<pid>/stat, clock ticks since boot), which is what the handles
store. A zombie counts as dead: PID 1 on these hosts may never reap a re-parented process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    session: int
    utime: int  # clock ticks
    stime: int
    cutime: int
    cstime: int
    start_time: int  # clock ticks since boot
    rss_pages: int


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line.

    `comm` sits in parentheses and may itself hold spaces and parentheses, so the fields after it
    are found from the *last* closing parenthesis.
    """
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren].strip())
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(
        pid=pid,
        comm=comm,
        state=rest[0],
        ppid=int(rest[1]),
        pgid=int(rest[2]),
        session=int(rest[3]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        cutime=int(rest[13]),
        cstime=int(rest[14]),
        start_time=int(rest[19]),
        rss_pages=int(rest[21]),
    )


def stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    st = stat(pid)
    return None if st is None else st.start_time


def is_alive(pid: int, start: int | None = None) -> bool:
    """The process exists, is not a zombie and (if `start` is given) is the same process."""
    st = stat(pid)
    if st is None or st.state in ("Z", "X", "x"):
        return False
    return start is None or st.start_time == start


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads' children), oldest first."""
    kids: list[int] = []
    try:
        tasks = os.listdir(PROC / str(pid) / "task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            text = (PROC / str(pid) / "task" / tid / "children").read_text()
        except OSError:
            continue
        kids.extend(int(p) for p in text.split())
    return kids


def cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] if raw else []


def status_ids(pid: int) -> tuple[int, int] | None:
    """(real uid, real gid) of a process."""
    uid = gid = None
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    except OSError:
        return None
    if uid is None or gid is None:
        return None
    return uid, gid


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def group_members(pgid: int, not_before: int = 0) -> list[int]:
    """Live processes in process group `pgid` that started at or after `not_before` ticks.

    The start-time bound keeps a reused pgid from pulling in an unrelated, older group.
    """
    members = []
    for pid in all_pids():
        st = stat(pid)
        if st is None or st.pgid != pgid or st.state in ("Z", "X", "x"):
            continue
        if st.start_time >= not_before:
            members.append(pid)
    return members


def rss_bytes(pid: int) -> int:
    try:
        fields = (PROC / str(pid) / "statm").read_text().split()
        return int(fields[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """CPU time of a live process plus its already reaped children."""
    st = stat(pid)
    if st is None:
        return 0.0
    return (st.utime + st.stime + st.cutime + st.cstime) / CLOCK_TICKS


def boot_id() -> str | None:
    """The kernel's random id of this boot (changes at every reboot)."""
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None


def available_memory_mb(meminfo: Path = PROC / "meminfo") -> int | None:
    """The kernel's estimate of memory available to new work without swapping (MemAvailable), in MiB;
    None where it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
