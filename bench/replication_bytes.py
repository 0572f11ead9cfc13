"""ZFS replication: bytes an incremental send carries, against the bytes that changed and a full send.

Two pools on sparse files (zfs-fuse): the fleet's storage on one, a backup destination on the other. One
instance holds 20 MiB of incompressible data; snapshot s1 goes over in full, then each scenario changes a
known number of bytes, takes a snapshot and sends it with `ZfsDestination.send` from the last snapshot
both sides share (as the replication round does). The naive way, measured on the same snapshot, is a full
send of it.

ZFS sends whole records (128 KiB here): a change that starts and ends on record boundaries is the honest
test of the stream's overhead; a small unaligned change still costs whole records, and is reported as such.

Target (issue: ZFS and backups): an incremental send carries <= 1.2x the bytes that changed.
Run: .venv/bin/python bench/replication_bytes.py
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from foundry_fleet.storage.zfs import ZfsStorage  # noqa: E402
from foundry_fleet.storage.zfs_destination import ZfsDestination  # noqa: E402
from tests.support.zfs import make_file_pool, why_zfs_cannot_run  # noqa: E402

TARGET_RATIO = 1.2
KIB, MIB = 1024, 2**20
INSTANCE = "alice"


@dataclass
class Scenario:
    name: str
    change: Callable[[Path, int], list[tuple[Path, int, int]]]  # (data dir, which snapshot) -> writes made
    aligned: bool  # every write starts and ends on a record boundary
    snapshots: int = 1  # snapshots taken (one change each) before the send


def write_at(path: Path, offset: int, size: int) -> list[tuple[Path, int, int]]:
    """Overwrite (or extend) `size` random bytes at `offset`; returns [(path, offset, size)]."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.seek(offset)
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    return [(path, offset, size)]


def append(path: Path, size: int) -> list[tuple[Path, int, int]]:
    return write_at(path, path.stat().st_size, size)


