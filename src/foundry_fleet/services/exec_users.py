"""The system user an instance's task runs as under Nomad's `exec` driver: `fvtt-u<uid>`.

Nomad's exec driver looks its task's `User` up by name on the node, while the fleet knows an instance
only by uid. So each node that runs exec tasks gets, for each instance's uid, a system user and a group
of the same name, uid and gid: no home, no login shell, nothing else. Making one is idempotent; a name
or an id already taken by anything else is refused (sharing either would give a tenant someone else's
files or processes), never adopted.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from typing import TypeVar

from foundry_fleet.domain.errors import Conflict, ExternalFailure

PREFIX = "fvtt-u"
_HOME = "/nonexistent"  # what Debian gives system users without a home: it must not exist
_TOOL_SECONDS = 60.0
K = TypeVar("K")
T = TypeVar("T")


def exec_user_name(uid: int) -> str:
    """The name of the user (and group) an instance with `uid` runs as under the exec driver."""
    return f"{PREFIX}{uid}"


def ensure_exec_user(uid: int) -> str | None:
    """Make `fvtt-u<uid>` (user and group, both id `uid`) exist; returns what was made, None when both
    were already there. Conflict when the name or the id belongs to someone else."""
    name = exec_user_name(uid)
    made = []
    group = _check_group(name, uid)
    if group is None:
        _run("groupadd", "--system", "--gid", str(uid), name, lenient_if=lambda: _check_group(name, uid) is not None)
        made.append("group")
    user = _check_user(name, uid)
    if user is None:
        _run("useradd", "--system", "--uid", str(uid), "--gid", str(uid), "--no-create-home",
             "--home-dir", _HOME, "--shell", _nologin(), "--comment", "foundry-fleet instance", name,
             lenient_if=lambda: _check_user(name, uid) is not None)
        made.append("user")
    if not made:
        return None
    return f"made system {' and '.join(made)} {name} (id {uid})"


def remove_exec_user(uid: int) -> bool:
    """Remove `fvtt-u<uid>` and its group when they are ours (same name and id); True when anything went."""
    name = exec_user_name(uid)
    removed = False
    if _check_user(name, uid) is not None:
        _run("userdel", name)
        removed = True
    if _check_group(name, uid) is not None:
        _run("groupdel", name)
        removed = True
    return removed


def _check_user(name: str, uid: int) -> pwd.struct_passwd | None:
    """The user `name` when it is ours (uid and primary gid `uid`); None when neither name nor uid is taken."""
    by_name = _lookup(pwd.getpwnam, name)
    by_id = _lookup(pwd.getpwuid, uid)
    if by_name is None and by_id is None:
        return None
    if by_name is None:
        assert by_id is not None
        raise Conflict(f"uid {uid} belongs to user {by_id.pw_name!r}, so {name} cannot have it",
                       "give the instances a uid_range no host user is in ([instances] uid_range), "
                       "or remove that user")
    if by_name.pw_uid != uid:
        raise Conflict(f"user {name} exists with uid {by_name.pw_uid}, not {uid}",
                       f"remove that user (userdel {name}) if nothing else needs it, then provision again")
    if by_name.pw_gid != uid:
        raise Conflict(f"user {name} exists with primary group {by_name.pw_gid}, not {uid}",
                       f"remove that user (userdel {name}), then provision again")
    return by_name


def _check_group(name: str, gid: int) -> grp.struct_group | None:
    by_name = _lookup(grp.getgrnam, name)
    by_id = _lookup(grp.getgrgid, gid)
    if by_name is None and by_id is None:
        return None
    if by_name is None:
        assert by_id is not None
        raise Conflict(f"gid {gid} belongs to group {by_id.gr_name!r}, so {name} cannot have it",
                       "give the instances a uid_range no host group is in ([instances] uid_range), "
                       "or remove that group")
    if by_name.gr_gid != gid:
        raise Conflict(f"group {name} exists with gid {by_name.gr_gid}, not {gid}",
                       f"remove that group (groupdel {name}) if nothing else needs it, then provision again")
    return by_name


def _lookup(find: Callable[[K], T], key: K) -> T | None:
    try:
        return find(key)
    except KeyError:
        return None


def _nologin() -> str:
    return shutil.which("nologin", path="/usr/sbin:/sbin:/usr/bin:/bin") or "/usr/sbin/nologin"


def _run(*argv: str, lenient_if: Callable[[], bool] = lambda: False) -> None:
    """Run a shadow tool; a failure is forgiven when `lenient_if()` then holds (another provision of the
    same instance made it meanwhile)."""
    tool = shutil.which(argv[0], path="/usr/sbin:/sbin:/usr/bin:/bin")
    if tool is None:
        raise ExternalFailure(f"{argv[0]} is not installed on this node", "install the passwd package (shadow tools)")
    try:
        done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=_TOOL_SECONDS,
                              stdin=subprocess.DEVNULL, env={"PATH": os.defpath, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise ExternalFailure(f"{argv[0]} did not finish within {_TOOL_SECONDS:.0f} s",
                              "check for a stale lock on /etc/passwd or /etc/group") from None
    if done.returncode != 0 and not lenient_if():
        said = " ".join((done.stderr or done.stdout).split())[:300]
        raise ExternalFailure(f"{' '.join(argv)} failed ({done.returncode}): {said}",
                              "run it by hand as root to see why")
