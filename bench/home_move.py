"""Moving an instance between storage homes: the downtime a move costs, against the naive way (stop, then
copy everything), both measured in the same run on the same data.

A move (services/operations.py `_move_home`) snapshots the instance and copies that snapshot to the target
home while it runs (the seed: not downtime), then stops it, takes a final snapshot and copies only what
changed since the seed; the instance is down from the stop to the commit (plus its start on the target,
the runtime's, measured elsewhere). The naive way stops it and then copies all of its data.

For each storage driver, with the real storage code (`snapshots.take`, `copy_instance_data`):
- ZFS: two pools on sparse files (zfs-fuse); the fleet's home on one, the target home on the other.
- Directories: the fleet root on the disk, the target home on a tmpfs mount (another file system, as
  tests/support/homes.py mounts it, so nothing can be hard-linked across).

A world of a given size is incompressible data over a realistic tree: four LevelDB-style databases (a
table file and a log each), a few hundred small files in Data/modules, the rest as 2-4 MiB images. A
"session" then appends 512 KiB to two database logs (1 MiB of db writes, as Foundry's LevelDB writes) and
adds one 2 MiB image. Each round measures:
  fleet downtime  the final snapshot + `copy_instance_data` of the difference to the target home
  naive downtime  the conservative naive copy of the same final state to a fresh target in the same home:
                  ZFS: the same final snapshot (its time counted again) and a full `zfs send | zfs recv`
                  of it (no older snapshots), mounted and owned as the home's own; directories: one copy
                  of the stopped data into the fresh target's data/ (`restore_into` with nothing to
                  reuse, the copy a move's first step makes), no snapshots.
After every round the target's data, the naive target's data and the source's are compared file by file
(SHA-256), and the target's snapshots with the source's; any difference fails the run.

Also measured: the release installed in the target home (`install_at_target`, which `_move_home` runs
after the seed copy, before the stop: outside the downtime), for the first instance moved into the home (the release is copied in) and for a second
(it is there); with two sizes or more, the worlds' instances are those two.

Figures are the median over the rounds (each round a new session on the same instance, copied on from the
target's previous copy). Reads come from the page cache on both sides (the data was just written).
Run: .venv/bin/python bench/home_move.py [--sizes 50,200,800] [--rounds 3] [--drivers zfs,directory]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]  # this tree's code, whatever the environment has installed

from bench.machine import describe  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402
from foundry_fleet.releases.cache import ReleaseCache  # noqa: E402
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits  # noqa: E402
from foundry_fleet.storage.base import Storage  # noqa: E402
from foundry_fleet.storage.directory import DirectoryStorage  # noqa: E402
from foundry_fleet.storage.home_transfer import copy_instance_data, discard_copy  # noqa: E402
from foundry_fleet.storage.ownership import chown_tree, hand_over  # noqa: E402
from foundry_fleet.storage.snapshots import restore_into  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from foundry_fleet.storage.zfs import ZfsStorage  # noqa: E402
from foundry_fleet.storage.zfs_destination import send_receive  # noqa: E402
from tests.support.foundry_standin import build_release_zip  # noqa: E402
from tests.support.homes import mount_tmpfs, unmount  # noqa: E402
from tests.support.zfs import FilePool, make_file_pool, why_zfs_cannot_run  # noqa: E402

KIB, MIB = 1024, 2**20
UID = 61234  # the instance's own user, as the fleet gives each instance one
POOL_SIZE = "3G"  # sparse: only what is written takes room
POOL_BUSY_SECONDS = 120.0
SMALL_FILES = 300
DATABASES = ("actors", "items", "scenes", "journal")
SESSION_LOG_APPEND = 512 * KIB  # to each of two databases' logs: 1 MiB of db writes
SESSION_IMAGE = 2 * MIB
RELEASE_FILES, RELEASE_FILE_BYTES = 1500, 64 * KIB  # a stand-in release about the size of Foundry's
T = TypeVar("T")


@dataclass
class Homes:
    driver: str
    source: Storage
    target: Storage
    naive: Storage  # a fresh target in the same home as `target`, for the naive copy
    where: str


@dataclass
class Round:
    final_snapshot: float
    incremental: float
    incremental_bytes: int
    across_bytes: int  # of incremental_bytes, those that crossed between homes (directories: new snapshot files)
    naive: float
    naive_bytes: int

    @property
    def downtime(self) -> float:
        return self.final_snapshot + self.incremental


@dataclass
class Result:
    driver: str
    size_mib: int
    files: int
    world_bytes: int
    seed_snapshot: float
    seed_copy: float
    seed_bytes: int
    seed_across: int
    changed: int
    rounds: list[Round] = field(default_factory=list)


# stopping -------------------------------------------------------------------------------------------------

# A TERM or an interrupt is acted on between steps, never inside a `zfs send | zfs recv`: the stream's pipe,
# still open here while its exception unwinds, would keep zfs-fuse writing into it and the pool busy, so
# that it could not be destroyed until the process exits.
_stop_signal: list[int] = []


def _request_stop(signum: int, _frame: object) -> None:
    if _stop_signal:  # asked twice: stop now, whatever is left behind
        raise SystemExit(128 + signum)
    _stop_signal.append(signum)
    print(f"stopping after this step ({signal.Signals(signum).name}); again to stop at once", file=sys.stderr)


def stop_point() -> None:
    if _stop_signal:
        raise SystemExit(128 + _stop_signal[0])


# the world ----------------------------------------------------------------------------------------------


def write_file(path: Path, size: int, append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if append else "wb") as f:
        left = size
        while left:
            chunk = min(left, MIB)
            f.write(os.urandom(chunk))
            left -= chunk
        f.flush()
        os.fsync(f.fileno())


def world_dir(data: Path) -> Path:
    return data / "Data" / "worlds" / "campaign"


def make_world(data: Path, total: int, rng: random.Random) -> tuple[int, int]:
    """Write a world of about `total` incompressible bytes; returns (files, bytes)."""
    files = written = 0
    db_table = total // 25  # four databases: 16 % of the world
    for db in DATABASES:
        for name, size in (("000005.ldb", db_table), ("000007.log", 64 * KIB)):
            write_file(world_dir(data) / "data" / db / name, size)
            files, written = files + 1, written + size
    for i in range(SMALL_FILES):
        size = rng.randrange(4 * KIB, 32 * KIB)
        write_file(data / "Data" / "modules" / f"module-{i % 12}" / f"part-{i:03d}.json", size)
        files, written = files + 1, written + size
    i = 0
    while written < total:
        size = min(rng.randrange(2 * MIB, 4 * MIB), max(total - written, 256 * KIB))
        write_file(world_dir(data) / "assets" / f"map-{i:02d}.webp", size)
        stop_point()
        files, written, i = files + 1, written + size, i + 1
    chown_tree(data, UID, UID)
    return files, written


def play_session(data: Path, round_number: int) -> int:
    """What a session writes: the databases' logs grow, a new image is uploaded. Returns bytes changed."""
    for db in ("actors", "scenes"):
        write_file(world_dir(data) / "data" / db / "000007.log", SESSION_LOG_APPEND, append=True)
    image = world_dir(data) / "assets" / f"session-{round_number}.webp"
    write_file(image, SESSION_IMAGE)
    chown_tree(data, UID, UID)
    return 2 * SESSION_LOG_APPEND + SESSION_IMAGE


