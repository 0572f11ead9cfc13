"""One daemon per fleet root: an flock on run/daemon.lock that names its holder."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from foundry_fleet.domain.errors import Conflict


class DaemonLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            os.close(fd)
            who = f"pid {holder.get('pid')}, started {time.ctime(holder.get('started_at', 0))}" if holder else "another process"
            raise Conflict(
                f"the fleet daemon is already running for {self.path.parent.parent} ({who})",
                "use that one, or stop it first (foundry-fleet status shows it)",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started_at": time.time()}).encode())
        os.fsync(fd)
        self._fd = fd

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (FileNotFoundError, ValueError):
            return None

    def is_held(self) -> bool:
        """True when some process holds the lock (used to tell whether the daemon runs)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