def records_touched(writes: list[tuple[Path, int, int]], record: int) -> int:
    touched = set()
    for path, offset, size in writes:
        if size:
            touched.update((path, r) for r in range(offset // record, (offset + size - 1) // record + 1))
    return len(touched)


def worlds(data: Path) -> Path:
    return data / "Data" / "worlds" / "w"


def scenarios(record: int) -> list[Scenario]:
    def both(data: Path, _i: int) -> list[tuple[Path, int, int]]:
        w = worlds(data)
        return [*write_at(w / "a.db", 4 * MIB, MIB), *append(w / "b.db", MIB),
                *write_at(w / "new-both.db", 0, 512 * KIB)]

    return [
        Scenario("rewrite 1 MiB in place (a.db at 2 MiB)",
                 lambda d, _i: write_at(worlds(d) / "a.db", 2 * MIB, MIB), aligned=True),
        Scenario("append 1 MiB (b.db, 8 MiB -> 9 MiB)",
                 lambda d, _i: append(worlds(d) / "b.db", MIB), aligned=True),
        Scenario("add a 512 KiB file",
                 lambda d, _i: write_at(worlds(d) / "new.db", 0, 512 * KIB), aligned=True),
        Scenario("all three at once (1 MiB + 1 MiB + 512 KiB)", both, aligned=True),
        Scenario("two snapshots in one send (c.db: 1 MiB at 1 MiB, then at 2 MiB)",
                 lambda d, i: write_at(worlds(d) / "c.db", (1 + i) * MIB, MIB), aligned=True, snapshots=2),
        Scenario("rewrite 4 MiB in place (c.db at 0)",
                 lambda d, _i: write_at(worlds(d) / "c.db", 0, 4 * MIB), aligned=True),
        Scenario("rewrite 1 MiB, unaligned (a.db at 6 MiB + 64 KiB)",
                 lambda d, _i: write_at(worlds(d) / "a.db", 6 * MIB + 64 * KIB, MIB), aligned=False),
        Scenario("rewrite 4 KiB, unaligned (a.db, across a record boundary)",
                 lambda d, _i: write_at(worlds(d) / "a.db", record - 2 * KIB, 4 * KIB), aligned=False),
        Scenario("rewrite 100 bytes (b.db at 1000)",
                 lambda d, _i: write_at(worlds(d) / "b.db", 1000, 100), aligned=False),
        Scenario("nothing changed", lambda d, _i: [], aligned=False),
    ]


def full_send_bytes(snapshot: str) -> int:
    """The naive way: a full stream of `snapshot`, counted and thrown away."""
    proc = subprocess.Popen(["zfs", "send", snapshot], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read(MIB):
        total += len(chunk)
    if proc.wait() != 0:
        raise RuntimeError(f"zfs send {snapshot} failed")
    return total


def digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fmt_bytes(n: int) -> str:
    if n >= 64 * KIB:
        return f"{n / MIB:8.3f} MiB"
    return f"{n / KIB:8.1f} KiB" if n >= KIB else f"{n:10d} B"


def main() -> None:
    reason = why_zfs_cannot_run()
    if reason is not None:
        sys.exit(f"no ZFS here: {reason}")
    work = Path(tempfile.mkdtemp(prefix="ff-bench-repl-"))
    pools = []
    try:
        src_pool = make_file_pool(work)
        pools.append(src_pool)
        dst_pool = make_file_pool(work)
        pools.append(dst_pool)
        storage = ZfsStorage(work / "fleet", f"{src_pool.name}/fleet")
        storage.ensure_layout()
        data = storage.create_instance(INSTANCE).data
        record = int(subprocess.run(["zfs", "get", "-H", "-p", "-o", "value", "recordsize",
                                     storage.layout.data(INSTANCE)],
                                    capture_output=True, text=True, check=True).stdout.strip())
        compression = subprocess.run(["zfs", "get", "-H", "-o", "value", "compression",
                                      storage.layout.data(INSTANCE)],
                                     capture_output=True, text=True, check=True).stdout.strip()
        w = worlds(data)
        w.mkdir(parents=True)
        for name, size in (("a.db", 8 * MIB), ("b.db", 8 * MIB), ("c.db", 4 * MIB)):
            write_at(w / name, 0, size)
        dest = ZfsDestination(f"{dst_pool.name}/backups", source_dataset=storage.layout.data)
        taken: list[str] = []

        def snapshot() -> str:
            name = f"s{len(taken) + 1}"
            storage.snapshots.take(INSTANCE, data, name)
            taken.append(name)
            return name

        def replicate() -> tuple[int, float]:
            there = dest.snapshots(INSTANCE)
            common = next((n for n in reversed(taken) if n in set(there)), None)
            t0 = time.perf_counter()
            sent = dest.send(INSTANCE, list(taken), common, taken[-1])
            elapsed = time.perf_counter() - t0
            assert dest.snapshots(INSTANCE) == taken, (dest.snapshots(INSTANCE), taken)
            return sent, elapsed

        snapshot()
        full_sent, full_time = replicate()
        rows = []
        for sc in scenarios(record):
            writes = []
            for i in range(sc.snapshots):
                writes += sc.change(data, i)
                snapshot()
            sent, elapsed = replicate()
            anchor = full_send_bytes(f"{storage.layout.data(INSTANCE)}@{taken[-1]}")
            changed = sum(size for _p, _o, size in writes)
            rows.append((sc, changed, records_touched(writes, record), sent, elapsed, anchor))

        # What arrived is what is there: mount the destination's copy read-only and compare every file.
        copy = dest.dataset(INSTANCE)
        mount = work / "dest-copy"
        subprocess.run(["zfs", "set", f"mountpoint={mount}", copy], check=True)
        subprocess.run(["zfs", "mount", "-o", "ro", copy], check=True)
        same = digest_tree(mount) == digest_tree(data)

        print(f"machine: {describe()}")
        print(f"pools: {src_pool.name} -> {dst_pool.name}, sparse files on zfs-fuse; recordsize "
              f"{record // KIB} KiB, compression {compression}; {INSTANCE}'s data 20 MiB of random bytes "
              "in a.db 8 MiB, b.db 8 MiB, c.db 4 MiB")
        print(f"full send of s1 (the first replication): {fmt_bytes(full_sent)} in {full_time * 1000:.0f} ms")
        print()
        print(f"{'scenario':<64} {'changed':>12} {'records':>8} {'sent (incr.)':>12} {'sent/changed':>12} "
              f"{'sent/records':>12} {'full send':>12} {'full/incr.':>10} {'time':>7}  verdict")
        aligned_ok = True
        for sc, changed, records, sent, elapsed, anchor in rows:
            ratio = f"{sent / changed:.2f}x" if changed else "n/a"
            per_record = f"{sent / (records * record):.2f}x" if records else "n/a"
            if not changed:
                verdict = "(the stream's fixed overhead)"
            elif sc.aligned:
                ok = sent / changed <= TARGET_RATIO
                aligned_ok &= ok
                verdict = "PASS" if ok else "FAIL"
            elif sent / changed <= TARGET_RATIO:
                verdict = "within (unaligned)"
            else:
                verdict = f"over: ZFS sends the {records} whole record{'s' if records > 1 else ''} touched"
            print(f"{sc.name:<64} {fmt_bytes(changed)} {records:>8} {fmt_bytes(sent)} {ratio:>12} "
                  f"{per_record:>12} {fmt_bytes(anchor)} {anchor / sent:9.1f}x {elapsed * 1000:5.0f} ms  {verdict}")
        print()
        print(f"destination copy matches the source file for file after the last send: {'yes' if same else 'NO'}")
        print(f"target sent/changed <= {TARGET_RATIO}x for record-aligned changes: "
              f"{'PASS' if aligned_ok and same else 'FAIL'}")
    finally:
        failed = []
        for pool in pools:
            try:
                pool.destroy()
            except AssertionError as e:
                failed.append(e)
        if failed:  # the pool files stay, so that `zpool` can still be used on them
            raise failed[0]
        remove_tree(work)


if __name__ == "__main__":
    main()
