"""Unpack a release zip without trusting it.

A zip is refused, with nothing left behind, when it is not a zip at all (the Windows installer or the
macOS disk image uploaded by mistake), when an entry would land outside the destination (absolute
paths, drive letters, `..`, backslash separators), when a symlink would point outside it, when it holds
duplicate entries, too many entries, or would unpack to more bytes than allowed (a zip bomb).

Sizes are counted from the bytes actually written, never from the headers alone: headers are written
by whoever made the zip, and a bomb's headers lie.

A release is unpacked read-only (files 0o444, or 0o555 when the zip marks them executable; folders 0o555)
because installs are hard-linked from it: a writable file would let one instance change another's.
Data a tenant brings in (`seal=False`) is theirs to change: files 0o644/0o755, folders 0o755.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput
from foundry_fleet.releases.policy import MIB, ProgressCallback, UnpackLimits

_CHUNK_BYTES = 256 * 1024
_MAX_SYMLINK_TARGET_BYTES = 4096
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")

NOT_GENUINE_HINT = "this is not a genuine Foundry release zip: download it again from your foundryvtt.com account"
WRONG_BUILD_HINT = "download the Node.js or Linux build from your foundryvtt.com account: it is a .zip file"

MemberKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class _Member:
    """One zip entry, checked and ready to write."""

    info: zipfile.ZipInfo
    path: PurePosixPath  # safe, relative, no `..`
    kind: MemberKind
    executable: bool
    link_target: str | None = None


class ByteBudget:
    """Counts the bytes actually written while unpacking, and refuses the one that goes over."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, count: int, entry: str) -> None:
        self.used += count
        if self.used > self.limit:
            raise InvalidInput(
                f"the zip is too large: it unpacks to more than the limit of {_mb(self.limit)} "
                f"(went over while writing {entry!r}); this looks like a zip bomb",
                f"{NOT_GENUINE_HINT}; if it is genuine, raise [releases] max_unpacked_mb in fleet.toml",
            )


def refuse_non_zip(path: Path) -> None:
    """Refuse anything that is not a zip, naming the Windows installer and the macOS image."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        size = f.seek(0, os.SEEK_END)
        tail = b""
        if size >= 512:  # a UDIF disk image ends with a 512-byte "koly" trailer
            f.seek(size - 512)
            tail = f.read(4)
    if size == 0:
        raise InvalidInput("the release file is empty", WRONG_BUILD_HINT)
    if head.startswith(b"MZ"):
        raise InvalidInput(
            "this is the Windows installer (.exe), not a Foundry release zip; "
            "download the Node.js or Linux build",
            WRONG_BUILD_HINT,
        )
    if zipfile.is_zipfile(path):
        return
    if tail == b"koly" or _looks_compressed(head):
        raise InvalidInput(
            "this is the macOS disk image (.dmg), not a Foundry release zip; "
            "download the Node.js or Linux build",
            WRONG_BUILD_HINT,
        )
    raise InvalidInput("this file is not a zip archive, so it is not a Foundry release", WRONG_BUILD_HINT)


def _looks_compressed(head: bytes) -> bool:
    # Disk images without a trailer at the very end usually start with a zlib or bzip2 stream.
    zlib_header = len(head) >= 2 and head[0] == 0x78 and head[1] in (0x01, 0x5E, 0x9C, 0xDA)
    return zlib_header or head.startswith(b"BZh")


def member_path(name: str) -> PurePosixPath | None:
    """The safe relative path for a zip entry name; None for the root itself (`./`).

    Backslashes count as separators (Windows tools write them), so `..\\x` is traversal too.
    """
    if "\x00" in name:
        raise InvalidInput(f"the zip entry {name!r} has a NUL byte in its name", NOT_GENUINE_HINT)
    text = name.replace("\\", "/")
    if text.startswith("/"):
        raise InvalidInput(f"the zip entry {name!r} has an absolute path", NOT_GENUINE_HINT)
    if _DRIVE_LETTER.match(text):
        raise InvalidInput(f"the zip entry {name!r} starts with a drive letter", NOT_GENUINE_HINT)
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(
            f"the zip entry {name!r} would be written outside the release folder (a '..' in its path)",
            NOT_GENUINE_HINT,
        )
    return PurePosixPath(*parts) if parts else None


def symlink_stays_inside(link: PurePosixPath, target: str) -> bool:
    """Whether a relative symlink at `link` pointing at `target` stays inside the tree, read lexically.

    This is the early check; after all links exist, their real resolution is checked too, because
    chains of links can resolve differently from how they read.
    """
    if not target or target.startswith("/") or _DRIVE_LETTER.match(target):
        return False
    depth = len(link.parts) - 1  # folders between the tree root and the link
    for part in target.split("/"):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return False
    return True


def safe_unpack(
    zip_path: Path, dest: Path, limits: UnpackLimits, progress: ProgressCallback | None = None, seal: bool = True
) -> int:
    """Unpack `zip_path` into `dest` (absent or empty); returns the bytes written. `seal`: read-only.

    On any refusal or failure, everything written is removed again (and `dest` too if this made it).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    refuse_non_zip(zip_path)
    made_dest = _prepare_dest(dest)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _plan(archive, limits)
            written = _write_members(archive, members, dest, limits, progress, seal)
        _make_symlinks(members, dest)
        if seal:
            _seal(dest)
        return written
    except BaseException as err:
        _clear(dest, remove_dest=made_dest)
        # ValueError covers undecodable UTF-8 names and other malformed headers zipfile trips over.
        if isinstance(err, (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError)):
            raise InvalidInput(f"the zip is damaged or uses an unsupported format ({err})", NOT_GENUINE_HINT) from None
        if isinstance(err, OSError):
            raise ExternalFailure(
                f"unpacking failed: {err.strerror or err}", "check free disk space and permissions of the cache folder"
            ) from None
        raise


