"""The one way the fleet runs `zfs` and `zpool`: errors become ExternalFailure, "busy" is retried.

zfs-fuse in particular answers "dataset is busy" for a few seconds after a mount or unmount, and a
mount that a process is still using answers "target is busy"; both usually clear on their own.

A pool on another host (a backup destination, a Nomad node's home) is driven over ssh: the runner's
`remote` prefix (`ssh_prefix`) goes before every command, and what the runner reads about mounts it
reads on that host, since this host sees the pool's files only through a mount of its own (if at all).

A daemon in a mount namespace of its own (its systemd unit's sandbox: ProtectSystem= and the like)
runs zfs in the host's instead (`host_namespace_prefix`): a dataset mounted in the sandbox's namespace
would be seen by nobody else (an operator's shell, the next daemon after a restart), while one mounted
in the host's reaches the sandbox too, whose mounts follow the host's.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.storage.mounts import Mount, parse_mounts, proc_mounts, zfs_mounts_in

_BUSY_MARKERS = ("dataset is busy", "target is busy", "device or resource busy", "pool is busy")
_DAEMON_DOWN_MARKER = "make sure that the zfs-fuse daemon is running"
_MISSING_MARKERS = ("dataset does not exist", "no such pool")

# `[user@]host` as ssh takes it (no options smuggled in: it cannot start with "-").
_USER_HOST = re.compile(r"^(?:[a-z_][a-z0-9_-]{0,31}@)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
# Never a password prompt (the fleet runs unattended), and a host that is gone is noticed in seconds.
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15")
_SSH_FAILED = 255  # ssh's own exit status: no connection (zfs itself exits 1 or 2)


# The host's mount namespace: PID 1's (systemd's, outside any unit's sandbox).
HOST_MOUNT_NAMESPACE = "/proc/1/ns/mnt"


@cache
def host_namespace_prefix() -> tuple[str, ...]:
    """`nsenter --mount=<the host's namespace> --` where this process's mount namespace is not the
    host's, else nothing; nothing also where it cannot tell (the host's namespace unreadable)."""
    try:
        if os.readlink("/proc/self/ns/mnt") == os.readlink(HOST_MOUNT_NAMESPACE):
            return ()
    except OSError:
        return ()
    nsenter = shutil.which("nsenter")  # util-linux, as setpriv
    return (nsenter, f"--mount={HOST_MOUNT_NAMESPACE}", "--") if nsenter else ()


def is_user_host(value: str) -> bool:
    """Whether `value` is `[user@]host` as ssh takes it."""
    return bool(_USER_HOST.match(value))


def ssh_prefix(ssh_command: Sequence[str], host: str) -> list[str]:
    """What goes before a command to run it on `host`: `ssh_command`, the fleet's ssh options, the host, `--`."""
    if not is_user_host(host):
        raise ValueError(f"{host!r} is not [user@]host")
    return [*ssh_command, *SSH_OPTIONS, host, "--"]


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


class ZfsHostUnreachable(ZfsCommandFailed):
    """ssh itself failed (exit 255): the pool's host did not answer, so the command did not run there."""

    def __init__(self, argv: Sequence[str], stderr: str, whose: str, host: str) -> None:
        said = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip()) or "(no message)"
        ExternalFailure.__init__(  # not ZfsCommandFailed's: the message is about the host, not a zfs command
            self, f"{whose}: {host} does not answer over ssh: {said}",
            f"check that {host} is up and that `ssh {host} zfs list` works from this host with the configured "
            "ssh_command (key, port); the command did not run there")
        self.argv = list(argv)
        self.returncode = _SSH_FAILED
        self.stderr = stderr
        self.whose = whose
        self.host = host


@dataclass
class ZfsRunner:
    """Runs zfs/zpool; `observer` (if set) sees the argv of every command before it runs (ssh included).

    `remote` (from `ssh_prefix`): the commands run on another host over ssh; `whose` names that pool's
    user in errors ("home pool-b", "backup destination offsite")."""

    zfs_binary: str = "zfs"
    zpool_binary: str = "zpool"
    busy_retry_seconds: float = 8.0
    timeout: float = 600.0
    observer: Callable[[list[str]], None] | None = None
    remote: list[str] = field(default_factory=list)
    whose: str = "ZFS"

    @property
    def host(self) -> str | None:
        """The host the commands run on over ssh; None for this host."""
        return self.remote[-2] if self.remote else None

    def zfs(self, *args: str) -> str:
        return self.run([self.zfs_binary, *args])

    def zpool(self, *args: str) -> str:
        return self.run([self.zpool_binary, *args])

    def argv(self, *command: str) -> list[str]:
        """The argv that runs `command` (`zfs ...`, `zpool ...`) where this runner's pool is, for a pipeline
        (see zfs_stream); the observer sees it."""
        binary = {"zfs": self.zfs_binary, "zpool": self.zpool_binary}.get(command[0], command[0])
        argv = self._where([binary, *command[1:]])
        if self.observer is not None:
            self.observer(list(argv))
        return argv

    def _where(self, command: Sequence[str]) -> list[str]:
        """`command` as run where the pool is. ssh hands the remote shell one line made of its arguments,
        so over ssh each is quoted: a path with a space (or a `$`) arrives as the one argument it was."""
        if not self.remote:
            return [*host_namespace_prefix(), *(str(a) for a in command)]
        return [*self.remote, *(shlex.quote(str(a)) for a in command)]

    def unreachable(self, argv: Sequence[str], stderr: str) -> ZfsHostUnreachable:
        assert self.host is not None
        return ZfsHostUnreachable(argv, stderr, self.whose, self.host)

    def run(self, argv: Sequence[str]) -> str:
        """stdout of `argv` (run where the pool is); retries while zfs says "busy", then raises
        ZfsCommandFailed (ZfsHostUnreachable when ssh could not reach the host)."""
        argv = self._where(argv)
        deadline = time.monotonic() + self.busy_retry_seconds
        pause = 0.1
        while True:
            if self.observer is not None:
                self.observer(list(argv))
            done = self._run_once(argv)
            if done.returncode == 0:
                return done.stdout
            if self.remote and done.returncode == _SSH_FAILED:
                raise self.unreachable(argv, done.stderr)
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

    def mounts(self) -> list[list[str]]:
        """The mount table (/proc/self/mounts' fields) of the host the pool is on."""
        if not self.remote:
            return proc_mounts()
        return parse_mounts(self.run(["cat", "/proc/self/mounts"]))

    def zfs_mounts(self) -> dict[str, Mount]:
        """ZFS mounts by dataset name, on the host the pool is on."""
        return zfs_mounts_in(self.mounts())

    def mounts_under(self, path: Path) -> list[str]:
        """Mount points at or below `path` on the host the pool is on."""
        prefix = str(path)
        return [f[1] for f in self.mounts() if f[1] == prefix or f[1].startswith(prefix + "/")]

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
