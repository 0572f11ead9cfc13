"""One way to write a file so that readers see the old content or the new, never half of either, and
a crash right after leaves the new content on disk.

The bytes go to a hidden temporary file beside the target, created with the final mode (a secret is
never readable by others, not even for a moment) and exclusively, so a link planted at the temporary
name is refused rather than followed. The file is fsynced, renamed over the target (or linked into
place, for `create_atomic`), and the directory fsynced so the rename itself survives a crash. The
directory is looked up once and every step works relative to its descriptor.

The directory is the caller's: a folder a tenant controls must be made safe to write in first.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: Path | str, data: bytes | str, mode: int = 0o644, *,
                 check: Callable[[Path], object] | None = None) -> None:
    """Replace `path` with `data` (text is written as UTF-8), mode `mode`, durably and all at once.

    `check(temporary_path)` may refuse the new content by raising before it replaces the old (a
    configuration file that must still load): the old file is then left as it was."""
    _place(Path(path), data, mode, replace=True, check=check)


def create_atomic(path: Path | str, data: bytes | str, mode: int = 0o600) -> bool:
    """Create `path` holding `data` unless it exists; False (and nothing changed) when it does. Two
    processes racing to create the same file agree on one: the first to link it into place."""
    return _place(Path(path), data, mode, replace=False)


def _place(path: Path, data: bytes | str, mode: int, replace: bool,
           check: Callable[[Path], object] | None = None) -> bool:
    raw = data.encode() if isinstance(data, str) else data
    folder = os.open(path.parent, _DIR_FLAGS)
    try:
        temp = _write_temp(folder, path.name, raw, mode)
        try:
            if check is not None:
                check(path.parent / temp)
            if replace:
                os.rename(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            else:
                try:
                    os.link(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                except FileExistsError:
                    return False
        finally:
            try:
                os.unlink(temp, dir_fd=folder)
            except FileNotFoundError:
                pass  # renamed into place
        os.fsync(folder)  # the rename (or link) itself
        return True
    finally:
        os.close(folder)


def _write_temp(folder: int, name: str, raw: bytes, mode: int) -> str:
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, _TEMP_FLAGS, mode & 0o7777, dir_fd=folder)
    try:
        os.fchmod(fd, mode & 0o7777)  # the umask may have taken bits the caller asked for
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp, dir_fd=folder)
        raise
    os.close(fd)
    return temp