def _prepare_dest(dest: Path) -> bool:
    """Make sure `dest` is an empty real folder; True when this call created it."""
    try:
        os.mkdir(dest, 0o755)
        return True
    except FileExistsError:
        pass
    st = os.lstat(dest)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"cannot unpack into {dest}: it is not a folder", "choose an empty folder")
    with os.scandir(dest) as entries:
        empty = next(entries, None) is None
    if not empty:
        raise InvalidInput(f"cannot unpack into {dest}: it is not empty", "choose an empty folder")
    return False


def _plan(archive: zipfile.ZipFile, limits: UnpackLimits) -> list[_Member]:
    """Check every entry before a single byte is written."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise InvalidInput(
            f"the zip has {len(infos)} entries, more than the limit of {limits.max_entries}",
            f"{NOT_GENUINE_HINT}; if it is genuine, raise [releases] max_entries in fleet.toml",
        )
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_unpacked_bytes:
        raise InvalidInput(
            f"the zip is too large: it says it unpacks to {_mb(declared)}, "
            f"more than the limit of {_mb(limits.max_unpacked_bytes)}",
            f"{NOT_GENUINE_HINT}; if it is genuine, raise [releases] max_unpacked_mb in fleet.toml",
        )
    members: list[_Member] = []
    seen: dict[PurePosixPath, str] = {}  # path -> "file" | "dir" | "symlink" | "implied-dir"
    for info in infos:
        if info.flag_bits & 0x1:
            raise InvalidInput(f"the zip entry {info.filename!r} is encrypted", NOT_GENUINE_HINT)
        path = member_path(info.filename)
        if path is None:
            continue
        mode = info.external_attr >> 16
        kind: MemberKind = "dir" if info.is_dir() else "symlink" if stat.S_ISLNK(mode) else "file"
        _check_ratio(info.filename, info.file_size, info.compress_size, limits)
        _claim(seen, path, kind, info.filename)
        target = _read_link_target(archive, info, path) if kind == "symlink" else None
        members.append(_Member(info, path, kind, executable=bool(mode & 0o111), link_target=target))
    return members


def _claim(seen: dict[PurePosixPath, str], path: PurePosixPath, kind: MemberKind, name: str) -> None:
    """Record `path`, refusing duplicates and entries that sit inside a file or a symlink."""
    for parent in reversed(path.parents[:-1]):  # outermost first, without "."
        held = seen.setdefault(parent, "implied-dir")
        if held not in ("dir", "implied-dir"):
            raise InvalidInput(
                f"the zip entry {name!r} sits inside {str(parent)!r}, which the zip also has as a {held}",
                NOT_GENUINE_HINT,
            )
    held = seen.get(path)
    if held is None or (held == "implied-dir" and kind == "dir"):
        seen[path] = kind
        return
    raise InvalidInput(f"the zip has more than one entry for {str(path)!r}", NOT_GENUINE_HINT)


def _check_ratio(name: str, size: int, compressed: int, limits: UnpackLimits) -> None:
    if size < limits.ratio_applies_from_bytes:
        return
    ratio = size / max(compressed, 1)
    if ratio > limits.max_ratio:
        raise InvalidInput(
            f"the zip entry {name!r} expands {ratio:.0f} times (limit {limits.max_ratio:.0f}); "
            "this looks like a zip bomb",
            NOT_GENUINE_HINT,
        )


def _read_link_target(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: PurePosixPath) -> str:
    if info.file_size > _MAX_SYMLINK_TARGET_BYTES:
        raise InvalidInput(f"the zip symlink {info.filename!r} has an implausibly long target", NOT_GENUINE_HINT)
    try:
        target = archive.read(info).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"the zip symlink {info.filename!r} has an unreadable target", NOT_GENUINE_HINT) from None
    if target.startswith("/") or _DRIVE_LETTER.match(target):
        raise InvalidInput(
            f"the zip symlink {info.filename!r} points at the absolute path {target!r}", NOT_GENUINE_HINT
        )
    if "\x00" in target or not symlink_stays_inside(path, target):
        raise InvalidInput(
            f"the zip symlink {info.filename!r} points outside the release folder ({target!r})", NOT_GENUINE_HINT
        )
    return target


def _write_members(
    archive: zipfile.ZipFile,
    members: list[_Member],
    dest: Path,
    limits: UnpackLimits,
    progress: ProgressCallback | None,
    seal: bool = True,
) -> int:
    budget = ByteBudget(limits.max_unpacked_bytes)
    total = sum(m.info.file_size for m in members if m.kind == "file")
    for member in members:
        if member.kind == "dir":
            _make_dirs(dest, member.path)
        elif member.kind == "file":
            _make_dirs(dest, member.path.parent)
            with archive.open(member.info) as source:
                _write_file(source, dest / member.path, member, budget, limits, progress, total, seal)
    if progress is not None:
        progress("unpack", budget.used, total)
    return budget.used


def _write_file(
    source: BinaryIO,
    target: Path,
    member: _Member,
    budget: ByteBudget,
    limits: UnpackLimits,
    progress: ProgressCallback | None,
    total: int,
    seal: bool = True,
) -> None:
    # O_EXCL + O_NOFOLLOW: never write through something already at the path, a symlink least of all.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        written = 0
        for chunk in _chunks(source):
            written += len(chunk)
            budget.charge(len(chunk), member.info.filename)
            _check_ratio(member.info.filename, written, member.info.compress_size, limits)
            out.write(chunk)
            if progress is not None:
                progress("unpack", budget.used, total)
        mode = 0o555 if member.executable else 0o444
        os.fchmod(out.fileno(), mode if seal else mode | 0o200)


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(_CHUNK_BYTES):
        yield chunk


def _make_dirs(dest: Path, rel: PurePosixPath) -> None:
    """Create each folder of `rel` under `dest`, refusing anything in the way that is not a real folder."""
    current = dest
    for part in rel.parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)  # writable while unpacking; sealed read-only at the end
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise InvalidInput(
                    f"the zip needs {str(current.relative_to(dest))!r} to be a folder, but it is not", NOT_GENUINE_HINT
                ) from None


def _make_symlinks(members: list[_Member], dest: Path) -> None:
    """Create the symlinks last, so no file is ever written through one, then check how they really resolve."""
    links = [m for m in members if m.kind == "symlink"]
    for link in links:
        assert link.link_target is not None
        _make_dirs(dest, link.path.parent)
        os.symlink(link.link_target, dest / link.path)
    root = os.path.realpath(dest)
    for link in links:
        real = os.path.realpath(dest / link.path)
        if real != root and not real.startswith(root + os.sep):
            raise InvalidInput(
                f"the zip symlink {link.info.filename!r} resolves outside the release folder "
                "(through another symlink)",
                NOT_GENUINE_HINT,
            )


def _walk_dirs(root: Path) -> Iterator[str]:
    """Every real folder below `root`, deepest first; symlinked folders are never entered."""
    for current, dirs, _files in os.walk(root, topdown=False, followlinks=False):
        for name in dirs:
            path = os.path.join(current, name)
            if not os.path.islink(path):
                yield path


def _seal(dest: Path) -> None:
    for folder in _walk_dirs(dest):
        os.chmod(folder, 0o555)
    os.chmod(dest, 0o555)


def make_writable(root: Path) -> None:
    """Undo `_seal` so a tree can be deleted (folders need write permission to lose entries)."""
    if not os.path.isdir(root) or os.path.islink(root):
        return
    os.chmod(root, 0o755)
    # Top-down, making each folder writable (and listable) before looking inside it.
    for current, dirs, _files in os.walk(root, topdown=True, followlinks=False):
        for name in dirs:
            path = os.path.join(current, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)


def _clear(dest: Path, remove_dest: bool) -> None:
    """Remove everything below `dest` (and `dest` itself when asked), read-only parts included."""
    if not os.path.isdir(dest) or os.path.islink(dest):
        return
    make_writable(dest)
    if remove_dest:
        shutil.rmtree(dest, ignore_errors=True)
        return
    with os.scandir(dest) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


def _mb(size: int) -> str:
    return f"{size / MIB:.1f} MB"
