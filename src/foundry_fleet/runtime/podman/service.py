"""The Podman API service the fleet talks to: a configured socket, or `podman system service` of its own.

With `[podman] socket` set, that socket is used as it is (someone else runs the service). Otherwise the
fleet runs `podman system service --time=0 unix://<run>/podman.sock` with its own containers.conf,
in a session of its own and with no tie to the daemon, so a `kill -9` of the daemon leaves it (and the
containers, which conmon holds anyway) running; the next daemon finds it answering and uses it.

The service is supervised lazily: whenever a call finds the socket silent, `ensure` starts a new one
(after ending ours if it hangs). Its pid is kept in `podman.pid` so that a later daemon can stop the
service an earlier one started; a process is only ever ended when its command line names our socket.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from foundry_fleet.domain.errors import ExternalFailure, Unsupported
from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.podman import containers_conf
from foundry_fleet.runtime.podman.api import API_BASE, PodmanApi

SOCKET_NAME = "podman.sock"
PID_NAME = "podman.pid"
LOG_NAME = "service.log"
LOCK_NAME = "podman.lock"
LOG_KEEP_BYTES = 1 << 20  # the service's log is started afresh (the old one kept as .1) beyond this
START_TIMEOUT = 20.0


class PodmanService:
    def __init__(self, run_dir: Path, socket: Path | None = None, podman: str | None = None) -> None:
        """`run_dir`: the fleet's run/podman (root-only); `socket`: a service run by someone else."""
        self.run_dir = run_dir
        self.configured = socket
        self.socket_path = socket or run_dir / SOCKET_NAME
        self.api = PodmanApi(self.socket_path)
        self._podman = podman
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    @property
    def own(self) -> bool:
        return self.configured is None

    async def ensure(self) -> PodmanApi:
        """The API, its service answering (started, or started again, when it did not)."""
        if await self.api.ping():
            return self.api
        async with self._lock:
            if await self.api.ping():
                return self.api
            if not self.own:
                raise ExternalFailure(f"the podman API socket {self.socket_path} does not answer",
                                      "start its service, or remove [podman] socket so the fleet runs its own")
            await asyncio.to_thread(self._start)
            deadline = time.monotonic() + START_TIMEOUT
            delay = 0.01
            while not await self.api.ping():
                if self._process is not None and self._process.poll() is not None:
                    raise ExternalFailure(f"podman system service exited at once ({self._process.returncode}): "
                                          f"{self._log_tail()}", f"see {self.run_dir / LOG_NAME}")
                if time.monotonic() > deadline:
                    raise ExternalFailure(f"podman system service did not answer within {START_TIMEOUT:.0f} s",
                                          f"see {self.run_dir / LOG_NAME}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            return self.api

    def podman_binary(self) -> str:
        found = self._podman or shutil.which("podman")
        if found is None:
            raise Unsupported("podman is not installed", "apt install podman runc catatonit")
        return found

    def _start(self) -> None:
        binary = self.podman_binary()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)  # the socket is root's way into every container
        lock = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process of the fleet's (a CLI) may be starting it too
            if self._answers_now():
                return
            self._start_locked(binary)
        finally:
            os.close(lock)

    def _answers_now(self) -> bool:
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket_path)), timeout=2.0) as c:
                return c.get(f"{API_BASE}/_ping").status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    def _start_locked(self, binary: str) -> None:
        if self._process is not None:
            self._process.poll()  # reap the one that died
        self._end_recorded()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        conf = containers_conf.write(self.run_dir)
        _keep_small(self.run_dir / LOG_NAME)
        log = os.open(self.run_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            self._process = subprocess.Popen(
                [binary, "system", "service", "--time=0", f"unix://{self.socket_path}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=containers_conf.environment(conf),
                # Its conmons inherit this directory and write files there (an `oom` marker after an
                # out-of-memory kill): the fleet's own run directory, not wherever `up` was started.
                start_new_session=True, close_fds=True, cwd=self.run_dir,
            )
        finally:
            os.close(log)
        (self.run_dir / PID_NAME).write_text(f"{self._process.pid}\n")
        self.restarts += 1

    def _recorded(self) -> int | None:
        """The recorded service's pid, if that process is still our service."""
        try:
            pid = int((self.run_dir / PID_NAME).read_text().strip())
        except (OSError, ValueError):
            return None
        words = procfs.cmdline(pid)
        if f"unix://{self.socket_path}" in words and "service" in words:
            return pid
        return None

    def _end_recorded(self) -> None:
        """A service of ours that is alive but silent (hung) goes before a new one starts."""
        pid = self._recorded()
        if pid is None:
            return
        self._end(pid)

    def _end(self, pid: int) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and procfs.is_alive(pid):
                if self._process is not None and self._process.pid == pid:
                    self._process.poll()  # reap our own child
                time.sleep(0.01)
            if not procfs.is_alive(pid):
                break
        if self._process is not None and self._process.pid == pid:
            self._process.poll()
            self._process = None

    async def stop(self) -> None:
        """End the service if it is ours (the containers keep running under conmon). The client stays
        usable: the next call finds the socket silent and `ensure` starts the service again."""
        if not self.own:
            return
        pid = await asyncio.to_thread(self._recorded)
        if pid is not None:
            await asyncio.to_thread(self._end, pid)
        try:
            (self.run_dir / PID_NAME).unlink()
        except FileNotFoundError:
            pass

    def _log_tail(self) -> str:
        try:
            return " | ".join((self.run_dir / LOG_NAME).read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return "no log"


def _keep_small(log: Path) -> None:
    try:
        if log.stat().st_size > LOG_KEEP_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass
