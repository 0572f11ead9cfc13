"""Paths a tenant names over SFTP, mapped into its own folder and never out of it.

The client's `/` is the root. `..` stops at it, and every path is resolved on the real filesystem
(symlinks included) and must then still lie inside the root: a link that points elsewhere, which the
instance's own Foundry process may have made, is refused rather than followed."""

from __future__ import annotations

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

    def client_path(self, real: str) -> str:
        """What the client sees for a real path inside the root."""
        rel = os.path.relpath(self._inside(real), self.root)
        return "/" if rel == "." else "/" + rel.replace(os.sep, "/")
