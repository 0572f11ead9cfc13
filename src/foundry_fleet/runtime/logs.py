"""An instance's server log: `<log_dir>/foundry.log`, written by a log writer process, tailed and followed.

The server's stdout and stderr are the write end of a pipe; a log writer process (`log_writer.py`),
spawned here when the task starts and detached like it, reads the pipe and owns the file: it caps
the file as it writes, rotates it by rename and bounds the write rate. The control plane never holds
the write end after the task is spawned, so the writer sees end of file once the task is gone.

Rotated files are `foundry.log.1` (newest) to `foundry.log.<keep>` (oldest); a rotation renames
them up by one and starts a new `foundry.log`. Readers tell a rotation by the file's identity
(device and inode): the one they hold open is complete once another file carries its name.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from foundry_fleet.runtime import log_writer

LOG_NAME = "foundry.log"
# Sustained output a server may write to its log, and how much at once; beyond that it is dropped
# (with a note in the log). Foundry writes a few KiB a minute, and some hundred KiB when a world loads.
RATE_BYTES = 64 * 1024
BURST_BYTES = 2 * 1024 * 1024
# The pipe's buffer: start-up output waits here while the writer itself starts.
PIPE_BYTES = 1024 * 1024

_writers: dict[Path, int] = {}


def log_path(log_dir: Path) -> Path:
    return log_dir / LOG_NAME


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


# ---------------------------------------------------------------------------------- writing


def open_for_task(
    log_dir: Path, max_bytes: int, keep: int, *, uid: int | None = None, gid: int | None = None,
    rate: int = RATE_BYTES, burst: int = BURST_BYTES, cgroup_procs: Path | None = None,
) -> int:
    """The descriptor to hand to the server as stdout and stderr; the caller closes it once it has.

    A log writer process is started on the other end of the pipe: detached (its own session) so it
    outlives the control plane like the task does, and not a member of the task (its process group,
    cgroups), so stopping or killing the task leaves it to drain what the task wrote. With
    `cgroup_procs` it moves itself into that group (cgroups.LogWriterCgroup), out of the control plane's.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()  # both close-on-exec: no other child inherits them
    try:
        try:
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # the default 64 KiB works too
        if uid is not None and os.geteuid() == 0:
            # The task's own stdout, as an unprivileged program expects it: /dev/stdout opens. (Opening
            # the pipe gives the tenant its own output and nothing else; the log file stays root's.)
            os.fchown(write_end, uid, gid if gid is not None else uid)
        argv = [sys.executable, "-I", "-S", log_writer.__file__, str(log_path(log_dir)),
                str(max_bytes), str(keep), str(rate), str(burst), *([str(cgroup_procs)] if cgroup_procs else [])]
        pid = os.posix_spawn(
            sys.executable, argv, {},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            setsigmask=(),
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _writers[log_dir] = pid
    _reap_when_done(pid)
    return write_end


def _reap_when_done(pid: int) -> None:
    """Collect the writer's exit status when it ends, so no zombie stays behind."""
    try:
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
    except (RuntimeError, OSError):
        threading.Thread(target=_wait_quietly, args=(pid,), name=f"log-writer-{pid}", daemon=True).start()
        return

    def done() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _wait_quietly(pid)

    loop.add_reader(pidfd, done)


def _wait_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait_drained(log_dir: Path, timeout: float) -> bool:
    """Wait until the writer this process started for `log_dir` has exited (all output is in the log).

    It exits once every holder of the pipe's write end is gone, so call it after the task ended.
    """
    pid = _writers.get(log_dir)
    if pid is None:
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


# ---------------------------------------------------------------------------------- reading


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _identity_of(path: Path) -> tuple[int, int] | None:
    try:
        return _identity(path.stat())
    except FileNotFoundError:
        return None


def _last_lines(f, lines: int) -> list[str]:
    end = f.seek(0, os.SEEK_END)
    block = 8192
    data = b""
    pos = end
    while pos > 0 and data.count(b"\n") <= lines:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    # Lines end at "\n" only, as the server wrote them (str.splitlines would also break at "\r" and
    # other controls, and lose them).
    found = data.split(b"\n")
    if found[-1] == b"":
        found.pop()
    return [line.decode(errors="replace") for line in found[-lines:]] if lines > 0 else []


def tail(path: Path, lines: int = 50) -> list[str]:
    """The last `lines` lines of the log (fewer if it is shorter; none if there is none).

    Right after a rotation the current file holds little: the rest comes from the newest rotated one.
    """
    if lines <= 0:
        return []
    try:
        current = open(path, "rb")
    except FileNotFoundError:
        current = None
    result: list[str] = []
    seen: tuple[int, int] | None = None
    if current is not None:
        with current:
            seen = _identity(os.fstat(current.fileno()))
            result = _last_lines(current, lines)
    if len(result) >= lines:
        return result
    for n in (1, 2):
        try:
            older = open(rotated(path, n), "rb")
        except FileNotFoundError:
            return result
        with older:
            if _identity(os.fstat(older.fileno())) == seen:
                continue  # rotated while we read: what we read is now .1, the one before it .2
            return _last_lines(older, lines - len(result)) + result
    return result


def _generations_after(path: Path, finished: tuple[int, int]) -> list[Path]:
    """Rotated files newer than the `finished` one, oldest first (several rotations between looks)."""
    n = 1
    while True:
        ident = _identity_of(rotated(path, n))
        if ident is None:
            return []  # not kept (keep = 0, or rotated out already): nothing to catch up on
        if ident == finished:
            return [rotated(path, k) for k in range(n - 1, 0, -1)]
        n += 1


def follow(
    path: Path,
    *,
    from_start: bool = False,
    poll_interval: float = 0.2,
    stop: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Yield lines appended to the log, forever (or until `stop()` is true), across rotations.

    The open file is read to its end; once another file carries the log's name (a rotation), what
    reached the old file last is read, then any generation rotated meanwhile, then the new file from
    its start.
    """
    f = None
    pos = 0
    buf = b""

    def lines_from(data: bytes) -> Iterator[str]:
        nonlocal buf
        buf += data
        *complete, buf = buf.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")

    def rest_of(handle) -> bytes:
        handle.seek(pos)
        return handle.read()

    try:
        while stop is None or not stop():
            if f is None:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    time.sleep(poll_interval)
                    continue
                pos = 0 if from_start else f.seek(0, os.SEEK_END)
                from_start = True  # a file that appears later is read from its start
            st = os.fstat(f.fileno())
            if st.st_size < pos:
                pos = 0  # truncated by hand: read what is there now
            if st.st_size > pos:
                data = rest_of(f)
                pos += len(data)
                yield from lines_from(data)
                continue
            on_disk = _identity_of(path)
            if on_disk is None or on_disk == _identity(st):
                time.sleep(poll_interval)
                continue
            # Rotated: the writer wrote its last bytes to this file before renaming it.
            yield from lines_from(rest_of(f))
            for older in _generations_after(path, _identity(st)):
                try:
                    with open(older, "rb") as g:
                        yield from lines_from(g.read())
                except FileNotFoundError:
                    pass
            f.close()
            f, pos = None, 0
    finally:
        if f is not None:
            f.close()


async def follow_on_own_thread(path: Path, lines: Callable[[Iterator[str]], Iterator[str]] | None = None,
                               ) -> AsyncIterator[str]:
    """`follow(path)` for async code (each line through `lines`, when given). On a thread of its own: a
    follower waits there for the next line as long as the log is quiet, and would otherwise hold one of
    the few threads every other blocking call of the daemon shares (a few open log views would stall it)."""
    done = False
    followed = follow(path, stop=lambda: done)
    if lines is not None:
        followed = lines(followed)
    reader = ThreadPoolExecutor(1, thread_name_prefix="log-follow")
    loop = asyncio.get_running_loop()
    try:
        while (line := await loop.run_in_executor(reader, next, followed, None)) is not None:
            yield line
    finally:
        done = True  # the follower's thread notices within its poll interval
        reader.shutdown(wait=False)
