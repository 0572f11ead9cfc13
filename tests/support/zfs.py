"""Real ZFS for the tests, through zfs-fuse: the daemon started when needed, throw-away pools on files.

`zfs_pool` (session) is one pool on a sparse file with a unique name, destroyed at the end; `zfs_base`
gives each test its own dataset in it, destroyed after the test. `second_zfs_pool` (session) is another
such pool, for a fleet whose nodes keep data in a pool of their own (a home); `dataset_under` gives a
module-scoped fleet a dataset name in either pool, destroyed when it is done. The zfs-fuse daemon is started when no
daemon answers, and left running afterwards: other test runs on the host may be using it.

When zfs-fuse is missing or cannot start (not root, no /dev/fuse), the tests that need it are skipped
with the reason, unless FOUNDRY_FLEET_REQUIRE_ZFS=1 is set, which turns that into a failure (for CI).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMON_START_SECONDS = 20.0
BUSY_RETRY_SECONDS = 15.0
POOL_SIZE = "512M"
POOL_PREFIX = "fftest"


def zfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run zfs, retrying while it says "busy" (see retry_busy)."""
    done = retry_busy(lambda: subprocess.run(["zfs", *args], capture_output=True, text=True,
                                             env={**os.environ, "LC_ALL": "C"}))
    if check and done.returncode != 0:
        raise AssertionError(f"zfs {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def zpool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["zpool", *args], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if check and done.returncode != 0:
        raise AssertionError(f"zpool {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def retry_busy(run: Callable[[], subprocess.CompletedProcess[str]], seconds: float = BUSY_RETRY_SECONDS
               ) -> subprocess.CompletedProcess[str]:
    """Run until it succeeds or fails for a reason other than "busy" (zfs-fuse says so for a few
    seconds after an unmount)."""
    deadline = time.monotonic() + seconds
    while True:
        done = run()
        if done.returncode == 0 or "busy" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(0.25)


def _daemon_answers() -> bool:
    try:
        return zpool("list", "-H", "-o", "name", check=False).returncode == 0
    except FileNotFoundError:
        return False


def why_zfs_cannot_run() -> str | None:
    """None when a ZFS daemon answers (started here if needed); otherwise the reason it does not."""
    if _daemon_answers():
        return None
    if os.geteuid() != 0:
        return "zfs-fuse needs root"
    binary = shutil.which("zfs-fuse") or next((p for p in ("/usr/sbin/zfs-fuse", "/sbin/zfs-fuse")
                                                if os.path.exists(p)), None)
    if binary is None or shutil.which("zpool") is None:
        return "zfs-fuse is not installed (apt-get install zfs-fuse)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing, so zfs-fuse cannot mount"
    # A pidfile left by a daemon that was killed makes zfs-fuse refuse to start (exit 1, no word).
    _remove_stale_pidfile(PIDFILE)
    # It daemonizes itself; its own session keeps it out of pytest's process group.
    started = subprocess.run([binary, "--pidfile", str(PIDFILE)], capture_output=True, text=True,
                             start_new_session=True, timeout=30)
    deadline = time.monotonic() + DAEMON_START_SECONDS
    while time.monotonic() < deadline:
        if _daemon_answers():
            return None
        time.sleep(0.1)
    said = (started.stderr or started.stdout).strip()
    return f"zfs-fuse did not answer within {DAEMON_START_SECONDS:.0f} s of starting it ({said or 'no output'})"


PIDFILE = Path("/run/zfs-fuse.pid")


def _remove_stale_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        path.unlink(missing_ok=True)
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        comm, state = "", "X"
    if comm != "zfs-fuse" or state in ("Z", "X"):
        path.unlink(missing_ok=True)


@dataclass
class FilePool:
    name: str
    file: Path

    def destroy(self) -> None:
        done = retry_busy(lambda: zpool("destroy", self.name, check=False))
        if done.returncode != 0 and "no such pool" not in done.stderr:
            done = zpool("destroy", "-f", self.name, check=False)
        if done.returncode != 0 and "no such pool" not in done.stderr:
            raise AssertionError(f"could not destroy test pool {self.name}: {done.stderr.strip()}")
        self.file.unlink(missing_ok=True)


def sweep_stale_pools() -> list[str]:
    """Destroy test pools whose creating process is gone (a run killed before its teardown)."""
    swept = []
    names = zpool("list", "-H", "-o", "name", check=False).stdout.split()
    for name in names:
        match = re.fullmatch(rf"{POOL_PREFIX}(\d+)x[0-9a-f]+", name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        done = retry_busy(lambda n=name: zpool("destroy", "-f", n, check=False), seconds=5)
        if done.returncode == 0:
            swept.append(name)
    return swept


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_file_pool(directory: Path, size: str = POOL_SIZE) -> FilePool:
    """A new pool on a sparse file, named uniquely (runs may follow each other, or overlap)."""
    name = f"{POOL_PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
    file = directory / f"{name}.img"
    subprocess.run(["truncate", "-s", size, str(file)], check=True)
    zpool("create", "-f", "-m", "none", name, str(file))
    return FilePool(name, file)


def destroy_dataset(name: str) -> None:
    """`zfs destroy -R` (clones inside it included), retrying "busy"; a missing dataset is fine."""
    done = retry_busy(lambda: zfs("destroy", "-R", name, check=False))
    if done.returncode != 0 and "does not exist" not in done.stderr:
        raise AssertionError(f"could not destroy {name}: {done.stderr.strip()}")


@pytest.fixture(scope="session")
def zfs_daemon() -> None:
    reason = why_zfs_cannot_run()
    if reason is not None:
        if os.environ.get("FOUNDRY_FLEET_REQUIRE_ZFS") == "1":
            pytest.fail(f"ZFS is required (FOUNDRY_FLEET_REQUIRE_ZFS=1) but {reason}")
        pytest.skip(f"no ZFS here: {reason}")


@pytest.fixture(scope="session")
def zfs_pool(zfs_daemon: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilePool]:
    sweep_stale_pools()
    pool = make_file_pool(tmp_path_factory.mktemp("zpools"))
    try:
        yield pool
    finally:
        pool.destroy()


@pytest.fixture(scope="session")
def second_zfs_pool(zfs_daemon: None, zfs_pool: FilePool, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[FilePool]:
    """A second pool (after the first, so the sweep of stale pools never meets it half made)."""
    pool = make_file_pool(tmp_path_factory.mktemp("zpools-b"))
    try:
        yield pool
    finally:
        pool.destroy()


_BASES = itertools.count(1)


@contextmanager
def dataset_under(pool: FilePool) -> Iterator[str]:
    """A fresh dataset name (not created) under `pool`, destroyed (with all under it) afterwards."""
    base = f"{pool.name}/t{next(_BASES)}"
    try:
        yield base
    finally:
        destroy_dataset(base)


@pytest.fixture
def zfs_base(zfs_pool: FilePool) -> Iterator[str]:
    """A fresh dataset name (not created) under the session's pool, destroyed after the test."""
    with dataset_under(zfs_pool) as base:
        yield base


@pytest.fixture
def second_zfs_base(second_zfs_pool: FilePool) -> Iterator[str]:
    """A fresh dataset name (not created) in the second pool, destroyed after the test: a home's."""
    with dataset_under(second_zfs_pool) as base:
        yield base


def listing(base: str) -> list[str]:
    """Everything under `base` that the layout decides, one line per dataset or snapshot.

    `used` is left out on purpose: atime updates and zfs-fuse's delayed frees move it between runs.
    """
    out = zfs("list", "-H", "-r", "-t", "all", "-o", "name,mountpoint,mounted,quota,refquota,origin", base).stdout
    return sorted(out.splitlines())


def used_bytes(dataset: str) -> int:
    return int(zfs("get", "-H", "-p", "-o", "value", "used", dataset).stdout.strip())
