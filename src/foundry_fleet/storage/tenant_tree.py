"""Reading and writing trees a tenant controls, from directory file descriptors, as root.

A tenant's own code runs while the fleet copies, restores, measures or deletes its files, and it can
swap any directory for a symbolic link and back between two system calls (`renameat2` with
`RENAME_EXCHANGE` in a loop). A path checked a moment ago proves nothing, so here nothing is looked up
by path below the tree's root:

- every directory is opened with `O_DIRECTORY | O_NOFOLLOW` relative to its parent's descriptor, and
  every file with `O_NOFOLLOW | O_NONBLOCK` (a FIFO must not block the walk) relative to its
  directory's; `fstat` of what was opened decides what it is;
- symbolic links are read with `readlink(name, dir_fd=...)` and recorded as links, never followed;
- sockets, FIFOs and devices are not data: skipped;
- writes go through descriptors too: `mkdir`/`open(O_CREAT | O_EXCL | O_NOFOLLOW)` relative to the
  destination directory's descriptor, `fchown`/`fchmod` on what was created.

The walk is iterative, so any depth works (up to `MAX_DEPTH`, past which the tenant's operation fails
with a clear error), and it keeps a bounded number of directory descriptors open: past a window the
older ones are closed and opened again from a kept ancestor when the walk climbs back, checking that
each one is still the directory it was (device and inode), else the operation fails as "changed".
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath

from foundry_fleet.domain.errors import ExternalFailure

MAX_DEPTH = 4096
WINDOW = 32  # directory descriptors kept open at the bottom of the walk
CHECKPOINT = 32  # ... plus every CHECKPOINT-th ancestor, to reopen from
CHUNK = 1 << 20
RETRIES = 3  # an entry that changes kind this often while being looked at is skipped

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Parts = tuple[str, ...]


class TreeError(ExternalFailure):
    """A tenant's tree that cannot be walked (too deep, changed under the walk, unreadable)."""


def show(parts: Parts) -> str:
    """A path for a message: tenant names may hold newlines or escapes, so shown as a repr."""
    text = "/".join(parts) or "."
    return repr(text)[1:-1] if not text.isprintable() else text


@contextmanager
def reported_as(what: str, hint: str = "nothing was changed in the instance's data") -> Iterator[None]:
    """Turn an OSError met in a tenant's tree (a full disk, a name the file system refuses, ...) into a
    TreeError that says what failed, so it fails that tenant's operation with a message, not a crash."""
    try:
        yield
    except TreeError as e:
        raise TreeError(f"{what}: {e.message}", e.hint or hint) from e
    except OSError as e:
        where = f" ({show(tuple(os.fsdecode(e.filename).split('/')))})" if e.filename not in (None, "") \
            and not isinstance(e.filename, int) else ""
        raise TreeError(f"{what}: {e.strerror or e}{where}", hint) from e


def open_root(path: Path) -> int:
    """The descriptor of a tree's root (the path up to it is the fleet's own, never the tenant's)."""
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as e:
        raise TreeError(f"cannot open {path}: {e.strerror}", "check that it is a directory") from e


class Kind(Enum):
    DIR = "dir"  # entered: the walk's chain now ends in it
    LEAVE = "leave"  # every entry of the directory was seen; it is still the chain's end
    FILE = "file"
    LINK = "link"
    OTHER = "other"  # socket, FIFO, device: not data
    CHANGED = "changed"  # kept changing kind while being looked at (a tenant racing the walk)


@dataclass
class Entry:
    kind: Kind
    parts: Parts  # relative to the root; () for the root itself
    st: os.stat_result | None = None  # of what was opened (FILE with open_files, DIR), else of the entry
    fd: int = -1  # DIR: the directory; FILE, when the walk opens files: the file (valid until the walk goes on)
    target: str = ""  # LINK
    dir_fd: int = -1  # the directory holding the entry (-1 for the root)

    @property
    def name(self) -> str:
        return self.parts[-1]


@dataclass
class _Frame:
    parts: Parts
    ident: tuple[int, int]
    fd: int | None
    pending: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.parts[-1]


