"""Bringing a tenant's worlds, modules and assets into an instance's data, from a zip.

The zip is unpacked first into a staging folder of the fleet's own, by the release unpacker's rules (no
traversal, no links out of the tree, limits against zip bombs), and only then copied into the data: a
zip that is refused, or that would overwrite files without `replace`, changes nothing.

The copy writes into a tree the tenant's own code may be changing, so, as in storage/tenant_tree.py,
every folder is opened without following links from its parent's descriptor, and every file or link is
made relative to one; what is made is given to the instance's uid as it is made. A copy that fails half
way removes what it made; files it had replaced are the caller's to bring back (the pre-import snapshot).
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits
from foundry_fleet.releases.unpack import make_writable, safe_unpack
from foundry_fleet.services.views import InstanceView
from foundry_fleet.storage.tenant_tree import DIR_FLAGS, NEW_FILE_FLAGS, Kind, Parts, copy_bytes, open_root, show, walk

SHOWN_CONFLICTS = 5
# Where Discord keeps the files people attach to a message.
DISCORD_ATTACHMENT_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
ATTACHMENT_SOURCE = "discord-attachment"
_WORLDS = ("Data", "worlds")


class ImportFailed(Exception):
    """The copy failed half way; what it made is removed again. `replaced`: files were overwritten."""

    def __init__(self, cause: BaseException, replaced: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.replaced = replaced


@dataclass
class Staged:
    """A zip unpacked and checked against the instance's data, not yet copied into it."""

    instance: str
    data_dir: Path
    into: Parts
    folder: Path  # the unpacked zip, the fleet's own
    files: int
    bytes: int
    existing: list[Parts] = field(default_factory=list)  # targets already there (relative to the data dir)

    @property
    def replaces_worlds(self) -> bool:
        """Whether a world's files are overwritten (Foundry holds a running world's files open)."""
        return any(parts[:2] == _WORLDS and len(parts) > 3 for parts in self.existing)


@dataclass(frozen=True)
class Imported:
    instance: str
    into: str
    files: int
    bytes: int
    replaced: int
    snapshot: str | None = None  # taken before
    restarted: bool = False  # stopped for the import, and started again

    def to_dict(self) -> dict[str, object]:
        return {"instance": self.instance, "into": self.into, "files": self.files, "bytes": self.bytes,
                "replaced": self.replaced, "snapshot": self.snapshot, "restarted": self.restarted}


def checked_into(into: str) -> Parts:
    """Where under the data dir the zip goes: `Data` or a folder under it, never the shared assets."""
    text = into.strip().replace("\\", "/")
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    hint = "give a folder under Data, such as Data/worlds or Data/modules"
    if text.startswith("/") or ".." in parts or any("\x00" in p for p in parts):
        raise InvalidInput(f"--into {into!r} must be a plain path relative to the instance's data", hint)
    if parts[:1] != (instance_layout.DATA.name,):
        raise InvalidInput(f"--into {into!r} is not under Data: only Data is the tenant's to fill", hint)
    if parts[:2] == instance_layout.SHARED_MOUNT.parts:
        raise InvalidInput(f"--into {into!r} is the fleet's shared assets, not the instance's", hint)
    return parts


