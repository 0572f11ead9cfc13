"""Paths a tenant names over SFTP, mapped into its own folder and never out of it.

The client's `/` is the root. `..` stops at it, and every path is resolved on the real filesystem
(symlinks included) and must then still lie inside the root: a link that points elsewhere, which the
instance's own Foundry process may have made, is refused rather than followed."""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath


class Outside(PermissionError):
    """The path leads out of the tenant's folder."""


class Confinement:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(root)

    def virtual(self, path: str) -> str:
        """The client's path made absolute and normal: `..` above `/` stays at `/`."""
        return posixpath.normpath(posixpath.join("/", path)).replace("//", "/")

    def _inside(self, real: str) -> str:
        if real != self.root and not real.startswith(self.root + os.sep):
            raise Outside(f"{real} is outside {self.root}")
        return real

    def resolve(self, path: str) -> str:
        """The real path of `path`, every link followed; for operations that follow links (open, stat, list)."""
        joined = os.path.join(self.root, self.virtual(path).lstrip("/"))
        return self._inside(os.path.realpath(joined))

    def entry(self, path: str) -> str:
        """The real path of the entry `path` names, its own last link not followed; for operations on the
        entry itself (lstat, remove, rename, mkdir), so removing a link never removes what it points to."""
        virtual = self.virtual(path)
        if virtual == "/":
            return self.root
        parent, name = posixpath.split(virtual)
        return os.path.join(self.resolve(parent), name)

    def relative(self, path: str) -> str:
        """`path` relative to the root ("" for the root itself), for the *at() calls."""
        return self.virtual(path).lstrip("/")

    def client_path(self, real: str) -> str:
        """What the client sees for a real path inside the root."""
        rel = os.path.relpath(self._inside(real), self.root)
        return "/" if rel == "." else "/" + rel.replace(os.sep, "/")


# openat2(2) with RESOLVE_BENEATH: the kernel itself keeps every step of the lookup under the root, so a
# folder swapped for a link between a check and the open (Foundry runs as the tenant and may make links)
# cannot lead a write of the root-run daemon out. Linux 5.6+; the syscall's number is the same on every
# architecture (the new-syscall table).
_SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def open_beneath(root_fd: int, relative: str, flags: int, mode: int = 0) -> int:
    """os.open of `relative` under the directory `root_fd`, refused (EXDEV) when any step, links
    included, would leave it."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0,
                   RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, root_fd, os.fsencode(relative or "."), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EXDEV:
            raise Outside(f"{relative} leads out of the root")
        raise OSError(err, os.strerror(err), relative)
    return fd