def digest_tree(root: Path) -> dict[str, str]:
    """Every file's SHA-256 by its path under root; links are reported as such, never followed."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            out[rel] = f"link:{os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_same(what: str, copy: Path, source: Path) -> None:
    got, want = digest_tree(copy), digest_tree(source)
    if got != want:
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:3]
        raise SystemExit(f"FAIL: {what} at {copy} differs from the source at {source}: missing {missing}, "
                         f"extra {extra}, different {differ}")


def end_children(grace: float = 5.0) -> None:
    """End this process's own children still running (a `zfs send | zfs recv` a TERM cut short): a pool is
    busy, and cannot be destroyed, while one of them holds it."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while True:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)


def destroy_pool(pool: FilePool, seconds: float = POOL_BUSY_SECONDS) -> None:
    """Destroy a pool of the run; zfs-fuse calls it busy for a while after a send that was cut short."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            pool.destroy()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# homes ----------------------------------------------------------------------------------------------------


@contextmanager
def zfs_homes(work: Path) -> Iterator[Homes]:
    reason = why_zfs_cannot_run()
    if reason is not None:
        raise SystemExit(f"no ZFS here: {reason}")
    with ExitStack() as undo:
        source_pool = make_file_pool(work, POOL_SIZE)
        undo.callback(destroy_pool, source_pool)
        target_pool = make_file_pool(work, POOL_SIZE)
        undo.callback(destroy_pool, target_pool)
        undo.callback(end_children)  # runs first: nothing may hold the pools when they are destroyed
        source = ZfsStorage(work / "fleet", f"{source_pool.name}/fleet")
        target = ZfsStorage(work / "home-b", f"{target_pool.name}/fleet")
        naive = ZfsStorage(work / "home-b-naive", f"{target_pool.name}/naive")
        for storage in (source, target, naive):
            storage.ensure_layout()
        yield Homes("zfs", source, target, naive,
                    f"pools {source_pool.name} -> {target_pool.name}, sparse files on the disk, zfs-fuse")


@contextmanager
def directory_homes(work: Path, tmpfs_size: int) -> Iterator[Homes]:
    with ExitStack() as undo:
        mount = work / "home-b-fs"
        mount_tmpfs(mount, f"{tmpfs_size // MIB}m")
        undo.callback(unmount, mount)
        undo.callback(end_children)
        source = DirectoryStorage(work / "fleet")
        target = DirectoryStorage(mount / "fleet")
        naive = DirectoryStorage(mount / "naive")
        for storage in (source, target, naive):
            storage.ensure_layout()
        yield Homes("directory", source, target, naive, f"fleet root on the disk -> a tmpfs at {mount}")


# the measurements -----------------------------------------------------------------------------------------


def timed(run: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = run()
    return time.perf_counter() - t0, out


def naive_copy(homes: Homes, instance: str, final: str) -> int:
    """The stopped instance's data copied whole into a fresh target; returns the bytes copied."""
    naive = homes.naive
    if isinstance(naive, ZfsStorage):
        assert isinstance(homes.source, ZfsStorage)
        naive.ensure_instance_container(instance)
        sent = send_receive(["zfs", "send", f"{homes.source.layout.data(instance)}@{final}"],
                            ["zfs", "recv", "-u", naive.layout.data(instance)])
        hand_over(naive.create_instance(instance).data, UID)
        return sent
    paths = naive.create_instance(instance)
    return restore_into(homes.source.paths(instance).data, paths.data, UID).bytes_new


