"""The log writer: a small process between one instance's server and its log file (like Podman's conmon).

The server's stdout and stderr are the write end of a pipe; this process holds the read end and is the
only one that writes `foundry.log`. That is what makes a hostile server's output harmless:

- the file is capped as it is written: at `max_bytes` it is renamed to `foundry.log.1` (the older ones
  move up to `.keep`, the oldest is replaced) and a new one begins, so the instance's logs never hold
  more than `max_bytes * (keep + 1)` bytes, at any instant;
- the write rate is bounded by a token bucket (`rate` bytes a second, `burst` at once): a flood beyond
  it is dropped, and one line says how much was; while dropping, reads are paced, so the flooding
  process mostly waits on a full pipe instead of this one spinning, and the disk is not churned;
- none of it runs in the daemon: a flood costs the daemon nothing, and the writer, started detached like
  the task, keeps going while the daemon restarts.

It ignores SIGTERM, SIGHUP and SIGINT and exits at end of file, which comes when every holder of the
write end (the server, and anything it started) is gone: the task's last lines are never lost, and a
running server never writes into a pipe without a reader (EPIPE would end it).

Run as `python -I -S log_writer.py PATH MAX_BYTES KEEP RATE BURST` with the pipe as stdin. It imports
only the standard library so it starts in milliseconds and stays small.
"""

from __future__ import annotations

import os
import signal
import sys
import time

READ_SIZE = 1 << 20
# After each read the writer waits a little, so output arrives in batches: a server writing a byte
# at a time costs this process at most ~100 wake-ups a second, whatever its rate.
BATCH_PAUSE = 0.01
# While dropping, at most one read per pause: with a 1 MiB pipe a flood moves at most ~20 MiB/s.
DROP_PAUSE = 0.05


def rotated(path: str, n: int) -> str:
    return f"{path}.{n}"


def shift(path: str, keep: int) -> None:
    """Rotate by rename: `path.(keep-1)` -> `path.keep`, ..., `path` -> `path.1` (with keep 0: delete it)."""
    for i in range(keep - 1, 0, -1):
        try:
            os.replace(rotated(path, i), rotated(path, i + 1))
        except FileNotFoundError:
            pass
    try:
        if keep > 0:
            os.replace(path, rotated(path, 1))
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def drop_surplus(path: str, keep: int) -> None:
    """Delete rotated files beyond `keep` (left over when `keep` was lowered)."""
    n = keep + 1
    while True:
        try:
            os.unlink(rotated(path, n))
        except FileNotFoundError:
            return
        n += 1


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens

    def take(self, wanted: int, now: float) -> int:
        """How many of `wanted` bytes may pass now (they are then spent)."""
        granted = min(wanted, int(self.refill(now)))
        self.tokens -= granted
        return granted


class RotatingFile:
    """`path`, never longer than `max_bytes`: a write that would overflow it starts a new file first."""

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max(1, max_bytes)
        self.keep = max(0, keep)
        self.fd: int | None = None
        self.size = 0
        self.at_line_start = True

    def _open(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self.size = os.fstat(self.fd).st_size
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def rotate(self) -> None:
        self.close()
        shift(self.path, self.keep)
        self.size = 0
        self._open()  # at once: a follower sees the new file appear, and knows the old one is complete

    def write(self, data: bytes) -> int:
        """Write all of `data`; returns how many bytes could not be written (disk full, say)."""
        view = memoryview(data)
        start, end = 0, len(data)
        try:
            while start < end:
                fd = self._open()
                room = self.max_bytes - self.size
                stop = end
                if end - start > room:
                    # Whole lines into this file when one fits; a line longer than a file is cut.
                    stop = data.rfind(b"\n", start, start + room) + 1 if room > 0 else 0
                    if stop <= start and self.size > 0:
                        self.rotate()
                        continue
                    if stop <= start:
                        stop = start + room
                written = os.write(fd, view[start:stop])
                if written:
                    self.size += written
                    start += written
                    self.at_line_start = data[start - 1] == 0x0A
                if self.size >= self.max_bytes:
                    self.rotate()
        except OSError:
            self.close()  # opened again on the next write: the disk may have room by then
            return end - start
        return 0

    def note(self, text: str) -> int:
        """A line of the fleet's own, on a line of its own."""
        prefix = "" if self.at_line_start else "\n"
        return self.write(f"{prefix}[foundry-fleet] {text}\n".encode())


def _amount(n: float) -> str:
    if n < 10 * 1024:
        return f"{n:.0f} bytes"
    if n < 10 * 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def pump(source: int, out: RotatingFile, bucket: TokenBucket, clock=time.monotonic, pause=time.sleep) -> None:
    """Copy `source` into `out` until end of file, within the bucket's rate."""
    dropped = 0
    dropping_since = 0.0
    while True:
        data = os.read(source, READ_SIZE)
        now = clock()
        if dropped:
            # Resume once a second's worth of output may pass again: at most one note a second.
            if bucket.refill(now) < min(bucket.rate, bucket.burst) and data:
                dropped += len(data)
                pause(DROP_PAUSE)
                continue
            seconds = now - dropping_since
            out.note(f"{_amount(dropped)} of output dropped in {seconds:.1f} s: "
                     f"over the log rate limit of {_amount(bucket.rate)}/s")
            dropped = 0
        if not data:
            break
        granted = bucket.take(len(data), now)
        lost = out.write(data[:granted]) if granted else 0
        if granted < len(data):
            dropped = len(data) - granted
            dropping_since = now
        elif lost:
            out.note(f"{_amount(lost)} of output lost: cannot write the log")
        pause(BATCH_PAUSE)
    out.close()


def join_cgroup(procs_file: str) -> None:
    """Move this writer into its group (cgroups.LogWriterCgroup) before it reads anything. Where that
    fails the writer still writes: the log matters more than surviving a stop of the fleet's service."""
    try:
        with open(procs_file, "w") as f:
            f.write(str(os.getpid()))
    except OSError:
        pass


def main(argv: list[str]) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    path, max_bytes, keep, rate, burst = argv[1], int(argv[2]), int(argv[3]), float(argv[4]), float(argv[5])
    if len(argv) > 6:
        join_cgroup(argv[6])
    drop_surplus(path, max(0, keep))
    out = RotatingFile(path, max_bytes, keep)
    pump(0, out, TokenBucket(rate, burst, time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