class DataImport:
    def __init__(self, limits: UnpackLimits, staging: Path, policy: DownloadPolicy | None = None,
                 attachment_hosts: tuple[str, ...] = DISCORD_ATTACHMENT_HOSTS) -> None:
        """`staging`: a folder of the fleet's own (root's, 0700), on any file system. `policy`: where a zip
        may be downloaded from (the releases' rules: https, the allow-list, no private addresses); None,
        only zips sent in are imported. `attachment_hosts`: where a zip attached in Discord may come from
        ([discord] attachment_hosts, changed by tests only)."""
        self.limits = limits
        self.staging = staging
        self.policy = policy
        self.attachment_hosts = tuple(attachment_hosts)

    def source_policy(self, url: str, source: str | None) -> DownloadPolicy:
        """The rules a download follows: the releases' own, or for a Discord attachment Discord's hosts
        alone, so the bot opens no other host and the release allow-list stays closed to Discord's."""
        if self.policy is None:
            raise InvalidInput("this fleet does not download imports", "download the zip, then import the file")
        if source is None:
            return self.policy
        if source != ATTACHMENT_SOURCE:
            raise InvalidInput(f"unknown import source {source!r}", f"leave it out, or say {ATTACHMENT_SOURCE}")
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".").lower()
        if parts.scheme != "https" or host not in self.attachment_hosts:
            raise InvalidInput("a Discord attachment must be an https link on Discord's own file host",
                               "attach the zip to the command again")
        # Only the host list changes: https, the size limit and the private-address refusal still hold.
        return replace(self.policy, allowed_hosts=self.attachment_hosts)

    def fetch(self, name: str, url: str, source: str | None = None) -> Path:
        """Download a zip to import (a timed link from another host, say) into the staging folder."""
        policy = self.source_policy(url, source)
        from foundry_fleet.releases.fetch import check_download_url, download  # httpx, only for a download

        check_download_url(url, policy)
        path = self.upload_path(name)
        download(url, path, policy)
        return path

    def sweep(self) -> int:
        """Remove what imports cut short by a stopped daemon left staged (nothing of it reached any data)."""
        if not self.staging.is_dir():
            return 0
        left = list(self.staging.iterdir())
        for path in left:
            if path.is_dir() and not path.is_symlink():
                make_writable(path)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(left)

    def upload_path(self, name: str) -> Path:
        """A fresh path for a zip sent over the control API (the daemon's /tmp may be its own)."""
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.staging / f"{name}-{secrets.token_hex(6)}.zip"

    def stage(self, view: InstanceView, zip_path: Path, into: str, replace: bool) -> Staged:
        """Unpack and compare with the data; Conflict, with nothing changed, when files exist and not `replace`."""
        target = checked_into(into)
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = self.staging / f"{view.name}-{secrets.token_hex(6)}"
        written = safe_unpack(zip_path, folder, self.limits, seal=False)
        staged = Staged(view.name, Path(view.data_dir), target, folder, 0, written)
        try:
            _compare(staged)
            if staged.existing and not replace:
                shown = ", ".join(show(p) for p in staged.existing[:SHOWN_CONFLICTS])
                more = len(staged.existing) - SHOWN_CONFLICTS
                raise Conflict(f"{len(staged.existing)} file(s) of the zip already exist in {view.name}: {shown}"
                               + (f" and {more} more" if more > 0 else ""),
                               "nothing was changed; pass --replace to overwrite them (a snapshot is taken first)")
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def discard(self, staged: Staged) -> None:
        make_writable(staged.folder)
        shutil.rmtree(staged.folder, ignore_errors=True)

    def apply(self, staged: Staged, uid: int | None) -> int:
        """Copy the staged files into the data, owned by `uid` (when the fleet runs as root); returns how
        many files were replaced. ImportFailed when it fails half way, after removing what it made."""
        made: list[tuple[Parts, bool]] = []  # (path, is a folder), in the order made
        replaced = 0
        root = open_root(staged.data_dir)
        try:
            for i in range(1, len(staged.into) + 1):
                _make_dir(root, staged.into[:i], uid, made)
            src = open_root(staged.folder)
            try:
                for entry in walk(src, open_files=True):
                    if not entry.parts:
                        continue
                    parts = staged.into + entry.parts
                    if entry.kind is Kind.DIR:
                        _make_dir(root, parts, uid, made)
                    elif entry.kind in (Kind.FILE, Kind.LINK):
                        replaced += _unlink(root, parts)  # counted before the write, which may fail
                        _put(root, parts, entry.fd, entry.st, entry.target, uid)
                        made.append((parts, False))
            finally:
                os.close(src)
        except Exception as e:
            _remove(root, made)
            raise ImportFailed(e, replaced > 0) from e
        finally:
            os.close(root)
        return replaced


def _compare(staged: Staged) -> None:
    """Count the staged files, and list those already in the data (looked up without following links)."""
    root = open_root(staged.folder)
    try:
        for entry in walk(root):
            if entry.kind in (Kind.FILE, Kind.LINK):
                staged.files += 1
                parts = staged.into + entry.parts
                if parts[:2] == instance_layout.SHARED_MOUNT.parts:
                    raise InvalidInput(f"the zip would write into the fleet's shared assets ({show(parts)})",
                                       "leave Data/shared out of the zip")
                if _exists(staged.data_dir, parts):
                    staged.existing.append(parts)
    finally:
        os.close(root)


def _exists(data_dir: Path, parts: Parts) -> bool:
    try:
        with _parent(data_dir, parts) as fd:
            os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # a link or a file where a folder is expected: in the way, so reported


@contextmanager
def _parent(root: Path | int, parts: Parts) -> Iterator[int]:
    """The folder holding `parts`, opened step by step without following a link."""
    fd = os.open(root, DIR_FLAGS) if isinstance(root, Path) else os.dup(root)
    try:
        for name in parts[:-1]:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _make_dir(root: int, parts: Parts, uid: int | None, made: list[tuple[Parts, bool]]) -> None:
    with _parent(root, parts) as parent:
        try:
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
        except FileExistsError:
            os.close(os.open(parts[-1], DIR_FLAGS, dir_fd=parent))  # a link or a file in the way: ELOOP, ENOTDIR
            return
        made.append((parts, True))
        if uid is not None:
            os.chown(parts[-1], uid, uid, dir_fd=parent, follow_symlinks=False)


def _unlink(root: int, parts: Parts) -> int:
    """Take away the file or link at `parts` (a folder is never replaced); 1 if there was one."""
    with _parent(root, parts) as parent:
        try:
            os.unlink(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            return 0
        return 1


def _put(root: int, parts: Parts, src: int, st: os.stat_result | None, target: str, uid: int | None) -> None:
    with _parent(root, parts) as parent:
        if st is None or not stat.S_ISREG(st.st_mode):
            os.symlink(target, parts[-1], dir_fd=parent)
            if uid is not None:
                os.chown(parts[-1], uid, uid, dir_fd=parent, follow_symlinks=False)
        else:
            _write_file(parent, parts[-1], src, st, uid)


def _write_file(parent: int, name: str, src: int, st: os.stat_result, uid: int | None) -> None:
    out = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=parent)
    try:
        copy_bytes(src, out, st.st_size)
        os.fchmod(out, 0o755 if st.st_mode & 0o111 else 0o644)
        if uid is not None:
            os.fchown(out, uid, uid)
    finally:
        os.close(out)


def _remove(root: int, made: list[tuple[Parts, bool]]) -> None:
    """Undo what the copy made, deepest last-made first; what cannot be removed stays (the snapshot has it)."""
    for parts, is_dir in reversed(made):
        try:
            with _parent(root, parts) as parent:
                if is_dir:
                    os.rmdir(parts[-1], dir_fd=parent)
                else:
                    os.unlink(parts[-1], dir_fd=parent)
        except OSError:
            continue