def across_bytes(homes: Homes, instance: str, new_snapshots: tuple[str, ...], total: int) -> int:
    """The bytes that crossed between homes: ZFS all of the stream; directories the new snapshots' files
    (the rest of the copy is the target's data/ rebuilt from its own newest snapshot, inside the home)."""
    if not isinstance(homes.target, DirectoryStorage):
        return total
    made = {s.name: s.bytes_new for s in homes.target.snapshots.list(instance)}
    return sum(made[name] for name in new_snapshots)


def measure(homes: Homes, size_mib: int, rounds: int) -> Result:
    instance = f"world-{size_mib}m"
    rng = random.Random(size_mib)  # the same tree for both drivers
    source, target = homes.source, homes.target
    data = source.create_instance(instance).data
    files, world = make_world(data, size_mib * MIB, rng)
    stop_point()
    snap_seed, _ = timed(lambda: source.snapshots.take(instance, data, "move-seed"))
    seed_time, seed = timed(lambda: copy_instance_data(instance, source, target, UID))
    stop_point()
    result = Result(homes.driver, size_mib, files, world, snap_seed, seed_time, seed.bytes,
                    across_bytes(homes, instance, seed.snapshots, seed.bytes), 0)
    for n in range(1, rounds + 1):
        stop_point()
        result.changed = play_session(data, n)
        final = f"move-final-{n}"
        snap_time, _ = timed(partial(source.snapshots.take, instance, data, final))
        copy_time, copied = timed(lambda: copy_instance_data(instance, source, target, UID))
        if copied.snapshots != (final,):
            raise SystemExit(f"FAIL: the incremental copy brought {copied.snapshots}, not ({final!r},)")
        stop_point()
        naive_time, naive_bytes = timed(partial(naive_copy, homes, instance, final))
        if homes.driver == "zfs":
            naive_time += snap_time  # the naive way needs the same snapshot to send
        result.rounds.append(Round(snap_time, copy_time, copied.bytes,
                                   across_bytes(homes, instance, copied.snapshots, copied.bytes),
                                   naive_time, naive_bytes))
        check_same(f"the moved copy (round {n})", target.paths(instance).data, data)
        check_same(f"the naive copy (round {n})", homes.naive.paths(instance).data, data)
        have = [s.name for s in target.snapshots.list(instance)]
        want = [s.name for s in source.snapshots.list(instance)]
        if have != want:
            raise SystemExit(f"FAIL: the target holds snapshots {have}, the source {want}")
        discard_copy(instance, homes.naive)
    return result


@dataclass
class Install:
    driver: str
    first: float  # the first instance moved into the home: the release is copied into it
    again: float  # a later one: the home has the release already


def make_release(work: Path) -> tuple[Path, int, int]:
    """A stand-in release unpacked in the fleet's release cache (on the disk); (its tree, files, bytes)."""
    z = build_release_zip(work, ReleaseLayout.NODE, 13, 345, filler_files=RELEASE_FILES,
                          filler_bytes=RELEASE_FILE_BYTES)
    cache = ReleaseCache(work / "cache", DownloadPolicy(allowed_hosts=(), max_download_bytes=8 << 30),
                         UnpackLimits(8 << 30, 1_000_000))
    info = cache.add(str(z))
    tree = Path(info.path)
    files = sum(len(names) for _d, _ds, names in os.walk(tree))
    return tree, files, info.unpacked_bytes


