"""Per-instance install cost: the fleet's hard-linked install versus unzipping the release afresh.

Target (issue: single-host fleet): >= 50x cheaper in bytes and in time.
Run: .venv/bin/python bench/install_cost.py [--files 200 --file-kb 512 --rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402
from foundry_fleet.releases.cache import ReleaseCache  # noqa: E402
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits  # noqa: E402
from foundry_fleet.storage.directory import DirectoryStorage  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from tests.support.foundry_standin import build_release_zip  # noqa: E402


def new_bytes(tree: Path, shared_inodes: set[tuple[int, int]]) -> int:
    """Disk blocks under `tree` that are not shared with the release cache."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for n in [*dirnames, *filenames, "."]:
            st = os.lstat(os.path.join(dirpath, n))
            if (st.st_dev, st.st_ino) not in shared_inodes:
                shared_inodes.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--file-kb", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ff-bench-install-"))
    try:
        z = build_release_zip(work, ReleaseLayout.NODE, 13, 345, filler_files=args.files, filler_bytes=args.file_kb * 1024)
        cache = ReleaseCache(work / "cache", DownloadPolicy(allowed_hosts=(), max_download_bytes=8 << 30), UnpackLimits(8 << 30, 1_000_000))
        info = cache.add(str(z))
        release_dir = Path(info.path)
        cache_inodes = {(st.st_dev, st.st_ino) for st in (os.lstat(os.path.join(d, f))
                        for d, ds, fs in os.walk(release_dir) for f in fs)}
        storage = DirectoryStorage(work / "fleet")
        storage.ensure_layout()

        naive_t, naive_b, fleet_t, fleet_b = [], [], [], []
        for i in range(args.rounds):
            dest = work / f"naive-{i}"
            t0 = time.perf_counter()
            with zipfile.ZipFile(z) as zf:
                zf.extractall(dest)
            os.sync()
            naive_t.append(time.perf_counter() - t0)
            naive_b.append(new_bytes(dest, set()))

            name = f"i{i}"
            storage.create_instance(name)
            t0 = time.perf_counter()
            storage.install_release(name, release_dir)
            os.sync()
            fleet_t.append(time.perf_counter() - t0)
            fleet_b.append(new_bytes(storage.paths(name).install, set(cache_inodes)))

        mt, mb = statistics.median(naive_t), statistics.median(naive_b)
        ft, fb = statistics.median(fleet_t), statistics.median(fleet_b)
        print(f"machine: {describe()}")
        print(f"release: {info.zip_bytes / 2**20:.1f} MiB zip, {info.unpacked_bytes / 2**20:.1f} MiB unpacked, "
              f"{args.files} filler files; median of {args.rounds} rounds")
        print(f"unzip afresh : {mt * 1000:8.1f} ms  {mb / 2**20:9.2f} MiB")
        print(f"fleet install: {ft * 1000:8.1f} ms  {fb / 2**20:9.2f} MiB  (hard links into the cache)")
        print(f"ratio        : {mt / ft:8.1f}x faster, {mb / max(fb, 1):.0f}x fewer bytes   (target >= 50x)")
    finally:
        remove_tree(work)  # installs and the release cache are read-only


if __name__ == "__main__":
    main()
