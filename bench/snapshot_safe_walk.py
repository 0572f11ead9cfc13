"""Directory snapshots: the safe walk (directory descriptors, O_NOFOLLOW, content comparison) against the
path-based walk it replaced (os.walk + shutil.copy2, unchanged files linked by size and mtime).

Snapshot time of a 1 GiB tree of a few thousand files: the first snapshot (everything copied), a second one
with nothing changed, and a third after every file's modification time was touched (the path-based walk
copies everything again; the safe walk compares the bytes and links). Both write to the same file system,
alternately, `--rounds` times; medians are shown.
Run: .venv/bin/python bench/snapshot_safe_walk.py [--mb 1024 --files 4096 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.storage.snapshots import DirectorySnapshots  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402


# The anchor: the path-based copy as it was before the safe walk (storage/snapshots.py, `_copy_tree` and
# `_seal`), kept here only to be measured.
def path_walk_copy(src: Path, dst: Path, previous: Path | None) -> tuple[int, int]:
    files = copied = 0
    dst.mkdir()
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        target_dir = dst if rel_dir == "." else dst / rel_dir
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                dirnames.remove(d)
                os.symlink(os.readlink(full), target_dir / d)
                continue
            (target_dir / d).mkdir()
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(full), target_dir / f)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            files += 1
            if previous is not None:
                old = previous / rel
                try:
                    ost = os.lstat(old)
                except FileNotFoundError:
                    ost = None
                if ost is not None and stat.S_ISREG(ost.st_mode) and ost.st_size == st.st_size \
                        and ost.st_mtime_ns == st.st_mtime_ns:
                    os.link(old, target_dir / f)
                    continue
            shutil.copy2(full, target_dir / f, follow_symlinks=False)
            copied += st.st_blocks * 512
    for dirpath, _dirnames, filenames in os.walk(dst, topdown=False):
        for f in filenames:
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                os.chmod(full, 0o555 if st.st_mode & 0o111 else 0o444)
        os.chmod(dirpath, 0o555)
    return files, copied


def make_tree(data: Path, mb: int, files: int) -> int:
    per_file = mb * 2**20 // files
    for i in range(files):
        d = data / "Data" / "worlds" / f"w{i % 16}" / f"scenes{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"chunk{i}.webp").write_bytes(os.urandom(per_file))
    return per_file * files


def touch_all(data: Path, ns: int) -> None:
    for dirpath, _dirs, names in os.walk(data):
        for n in names:
            os.utime(os.path.join(dirpath, n), ns=(ns, ns))


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run_anchor(work: Path, data: Path, r: int, record) -> None:  # type: ignore[no-untyped-def]
    touch_all(data, 1_700_000_000_000_000_000)
    anchor = work / f"anchor{r}"
    anchor.mkdir()
    t, (_, b) = timed(path_walk_copy, data, anchor / "one", None)
    record("path walk: first", t, b)
    t, (_, b) = timed(path_walk_copy, data, anchor / "two", anchor / "one")
    record("path walk: second, unchanged", t, b)
    touch_all(data, 1_800_000_000_000_000_000)
    t, (_, b) = timed(path_walk_copy, data, anchor / "three", anchor / "two")
    record("path walk: third, mtimes touched", t, b)
    remove_tree(anchor)


def run_safe(work: Path, data: Path, r: int, record) -> None:  # type: ignore[no-untyped-def]
    del r
    touch_all(data, 1_700_000_000_000_000_000)
    snaps = DirectorySnapshots(work)
    t, info = timed(snaps.take, "alice", data, "one")
    record("safe walk: first", t, info.bytes_new)
    t, info = timed(snaps.take, "alice", data, "two")
    record("safe walk: second, unchanged", t, info.bytes_new)
    touch_all(data, 1_800_000_000_000_000_000)
    t, info = timed(snaps.take, "alice", data, "three")
    record("safe walk: third, mtimes touched", t, info.bytes_new)
    snaps.destroy_all("alice")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ff-bench-safewalk-", dir=os.environ.get("BENCH_DIR")))
    results: dict[str, list[float]] = {}
    new_bytes: dict[str, list[int]] = {}

    def record(key: str, seconds: float, written: int) -> None:
        results.setdefault(key, []).append(seconds)
        new_bytes.setdefault(key, []).append(written)

    try:
        data = work / "instances" / "alice" / "data"
        total = make_tree(data, args.mb, args.files)
        for r in range(args.rounds):
            # Alternate which goes first, so neither always meets a colder cache.
            runs = (run_anchor, run_safe) if r % 2 == 0 else (run_safe, run_anchor)
            for run in runs:
                run(work, data, r, record)
        print(f"machine: {describe()}")
        print(f"data: {total / 2**20:.0f} MiB in {args.files} files, {args.rounds} rounds (median; min-max)")
        for key, times in results.items():
            written = statistics.median(new_bytes[key]) / 2**20
            print(f"{key:36s} {statistics.median(times) * 1000:8.0f} ms  ({min(times) * 1000:.0f}-"
                  f"{max(times) * 1000:.0f})  {written:9.1f} MiB written")
        for step in ("first", "second, unchanged", "third, mtimes touched"):
            ratio = statistics.median(results[f"safe walk: {step}"]) / statistics.median(results[f"path walk: {step}"])
            print(f"ratio safe / path walk, {step:22s}: {ratio:.2f}")
    finally:
        remove_tree(work)


if __name__ == "__main__":
    main()