def measure_install(homes: Homes, instances: list[str], release: Path) -> Install:
    """`install_at_target`, which `_move_home` runs before the stop: the release installed in the target home
    for the first instance moved there, then for a second one."""
    first, _ = timed(partial(homes.target.install_release, instances[0], release))
    again, _ = timed(partial(homes.target.install_release, instances[1], release))
    return Install(homes.driver, first, again)


# output ---------------------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / MIB:.2f} MiB"


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_installs(installs: list[Install], files: int, size: int) -> None:
    print()
    print(f"install at the target (stand-in release: {files} files, {mib(size)}), before the stop in `_move_home`:")
    print()
    print("| driver | first instance moved into the home (release copied in) | later ones (release there) |")
    print("| --- | --- | --- |")
    for i in installs:
        print(f"| {i.driver} | {i.first:.2f} s | {i.again * 1000:.0f} ms |")


def print_results(results: list[Result], rounds: int) -> None:
    print()
    print("| driver | world | files | seed: snapshot + copy while running (bytes across homes) | session changed | final snapshot "
          "| incremental copy (bytes across homes) | fleet downtime | naive: stop + full copy | naive / fleet |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        m = {k: median([getattr(x, k) for x in r.rounds])
             for k in ("final_snapshot", "incremental", "incremental_bytes", "across_bytes", "naive", "naive_bytes",
                       "downtime")}
        lo = min(x.naive / x.downtime for x in r.rounds)
        hi = max(x.naive / x.downtime for x in r.rounds)
        across = "" if m["across_bytes"] == m["incremental_bytes"] else f" ({mib(m['across_bytes'])})"
        seed_across = "" if r.seed_across == r.seed_bytes else f" ({mib(r.seed_across)})"
        print(f"| {r.driver} | {mib(r.world_bytes)} | {r.files} | {mib(r.seed_bytes)}{seed_across} in "
              f"{r.seed_snapshot + r.seed_copy:.2f} s | {mib(r.changed)} | {m['final_snapshot'] * 1000:.0f} ms "
              f"| {mib(m['incremental_bytes'])}{across} in {m['incremental']:.2f} s | **{m['downtime']:.2f} s** "
              f"| {mib(m['naive_bytes'])} in {m['naive']:.2f} s | **{m['naive'] / m['downtime']:.1f}x** "
              f"({lo:.1f}-{hi:.1f}) |")
    print()
    print(f"median of {rounds} rounds; naive / fleet: the median ratio (the range over the rounds)")
    print("every round: the moved copy, the naive copy and the source equal file for file (SHA-256), "
          "and the target's snapshots are the source's: PASS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200,800", help="world sizes in MiB, comma separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drivers", default="zfs,directory")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    drivers = args.drivers.split(",")
    unknown = set(drivers) - {"zfs", "directory"}
    if unknown or args.rounds < 1 or min(sizes) < 8:
        parser.error(f"drivers are zfs and directory (got {sorted(unknown) or drivers}), rounds >= 1, "
                     "sizes >= 8 MiB; nothing was run")
    # A run stopped from outside unwinds like an error (at the next step), so pools and mounts are cleaned up.
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    print(f"machine: {describe()}")
    results, installs = [], []
    work = Path(tempfile.mkdtemp(prefix="ff-bench-move-"))
    keep_work = False
    try:
        release, release_files, release_bytes = make_release(work)
        for driver in drivers:
            # Room for the target's snapshots, its data and one naive copy, for every size at once.
            room = sum(sizes) * MIB * 4 + args.rounds * 8 * MIB * len(sizes) + 64 * MIB
            homes_cm = zfs_homes(work) if driver == "zfs" else directory_homes(work, room)
            try:
                with homes_cm as homes:
                    print(f"{driver}: {homes.where}", flush=True)
                    for size in sizes:
                        result = measure(homes, size, args.rounds)
                        print(f"  {size} MiB: done ({len(result.rounds)} rounds)", flush=True)
                        results.append(result)
                    if len(sizes) > 1:
                        installs.append(measure_install(homes, [f"world-{size}m" for size in sizes], release))
            except (AssertionError, subprocess.CalledProcessError) as e:  # a pool or a mount that would not go
                keep_work = True
                print(f"could not clean up {work} ({e}): it is kept, see `zpool list` and `mount`", file=sys.stderr)
                raise
    finally:
        if not keep_work:  # never delete a pool's file under a live pool, nor through a mount
            remove_tree(work)
    print_results(results, args.rounds)
    if installs:
        print_installs(installs, release_files, release_bytes)


if __name__ == "__main__":
    main()
