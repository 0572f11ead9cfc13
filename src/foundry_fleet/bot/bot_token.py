"""The bot token: read from [discord] token_file, which only its owner may read. Never logged, never
echoed in an error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from foundry_fleet.domain.errors import InvalidInput

SETTING = "[discord] token_file in fleet.toml"


def read_token(path: Path | None) -> str:
    if path is None:
        raise InvalidInput("the Discord bot has no token file configured", f"set {SETTING} (a chmod 600 file)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise InvalidInput(f"the Discord bot token file {path} does not exist",
                           f"put the bot token in it (chmod 600), or fix {SETTING}") from None
    except OSError as e:
        raise InvalidInput(f"the Discord bot token file {path} cannot be opened: {e.strerror}",
                           "make it a regular file (not a symlink) owned by the fleet's user, chmod 600") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"the Discord bot token file {path} is not a regular file", f"fix {SETTING}")
        if st.st_uid != os.geteuid():
            raise InvalidInput(f"the Discord bot token file {path} belongs to uid {st.st_uid}, not to the fleet's "
                               f"user (uid {os.geteuid()})", f"chown it to the fleet's user and chmod 600 {path}")
        if mode & 0o077:
            raise InvalidInput(f"the Discord bot token file {path} may be read by others (mode {mode:04o}); "
                               "the bot will not use a token others can read",
                               f"chmod 600 {path}, and reset the token in the Discord developer portal if others "
                               "could have read it")
        raw = f.read(4096)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidInput(f"the Discord bot token file {path} does not hold a token",
                           "put only the token in it, as the developer portal shows it") from None
    if not token or any(c.isspace() for c in token):
        raise InvalidInput(f"the Discord bot token file {path} does not hold a token",
                           "put only the token in it, on one line") from None
    return token
