"""Directory-driver snapshots: disk cost of a second snapshot of unchanged data, against a full copy.

Target (issue: ZFS and backups): a second snapshot of 500 MB unchanged data costs <= 1% extra disk.
Run: .venv/bin/python bench/snapshot_cost.py [--mb 500 --files 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.install_cost import new_bytes  # noqa: E402
from bench.machine import describe  # noqa: E402
from foundry_fleet.storage.snapshots import DirectorySnapshots  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--files", type=int, default=500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ff-bench-snap-"))
    try:
        data = work / "instances" / "alice" / "data"
        per_file = args.mb * 2**20 // args.files
        for i in range(args.files):
            d = data / "Data" / "worlds" / f"w{i % 20}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"chunk{i}.db").write_bytes(os.urandom(per_file))
        snaps = DirectorySnapshots(work)
        t0 = time.perf_counter()
        first = snaps.take("alice", data, "first")
        t_first = time.perf_counter() - t0
        seen = {(st.st_dev, st.st_ino) for st in (os.lstat(os.path.join(dp, f))
                for dp, _ds, fs in os.walk(snaps.path("alice", "first")) for f in fs)}
        t0 = time.perf_counter()
        snaps.take("alice", data, "second")
        t_second = time.perf_counter() - t0
        second_cost = new_bytes(snaps.path("alice", "second"), set(seen))
        t0 = time.perf_counter()
        shutil.copytree(data, work / "full-copy")
        t_copy = time.perf_counter() - t0
        copy_cost = new_bytes(work / "full-copy", set())
        total = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
        print(f"machine: {describe()}")
        print(f"data: {total / 2**20:.0f} MiB in {args.files} files (unchanged between the two snapshots)")
        print(f"first snapshot (full copy) : {t_first * 1000:8.0f} ms  {first.bytes_new / 2**20:9.2f} MiB")
        print(f"second snapshot (unchanged): {t_second * 1000:8.0f} ms  {second_cost / 2**20:9.3f} MiB "
              f"= {100 * second_cost / total:.3f} % of the data   (target <= 1 %)")
        print(f"naive full copy (copytree) : {t_copy * 1000:8.0f} ms  {copy_cost / 2**20:9.2f} MiB")
        print(f"ratio disk full copy / second snapshot: {copy_cost / max(second_cost, 1):.0f}x")
    finally:
        remove_tree(work)


if __name__ == "__main__":
    main()
