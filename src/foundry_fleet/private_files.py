"""Secret files (the bot token, the sign-in client secret and key, a restic password): regular files
that belong to the fleet's user and that nobody else may read. Their content is never echoed in an error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from foundry_fleet.domain.errors import InvalidInput


def _check(fd: int, path: Path, what: str, setting: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{what} {path} is not a regular file", f"fix {setting}")
    if st.st_uid != os.geteuid():
        raise InvalidInput(f"{what} {path} belongs to uid {st.st_uid}, not to the fleet's user (uid {os.geteuid()})",
                           f"chown it to the fleet's user and chmod 600 {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise InvalidInput(f"{what} {path} is readable by others (mode {mode:04o}): the secret in it may be read by "
                           "others on this host", f"chmod 600 {path}, and replace the secret if others could read it")


def _open(path: Path, what: str, setting: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise InvalidInput(f"{what} {path} does not exist", f"create it (chmod 600) or fix {setting}") from None
    except OSError as e:
        raise InvalidInput(f"{what} {path} cannot be read: {e.strerror}",
                           f"make it a regular file the fleet can read (chmod 600), or fix {setting}") from None


def check_private_file(path: Path, what: str, setting: str) -> None:
    """Refuse (InvalidInput) a secret file that is missing, a link, not ours, or readable by others.

    `setting` names where the path comes from, for the hint (e.g. "[discord] token_file in fleet.toml").
    """
    fd = _open(path, what, setting)
    try:
        _check(fd, path, what, setting)
    finally:
        os.close(fd)


def read_private_file(path: Path, what: str, setting: str) -> str:
    """The stripped text of a secret file that passes `check_private_file`; not empty."""
    fd = _open(path, what, setting)
    with os.fdopen(fd, "r", encoding="utf-8", errors="strict") as f:
        _check(f.fileno(), path, what, setting)
        try:
            text = f.read().strip()
        except UnicodeDecodeError:
            raise InvalidInput(f"{what} {path} is not text", f"put only the secret in {path}") from None
    if not text:
        raise InvalidInput(f"{what} {path} is empty", f"put the secret in {path}")
    return text
