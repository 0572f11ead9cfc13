"""Which uids a fleet's instances may use on this host: a host-wide registry of fleets' uid blocks.

Each fleet that runs as root records its claim, `{"root", "low", "high"}`, in one small file under
/var/lib/foundry-fleet/uid-claims (root's alone to write). `init` picks a block that no other claim,
no user or group, no /etc/subuid or /etc/subgid range and no running process uses; the daemon, before
it starts anything, refuses a `uid_range` that overlaps another fleet's claim, a user, group or
subordinate range, or the ids of processes that are not its own instances, and then claims it. A
claim whose fleet root no longer exists is stale: ignored, and removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from foundry_fleet.domain.errors import Conflict
from foundry_fleet.domain.uid_blocks import LEGACY_BLOCK, IdRange, first_free_block, overlaps
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.base import TaskHandle
from foundry_fleet.runtime.local_task import LocalTask
from foundry_fleet.services.exec_users import exec_user_name
from foundry_fleet.store.models import Instance

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from foundry_fleet.config import FleetConfig

REGISTRY = Path("/var/lib/foundry-fleet/uid-claims")
SUBORDINATE_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
MAX_CLAIM_BYTES = 4096
SETTING = "[instances] uid_range in fleet.toml"


@dataclass(frozen=True)
class Claim:
    root: str
    low: int
    high: int

    @property
    def range(self) -> IdRange:
        return (self.low, self.high)


def _claim_file(registry: Path, root: Path) -> Path:
    return registry / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"


@contextlib.contextmanager
def _locked(registry: Path, write: bool) -> Iterator[bool]:
    """Hold the registry's lock; yields whether claims can be written (False: not root, say)."""
    try:
        if write:
            registry.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(registry / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def read_claims(registry: Path = REGISTRY, prune: bool = False) -> list[Claim]:
    """Every live claim; a malformed file is skipped, a stale one (its root is gone) skipped or removed."""
    claims: list[Claim] = []
    try:
        entries = sorted(p for p in registry.iterdir() if p.suffix == ".json")
    except OSError:
        return claims
    for path in entries:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read(MAX_CLAIM_BYTES))
            claim = Claim(str(data["root"]), int(data["low"]), int(data["high"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not Path(claim.root).is_dir():
            if prune:
                path.unlink(missing_ok=True)
            continue
        claims.append(claim)
    return claims


def _write_claim(registry: Path, root: Path, uid_range: IdRange) -> None:
    path = _claim_file(registry, root)
    data = json.dumps({"root": str(root), "low": uid_range[0], "high": uid_range[1]})
    write_atomic(path, data, 0o644)


def host_ids(own: IdRange | None = None) -> list[IdRange]:
    """The ids users, groups and subordinate id ranges (for user namespaces) hold on this host.

    `own`: the uid block of the fleet asking. The users and groups its provisioning made for Nomad's exec
    driver (`fvtt-u<id>` with uid and gid `id`, inside that block, see exec_users) name its own
    instances' uids: they are not the host's."""
    def ours(name: str, uid: int, gid: int) -> bool:
        return own is not None and own[0] <= uid <= own[1] and uid == gid and name == exec_user_name(uid)

    users = [p for p in pwd.getpwall() if not ours(p.pw_name, p.pw_uid, p.pw_gid)]
    ranges: list[IdRange] = [(p.pw_uid, p.pw_uid) for p in users]
    ranges += [(p.pw_gid, p.pw_gid) for p in users]
    ranges += [(g.gr_gid, g.gr_gid) for g in grp.getgrall() if not ours(g.gr_name, g.gr_gid, g.gr_gid)]
    for path in SUBORDINATE_FILES:
        ranges += subordinate_ranges(path)
    return ranges


def subordinate_ranges(path: Path) -> list[IdRange]:
    """`name:start:count` lines of /etc/subuid or /etc/subgid."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            out.append((int(parts[1]), int(parts[1]) + int(parts[2]) - 1))
    return out


def process_ids(pid: int) -> set[int]:
    """Every uid and gid a process holds (real, effective, saved, filesystem)."""
    ids: set[int] = set()
    try:
        for line in (procfs.PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(("Uid:", "Gid:")):
                ids.update(int(v) for v in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ids


def choose_block(root: Path, registry: Path = REGISTRY) -> IdRange:
    """A free block of uids for the fleet at `root`, claimed for it (when this user may write claims)."""
    root = root.resolve()
    with _locked(registry, write=True) as writable:
        taken = [c.range for c in read_claims(registry, prune=writable) if Path(c.root) != root]
        taken += host_ids()
        taken += [(i, i) for pid in procfs.all_pids() for i in process_ids(pid)]
        taken.append(LEGACY_BLOCK)
        block = first_free_block(taken)
        if block is None:
            raise Conflict("no block of uids is free on this host for another fleet",
                           f"remove fleets that are gone, or set {SETTING} by hand")
        if writable:
            _write_claim(registry, root, block)
        return block


def _descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them."""
    parents = {}
    for pid in procfs.all_pids():
        st = procfs.stat(pid)
        if st is not None:
            parents[pid] = st.ppid
    mine: set[int] = set()
    for pid in parents:
        chain, p = [], pid
        while p in parents and p not in mine and p not in roots and len(chain) < 4096:
            chain.append(p)
            p = parents[p]
        if p in mine or p in roots:
            mine.update(chain)
            mine.add(p)
    return mine & set(parents)


def own_processes(handles: Iterable[LocalTask], instances_dir: Path) -> set[int]:
    """The processes of this fleet's instances: those below each live task's leader or in its process
    group, and any server started on this fleet's data (one whose handle was never recorded) with
    what runs below it."""
    live = [h for h in handles if procfs.is_alive(h.leader_pid, h.leader_start)]
    groups = {h.pgid for h in live}
    flag = f"--dataPath={instances_dir}/"
    leaders = {h.leader_pid for h in live}
    for pid in procfs.all_pids():
        st = procfs.stat(pid)
        if (st is not None and st.pgid in groups) or any(a.startswith(flag) for a in procfs.cmdline(pid)):
            leaders.add(pid)
    return _descendants(leaders)


def check_and_claim(root: Path, uid_range: IdRange, own: set[int], registry: Path = REGISTRY) -> None:
    """Refuse (Conflict, naming the key to change) a uid range another fleet claims, that holds a user,
    group or subordinate id of this host, or that processes other than this fleet's own instances
    use; else claim it for this fleet."""
    root = root.resolve()
    lo, hi = uid_range
    with _locked(registry, write=True) as writable:
        others = [c for c in read_claims(registry, prune=writable) if Path(c.root) != root]
        clash = next((c for c in others if overlaps(c.range, uid_range)), None)
        if clash is not None:
            raise Conflict(f"uid_range [{lo}, {hi}] overlaps the uids of the fleet at {clash.root} "
                           f"([{clash.low}, {clash.high}]): their tenants could signal or read each other's",
                           _hint([c.range for c in others]))
        account = next((r for r in host_ids(own=uid_range) if overlaps(r, uid_range)), None)
        if account is not None:
            what = f"id {account[0]}" if account[0] == account[1] else f"the range [{account[0]}, {account[1]}]"
            raise Conflict(f"uid_range [{lo}, {hi}] holds {what} of a user, group or /etc/subuid or /etc/subgid "
                           "entry of this host: a tenant would share its uids", _hint([c.range for c in others]))
        for pid in procfs.all_pids():
            if pid in own:
                continue
            used = sorted(i for i in process_ids(pid) if lo <= i <= hi)
            if used:
                st = procfs.stat(pid)
                raise Conflict(f"uid_range [{lo}, {hi}] holds id {used[0]}, used by process {pid} "
                               f"({st.comm if st else '?'}), which is not one of this fleet's instances",
                               _hint([c.range for c in others]))
        if writable:
            _write_claim(registry, root, uid_range)


def _hint(claimed: list[IdRange]) -> str:
    taken = [*claimed, *host_ids(), LEGACY_BLOCK]
    taken += [(i, i) for pid in procfs.all_pids() for i in process_ids(pid)]
    free = first_free_block(taken)
    suggestion = f", e.g. uid_range = [{free[0]}, {free[1]}]" if free else ""
    return f"set {SETTING} to a block no other fleet or process uses{suggestion}"


def check_fleet(config: FleetConfig, sessions: sessionmaker[Session], runtime_processes: Iterable[int] = ()) -> None:
    """The daemon's check before it starts anything (as root, where instances get uids of uid_range).

    `runtime_processes`: processes the runtime says hold the fleet's tasks (a container's monitor, for
    drivers whose tasks are not this host's process trees); they and what runs below them are own."""
    with sessions() as s:
        tasks = [t for t in s.scalars(select(Instance.task).where(Instance.task.is_not(None))).all() if t]
    handles = []
    for task in tasks:
        try:
            # Only the local driver's tasks are processes of this host.
            handles.append(LocalTask.of(TaskHandle.from_dict(task)))
        except (TypeError, ValueError):
            continue  # a handle of another shape or driver: the supervisor judges it
    # Servers on the data of any of the fleet's homes are its own ([[nomad.homes]] roots, as this host reaches them).
    own = _descendants(set(runtime_processes)).union(
        *(own_processes(handles, instances) for instances in
          (config.paths.instances, *(home.root / "instances" for home in config.nomad.homes))))
    check_and_claim(config.root, config.instances.uid_range, own)
