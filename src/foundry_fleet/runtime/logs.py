"""An instance's server log: `<log_dir>/foundry.log`, rotated by size, tailed and followed.

The server holds the log open with O_APPEND (the runtime opened it and handed the descriptor over),
so rotation copies the file and then truncates it in place: the server keeps writing to the same
file, and after truncation its next write lands at the new end (offset 0). Lines written in the
instant between the copy and the truncation are lost; that is the price of never signalling the
server to reopen its log.

Rotated files are `foundry.log.1` (newest) to `foundry.log.<keep>` (oldest).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOG_NAME = "foundry.log"


def log_path(log_dir: Path) -> Path:
    return log_dir / LOG_NAME


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def open_for_task(path: Path) -> int:
    """The descriptor handed to the server as stdout and stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate `path` when it has reached `max_bytes`; True when it did."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size < max_bytes or size == 0:
        return False
    # Drop files beyond `keep` (also those left over when `keep` was lowered).
    n = max(keep, 0) + 1
    while rotated(path, n).exists():
        rotated(path, n).unlink()
        n += 1
    if keep > 0:
        for i in range(keep - 1, 0, -1):
            if rotated(path, i).exists():
                os.replace(rotated(path, i), rotated(path, i + 1))
        tmp = path.with_name(f"{path.name}.1.tmp")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            # Whatever the server appended while we copied goes along too.
            dst.write(src.read())
        os.truncate(path, 0)
        # Published after the truncation: a follower that sees a new .1 knows the truncation is done.
        os.replace(tmp, rotated(path, 1))
    else:
        os.truncate(path, 0)
    return True


def tail(path: Path, lines: int = 50) -> list[str]:
    """The last `lines` lines of `path` (fewer if it is shorter; none if it does not exist)."""
    if lines <= 0:
        return []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        block = 8192
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    text = data.decode(errors="replace")
    result = text.splitlines()
    return result[-lines:]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def follow(
    path: Path,
    *,
    from_start: bool = False,
    poll_interval: float = 0.2,
    stop: Callable[[], bool] | None = None,
    truncate_grace: float = 1.0,
) -> Iterator[str]:
    """Yield lines appended to `path`, forever (or until `stop()` is true), across rotations.

    A rotation shows as a new `path.1`: the follower first finishes reading the old content from
    `path.1` (where the copy holds it) and then starts again at the beginning of `path`.
    """
    f = None
    pos = 0
    buf = b""
    last_rotated = _identity(rotated(path, 1))
    shrunk_since: float | None = None

    def lines_from(data: bytes) -> Iterator[str]:
        nonlocal buf
        buf += data
        *complete, buf = buf.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")

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
            current_rotated = _identity(rotated(path, 1))
            if current_rotated is not None and current_rotated != last_rotated:
                last_rotated = current_rotated
                try:
                    with open(rotated(path, 1), "rb") as old:
                        old.seek(pos)
                        yield from lines_from(old.read())
                except FileNotFoundError:
                    pass
                if buf:
                    yield buf.decode(errors="replace")
                    buf = b""
                pos = 0
                shrunk_since = None
            st = os.fstat(f.fileno())
            size = st.st_size
            on_disk = _identity(path)
            replaced = on_disk is not None and on_disk != (st.st_dev, st.st_ino)
            if size < pos:
                # Truncated. If no new .1 shows up shortly it was not our rotation: start over.
                shrunk_since = shrunk_since or time.monotonic()
                if time.monotonic() - shrunk_since >= truncate_grace:
                    pos, shrunk_since = 0, None
                else:
                    time.sleep(poll_interval / 4)
                    continue
            if size > pos:
                f.seek(pos)
                data = f.read(size - pos)
                pos += len(data)
                yield from lines_from(data)
                continue
            if replaced:
                # Moved away and recreated (not our rotation style): switch to the new file.
                f.close()
                f, pos = None, 0
                continue
            time.sleep(poll_interval)
    finally:
        if f is not None:
            f.close()
