"""The one way the fleet runs `zfs` and `zpool`: errors become ExternalFailure, "busy" is retried.

zfs-fuse in particular answers "dataset is busy" for a few seconds after a mount or unmount, and a
mount that a process is still using answers "target is busy"; both usually clear on their own.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from foundry_fleet.domain.errors import ExternalFailure

_BUSY_MARKERS = ("dataset is busy", "target is busy", "device or resource busy", "pool is busy")
_DAEMON_DOWN_MARKER = "make sure that the zfs-fuse daemon is running"
_MISSING_MARKERS = ("dataset does not exist", "no such pool")


class ZfsCommandFailed(ExternalFailure):
    """A zfs/zpool command exited non-zero. `stderr` is what zfs said; `argv` what was run."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, hint: str | None = None) -> None:
        said = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip()) or "(no message)"
        super().__init__(f"`{shlex.join(argv)}` failed (exit {returncode}): {said}", hint or _hint_for(stderr))
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr

    @property
    def busy(self) -> bool:
        return _is_busy(self.stderr)

    @property
    def missing(self) -> bool:
        """zfs said the dataset (or pool) does not exist."""
        lowered = self.stderr.lower()
        return any(marker in lowered for marker in _MISSING_MARKERS)


@dataclass
class ZfsRunner:
    """Runs zfs/zpool; `observer` (if set) sees the argv of every command before it runs."""

    zfs_binary: str = "zfs"
    zpool_binary: str = "zpool"
    busy_retry_seconds: float = 8.0
    timeout: float = 600.0
    observer: Callable[[list[str]], None] | None = None

    def zfs(self, *args: str) -> str:
        return self.run([self.zfs_binary, *args])

    def zpool(self, *args: str) -> str:
        return self.run([self.zpool_binary, *args])

    def run(self, argv: Sequence[str]) -> str:
        """stdout of `argv`; retries while zfs says "busy", then raises ZfsCommandFailed."""
        argv = [str(a) for a in argv]
        deadline = time.monotonic() + self.busy_retry_seconds
        pause = 0.1
        while True:
            if self.observer is not None:
                self.observer(list(argv))
            done = self._run_once(argv)
            if done.returncode == 0:
                return done.stdout
            if not _is_busy(done.stderr) or time.monotonic() + pause > deadline:
                raise ZfsCommandFailed(argv, done.returncode, done.stderr)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _run_once(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env={**os.environ, "LC_ALL": "C"},
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise ExternalFailure(
                f"`{argv[0]}` is not installed (needed for the ZFS storage driver)",
                "install ZFS (Debian: apt-get install zfsutils-linux, or zfs-fuse), or use the directory driver",
            ) from None
        except subprocess.TimeoutExpired:
            raise ExternalFailure(
                f"`{shlex.join(argv)}` did not finish within {self.timeout:.0f} s",
                "check the pool's health (zpool status) and retry",
            ) from None

    # -- reading properties ------------------------------------------------------------------------

    def get(self, properties: Sequence[str], *datasets: str, recursive: bool = False) -> dict[str, dict[str, Prop]]:
        """{dataset: {property: Prop}} from `zfs get -H -p` (zfs-fuse has no `list -p`).

        Snapshots are included when recursive; their names contain "@".
        """
        args = ["get", "-H", "-p"]
        if recursive:
            args.append("-r")
        args += ["-o", "name,property,value,source", ",".join(properties), *datasets]
        found: dict[str, dict[str, Prop]] = {}
        for line in self.zfs(*args).splitlines():
            parts = line.split("\t")
            if len(parts) != 4:
                continue
            name, prop, value, source = parts
            found.setdefault(name, {})[prop] = Prop(value, source)
        return found

    def exists(self, dataset: str) -> bool:
        try:
            self.zfs("get", "-H", "-o", "value", "type", dataset)
        except ZfsCommandFailed as e:
            if e.missing:
                return False
            raise
        return True


@dataclass(frozen=True)
class Prop:
    value: str
    source: str  # local, default, temporary, "inherited from X", "-"

    def as_int(self) -> int | None:
        """Sizes with -p are plain integers; "-" and "none" mean no value."""
        try:
            return int(self.value)
        except ValueError:
            return None


def _is_busy(stderr: str) -> bool:
    lowered = stderr.lower()
    return any(marker in lowered for marker in _BUSY_MARKERS)


def _hint_for(stderr: str) -> str:
    lowered = stderr.lower()
    if _DAEMON_DOWN_MARKER in lowered:
        return "start the zfs-fuse daemon (run `zfs-fuse` as root), or load the ZFS kernel module"
    if "no such pool" in lowered:
        return "create or import the pool (zpool create / zpool import), or fix the ZFS base in fleet.toml"
    if _is_busy(stderr):
        return "something still uses it (a running instance, a shell in the directory): stop that and retry"
    if "out of space" in lowered or "quota exceeded" in lowered:
        return "free space in the pool (zfs list -o space) and retry"
    return "check `zpool status` and the message above, then retry"