class DirChain:
    """The directories from a root down to the current one, each held by a descriptor or reopenable.

    Only the last WINDOW frames and every CHECKPOINT-th one keep their descriptor; `fd()` reopens the
    current directory from the nearest kept ancestor, by name and `O_NOFOLLOW`, and insists on finding
    the same (device, inode) at every step.
    """

    def __init__(self, root_fd: int) -> None:
        st = os.fstat(root_fd)
        self.frames: list[_Frame] = [_Frame((), (st.st_dev, st.st_ino), os.dup(root_fd))]
        self._evicted = 1  # frames below this index keep no descriptor (checkpoints aside)

    @property
    def depth(self) -> int:
        return len(self.frames) - 1

    def parts(self) -> Parts:
        return self.frames[-1].parts

    def fd(self) -> int:
        top = self.frames[-1]
        if top.fd is None:
            self._reopen()
        assert top.fd is not None
        return top.fd

    def push(self, name: str, fd: int, st: os.stat_result) -> None:
        """Go down into `name`, already opened as `fd` (the chain owns it from now on)."""
        if self.depth >= MAX_DEPTH:
            os.close(fd)
            raise TreeError(f"{show((*self.parts(), name))} is more than {MAX_DEPTH} directories deep",
                            "flatten that folder; nothing else of this tree was changed")
        self.frames.append(_Frame((*self.frames[-1].parts, name), (st.st_dev, st.st_ino), fd))
        self._evict()

    def open_child(self, name: str) -> int | None:
        """Open the subdirectory `name` of the current one and go down into it (None: no such directory)."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=self.fd())
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        self.push(name, fd, os.fstat(fd))
        return fd

    def pop(self) -> None:
        frame = self.frames.pop()
        if frame.fd is not None:
            os.close(frame.fd)
        self._evicted = min(self._evicted, max(len(self.frames) - 1, 1))

    def close(self) -> None:
        while self.frames:
            frame = self.frames.pop()
            if frame.fd is not None:
                os.close(frame.fd)

    def _evict(self) -> None:
        low = len(self.frames) - WINDOW
        for i in range(self._evicted, max(low, 1)):
            frame = self.frames[i]
            if frame.fd is not None and i % CHECKPOINT:
                os.close(frame.fd)
                frame.fd = None
        self._evicted = max(self._evicted, low)

    def _reopen(self) -> None:
        start = max(i for i, f in enumerate(self.frames) if f.fd is not None)
        for i in range(start + 1, len(self.frames)):
            frame, parent = self.frames[i], self.frames[i - 1]
            assert parent.fd is not None
            try:
                fd = os.open(frame.name, DIR_FLAGS, dir_fd=parent.fd)
            except OSError as e:
                raise TreeError(f"{show(frame.parts)} changed while it was being read ({e.strerror})",
                                "retry when the instance is not rewriting that folder") from e
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != frame.ident:
                os.close(fd)
                raise TreeError(f"{show(frame.parts)} was replaced while it was being read",
                                "retry when the instance is not rewriting that folder")
            frame.fd = fd
        self._evicted = min(self._evicted, start + 1)
        self._evict()


def walk(root_fd: int, *, skip: Callable[[Parts], bool] = lambda parts: False,
         open_files: bool = False) -> Iterator[Entry]:
    """Every entry under `root_fd`, directories first (DIR, then their entries, then LEAVE), names sorted.

    `skip(parts)` leaves an entry (and a directory's whole subtree) out. With `open_files`, FILE entries
    come opened (`fd`, read-only, non-blocking) and `st` is the `fstat` of that descriptor; otherwise
    `st` is an `lstat` relative to the directory's descriptor. The descriptors handed out are valid only
    until the walk goes on.
    """
    chain = DirChain(root_fd)
    try:
        yield Entry(Kind.DIR, (), os.fstat(root_fd), chain.fd())
        chain.frames[0].pending = _listing(chain.fd())
        while chain.frames:
            top = chain.frames[-1]
            if not top.pending:
                parts = chain.parts()
                chain.pop()
                yield Entry(Kind.LEAVE, parts, dir_fd=chain.fd() if chain.frames else -1)
                continue
            name = top.pending.pop()
            parts = (*chain.parts(), name)
            if skip(parts):
                continue
            parent = chain.fd()
            entry = _look(parent, name, parts, open_files)
            if entry is None:
                continue  # gone meanwhile
            entry.dir_fd = parent
            if entry.kind is Kind.DIR:
                assert entry.st is not None
                chain.push(name, entry.fd, entry.st)
                yield entry
                chain.frames[-1].pending = _listing(chain.fd())
                continue
            try:
                yield entry
            finally:
                if entry.kind is Kind.FILE and entry.fd >= 0:
                    os.close(entry.fd)
    finally:
        chain.close()


def _listing(fd: int) -> list[str]:
    with os.scandir(fd) as it:
        return sorted((e.name for e in it), reverse=True)  # popped from the end: sorted order


def _look(dir_fd: int, name: str, parts: Parts, open_files: bool) -> Entry | None:
    for _ in range(RETRIES):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TreeError(f"cannot read {show(parts)}: {e.strerror}") from e
        mode = st.st_mode
        try:
            if stat.S_ISLNK(mode):
                return Entry(Kind.LINK, parts, st, target=os.readlink(name, dir_fd=dir_fd))
            if stat.S_ISDIR(mode):
                fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                return Entry(Kind.DIR, parts, os.fstat(fd), fd)
            if not stat.S_ISREG(mode):
                return Entry(Kind.OTHER, parts, st)
            if not open_files:
                return Entry(Kind.FILE, parts, st)
            fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
            opened = os.fstat(fd)
            if stat.S_ISREG(opened.st_mode):
                return Entry(Kind.FILE, parts, opened, fd)
            os.close(fd)  # swapped for something else between the lstat and the open: look again
        except FileNotFoundError:
            return None
        except OSError as e:
            # ELOOP: a directory or file became a link; ENOTDIR: a directory became a file;
            # EINVAL: a link became something else. Whatever it is now, look again.
            if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EINVAL, errno.ENXIO):
                raise TreeError(f"cannot read {show(parts)}: {e.strerror}") from e
    return Entry(Kind.CHANGED, parts)


# writing --------------------------------------------------------------------------------------------


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) ranges of a file's first `size` bytes that hold data; holes are left out, so a
    sparse file of a terabyte costs what it stores, not what it claims. Where the file system cannot tell
    holes apart, the whole file is one range."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole from here to the end
                return
            if e.errno != errno.EINVAL:
                raise
            yield pos, size
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def copy_bytes(src: int, dst: int, size: int) -> None:
    """Copy the first `size` bytes of `src` into the empty `dst`, holes kept as holes, in the kernel
    where it can (a file that grows meanwhile is copied as it was when measured)."""
    for start, end in data_ranges(src, size):
        os.lseek(dst, start, os.SEEK_SET)
        pos = start
        while pos < end:
            try:
                sent = os.sendfile(dst, src, pos, min(CHUNK, end - pos))
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                sent = os.write(dst, os.pread(src, min(CHUNK, end - pos), pos))
            if sent == 0:
                break  # the file shrank meanwhile
            pos += sent
    os.ftruncate(dst, size)


def same_content(a: int, b: int, size: int) -> bool:
    """Whether two files of `size` bytes hold the same bytes. Only their data is read (a hole reads as
    zeros), so comparing costs what they store."""
    for one, other in ((a, b), (b, a)):
        for start, end in data_ranges(one, size):
            for pos in range(start, end, CHUNK):
                n = min(CHUNK, end - pos)
                if os.pread(one, n, pos) != os.pread(other, n, pos):
                    return False
    return True


def file_mode(st: os.stat_result, executable: int, plain: int) -> int:
    return executable if st.st_mode & 0o111 else plain


@dataclass
class CopyStats:
    files: int = 0
    bytes_new: int = 0  # on disk, of the files written (not linked)
    bytes_total: int = 0  # of every regular file
    skipped: int = 0  # entries left out: FIFOs, sockets, devices, and what kept changing while read
    examples: list[str] = field(default_factory=list)  # the first few of them, for a message


@dataclass(frozen=True)
class Reuse:
    """For a restore: the data the copy will replace (`data_fd`) and the snapshot it was restored from
    (`restored_from_fd`). A file is taken over from the data (hard-linked, not copied again) when the
    snapshot being restored holds it as the very file `restored_from` holds (one inode: a snapshot links
    what is unchanged since the one before) and the data still holds it exactly as a restore leaves it."""

    data_fd: int
    restored_from_fd: int


class _Following:
    """Another tree walked alongside the source, as deep as it has the same folders: a folder it lacks (or
    holds as a file or a link) leaves it behind until the walk climbs back out."""

    def __init__(self, fd: int) -> None:
        self.chain = DirChain(fd)
        self.depth = 0

    def enter(self, parts: Parts) -> None:
        if self.depth == len(parts) - 1 and self.chain.open_child(parts[-1]) is not None:
            self.depth += 1

    def leave(self, parts: Parts) -> None:
        if self.depth == len(parts):
            self.chain.pop()
            self.depth -= 1

    def folder_of(self, parts: Parts) -> int | None:
        """The descriptor of the folder that would hold `parts` here (None: not followed that deep)."""
        return self.chain.fd() if self.depth == len(parts) - 1 else None

    def close(self) -> None:
        self.chain.close()


def copy_tree(src_fd: int, dst_fd: int, *, skip: Callable[[Parts], bool], owner: int | None = None,
              seal: bool = False, previous_fd: int | None = None, reuse: Reuse | None = None) -> CopyStats:
    """Copy the tree under `src_fd` into the empty directory `dst_fd`.

    `seal`: a snapshot: files read-only (0444, or 0555 when executable) with the source's times, and
    directories 0555 once filled; a file whose copy in `previous_fd` (the same path in the previous
    snapshot) has the same content is a hard link to that copy instead of a new one (see `_link_previous`).
    Otherwise a restore: fresh writable files (0644/0755), directories 0755, everything owned by `owner`
    when given; with `reuse`, files the replaced data already holds as restored are linked from it (see
    `Reuse`, `_link_restored`). No link is followed, on any side.
    """
    stats = CopyStats()
    dst = DirChain(dst_fd)
    followed: list[_Following] = []

    def follow(fd: int) -> _Following:
        followed.append(_Following(fd))  # closed with the others, whatever fails next
        return followed[-1]

    try:
        prev = follow(previous_fd) if previous_fd is not None and seal else None
        data = follow(reuse.data_fd) if reuse is not None and not seal else None
        restored_from = follow(reuse.restored_from_fd) if reuse is not None and not seal else None
        for entry in walk(src_fd, skip=skip, open_files=True):
            if entry.kind is Kind.DIR:
                if entry.parts:
                    _make_dir(dst, entry.name, owner, seal)
                    for tree in followed:
                        tree.enter(entry.parts)
                elif owner is not None:
                    os.fchown(dst.fd(), owner, owner)
            elif entry.kind is Kind.LEAVE:
                if entry.parts:  # the top is the caller's to seal or hand over
                    os.fchmod(dst.fd(), 0o555 if seal else 0o755)
                    dst.pop()
                    for tree in followed:
                        tree.leave(entry.parts)
            elif entry.kind is Kind.LINK:
                os.symlink(entry.target, entry.name, dir_fd=dst.fd())
                if owner is not None:
                    os.chown(entry.name, owner, owner, dir_fd=dst.fd(), follow_symlinks=False)
            elif entry.kind is Kind.FILE:
                assert entry.st is not None
                stats.files += 1
                stats.bytes_total += entry.st.st_size
                prev_dir = prev.folder_of(entry.parts) if prev is not None else None
                if prev_dir is not None and _link_previous(entry, prev_dir, dst.fd()):
                    continue
                if data is not None and restored_from is not None:
                    data_dir, from_dir = data.folder_of(entry.parts), restored_from.folder_of(entry.parts)
                    if data_dir is not None and from_dir is not None \
                            and _link_restored(entry, data_dir, from_dir, dst.fd(), owner):
                        continue
                stats.bytes_new += _copy_file(entry, dst.fd(), owner, seal)
            else:
                stats.skipped += 1
                if len(stats.examples) < 10:
                    why = "changed while read" if entry.kind is Kind.CHANGED else "not a file"
                    stats.examples.append(f"{show(entry.parts)} ({why})")
    finally:
        dst.close()
        for tree in followed:
            tree.close()
    return stats


def _make_dir(dst: DirChain, name: str, owner: int | None, seal: bool) -> None:
    os.mkdir(name, 0o700, dir_fd=dst.fd())
    fd = os.open(name, DIR_FLAGS, dir_fd=dst.fd())
    if owner is not None and not seal:
        os.fchown(fd, owner, owner)
    dst.push(name, fd, os.fstat(fd))


def _copy_file(entry: Entry, dir_fd: int, owner: int | None, seal: bool) -> int:
    assert entry.st is not None
    out = os.open(entry.name, NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        copy_bytes(entry.fd, out, entry.st.st_size)
        os.fchmod(out, file_mode(entry.st, 0o555, 0o444) if seal else file_mode(entry.st, 0o755, 0o644))
        os.utime(out, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns))
        if owner is not None and not seal:
            os.fchown(out, owner, owner)
        return os.fstat(out).st_blocks * 512
    finally:
        os.close(out)


def _link_previous(entry: Entry, prev_dir: int, dst_dir: int) -> bool:
    """Hard-link the previous snapshot's copy of this file when its content is the same: same size and
    modification time (the fast path, as rsync's), or same size and the same bytes (a file whose time
    was merely touched, or that was rewritten with the same content). False: copy it."""
    assert entry.st is not None
    try:
        old = os.open(entry.name, FILE_FLAGS, dir_fd=prev_dir)
    except OSError:
        return False  # none there (or a link or a directory): a new file
    try:
        ost = os.fstat(old)
        if not stat.S_ISREG(ost.st_mode) or ost.st_size != entry.st.st_size \
                or (ost.st_mode & 0o111 != 0) != (entry.st.st_mode & 0o111 != 0):
            return False
        if ost.st_mtime_ns != entry.st.st_mtime_ns and not same_content(entry.fd, old, entry.st.st_size):
            return False
        try:
            os.link(entry.name, entry.name, src_dir_fd=prev_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EMLINK:  # that copy has as many links as the file system allows
                return False
            raise
        return True
    finally:
        os.close(old)


def _link_restored(entry: Entry, data_dir: int, from_dir: int, dst_dir: int, owner: int | None) -> bool:
    """Hard-link the replaced data's file when it is provably what a restore of this file would write:
    the snapshot's file is the one the data was restored from (same inode: unchanged between the two
    snapshots), and the data's file is still as that restore left it (a regular file of its own, same
    size and modification time to the nanosecond, the restore's mode and owner). False: copy it."""
    assert entry.st is not None
    try:
        was = os.stat(entry.name, dir_fd=from_dir, follow_symlinks=False)
        have = os.stat(entry.name, dir_fd=data_dir, follow_symlinks=False)
    except OSError:
        return False  # not in one of them (or not reachable as a plain name): a new or changed file
    if (was.st_dev, was.st_ino) != (entry.st.st_dev, entry.st.st_ino):
        return False
    uid = owner if owner is not None else os.geteuid()
    if not stat.S_ISREG(have.st_mode) or have.st_nlink != 1 or have.st_size != entry.st.st_size \
            or have.st_mtime_ns != entry.st.st_mtime_ns \
            or stat.S_IMODE(have.st_mode) != file_mode(entry.st, 0o755, 0o644) \
            or have.st_uid != uid or (owner is not None and have.st_gid != owner):
        return False
    try:
        os.link(entry.name, entry.name, src_dir_fd=data_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.EMLINK, errno.EXDEV):
            return False
        raise
    linked = os.stat(entry.name, dir_fd=dst_dir, follow_symlinks=False)
    if (linked.st_dev, linked.st_ino) != (have.st_dev, have.st_ino):  # replaced between the look and the link
        os.unlink(entry.name, dir_fd=dst_dir)
        return False
    return True


