"""A task's directories on the host: reachable by the instance's uid, and laid out for the sandbox."""

from __future__ import annotations

import os
from pathlib import Path

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.runtime.base import TaskSpec


def _may(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Do the permission bits (r=4, w=2, x=1) let `uid`/`gid` (no other groups) do `bits`?"""
    if st.st_uid == uid:
        mode = (st.st_mode >> 6) & 7
    elif st.st_gid == gid:
        mode = (st.st_mode >> 3) & 7
    else:
        mode = st.st_mode & 7
    return mode & bits == bits


def check_reachable(spec: TaskSpec, uid: int, gid: int) -> None:
    """Fail early, naming the directory, when the instance's uid could not reach its own files.

    The server (and bwrap, which binds the directories as that uid) needs to pass through every
    parent directory; a 0700 parent such as /root or a private temp dir blocks it.
    """
    targets = [spec.install_dir, Path(os.path.realpath(spec.install_dir)), spec.data_dir]
    if spec.shared_dir is not None:
        targets.append(spec.shared_dir)
    for target in targets:
        target = Path(os.path.abspath(target))
        for directory in [*reversed(target.parents), target]:
            try:
                st = os.stat(directory)
            except OSError:
                break
            needed = 5 if directory == target else 1
            if not _may(st, uid, gid, needed):
                what = "read" if needed == 5 else "pass through"
                raise InvalidInput(
                    f"instance {spec.name} runs as uid {uid}, which cannot {what} {directory} "
                    f"(owner {st.st_uid}, mode {st.st_mode & 0o7777:04o}), on the way to {target}",
                    f"make it reachable (chmod o+x {directory}) or keep the fleet's directories elsewhere",
                )


def prepare_dirs(spec: TaskSpec, use_bwrap: bool, uid: int | None, gid: int | None) -> None:
    """The log directory, and Data/shared as the sandbox's mount point (or, without a sandbox, a link)."""
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    if spec.shared_dir is None:
        return
    data = spec.data_dir / instance_layout.DATA
    if data.is_symlink():
        raise InvalidInput(f"{data} is a symbolic link", "make it a plain directory")
    if not data.exists():
        data.mkdir()
        if uid is not None:  # the folder itself even if the tenant swapped it for a link meanwhile
            os.chown(data, uid, gid if gid is not None else uid, follow_symlinks=False)
    mount = spec.data_dir / instance_layout.SHARED_MOUNT
    if use_bwrap:
        # The sandbox mounts the shared assets here; the host side is only an empty mount point.
        if mount.is_symlink():
            mount.unlink()
        mount.mkdir(exist_ok=True)
    else:
        # Without a sandbox, a link makes the assets appear under Data/; only file permissions
        # keep the instance from writing them.
        if mount.is_symlink() and os.readlink(mount) == str(spec.shared_dir):
            return
        if mount.is_symlink():
            mount.unlink()
        elif mount.is_dir() and not any(mount.iterdir()):
            mount.rmdir()
        if not mount.exists():
            mount.symlink_to(spec.shared_dir)


def check_dirs(spec: TaskSpec) -> None:
    """Refuse, naming it, a spec whose release, data or shared directory is not there."""
    for label, path in (("install", spec.install_dir), ("data", spec.data_dir)):
        if not Path(path).is_dir():
            raise InvalidInput(f"{label} directory {path} of {spec.name} does not exist")
    if spec.shared_dir is not None and not Path(spec.shared_dir).is_dir():
        raise InvalidInput(f"shared directory {spec.shared_dir} does not exist")