# removing and measuring -----------------------------------------------------------------------------


def remove_contents(dir_fd: int, *, keep: Callable[[Parts], bool] = lambda parts: False) -> None:
    """Delete everything under `dir_fd` (except what `keep` names, at any depth), never following a link."""
    for entry in walk(dir_fd, skip=keep):
        if entry.kind is Kind.DIR:
            assert entry.st is not None
            if os.geteuid() != 0 and entry.st.st_mode & 0o700 != 0o700:
                os.fchmod(entry.fd, 0o700)  # a read-only snapshot folder must be opened up to lose entries
        elif entry.kind is Kind.LEAVE:
            if entry.parts:
                try:
                    os.rmdir(entry.name, dir_fd=entry.dir_fd)
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):  # not empty: it holds what `keep` kept
                        raise
        else:
            try:
                os.unlink(entry.name, dir_fd=entry.dir_fd)
            except (FileNotFoundError, IsADirectoryError):  # gone, or a folder again: its parent stays
                pass


def usage(root_fd: int, seen: set[tuple[int, int]], skip: Callable[[Parts], bool] = lambda parts: False) -> int:
    """Bytes on disk of every inode under `root_fd` not in `seen` (which is updated): hard links and
    files shared between snapshots count once."""
    total = 0
    for entry in walk(root_fd, skip=skip):
        if entry.kind is Kind.LEAVE or entry.st is None:
            continue
        key = (entry.st.st_dev, entry.st.st_ino)
        if key not in seen:
            seen.add(key)
            total += entry.st.st_blocks * 512
    return total


def make_dirs(root: Path, *paths: str | PurePosixPath, mode: int = 0o755) -> None:
    """`mkdir -p` of each relative path under `root`, never through a link: a component that is a link or
    a file stops that path (made where it can be, nothing outside)."""
    top = open_root(root)
    try:
        for path in paths:
            fd = os.dup(top)
            try:
                for name in str(path).split("/"):
                    try:
                        os.mkdir(name, mode, dir_fd=fd)
                    except FileExistsError:
                        pass
                    try:
                        child = os.open(name, DIR_FLAGS, dir_fd=fd)
                    except OSError as e:
                        if e.errno in (errno.ELOOP, errno.ENOTDIR):
                            break
                        raise
                    os.close(fd)
                    fd = child
            finally:
                os.close(fd)
    finally:
        os.close(top)
