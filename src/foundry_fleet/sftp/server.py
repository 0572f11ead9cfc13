"""The SFTP endpoint: SFTP only (no shell, exec or forwarding), public keys only, each instance's account
confined to its own folder, files it makes owned by the instance's user."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import asyncssh

from foundry_fleet.sftp.confine import Confinement, Outside, open_beneath
from foundry_fleet.sftp.file_io import read_at, write_at

log = logging.getLogger("foundry_fleet.sftp")

GCM_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
ROOM_CHECK_EVERY = 10.0  # seconds a disk-limit answer is reused: a walk of a large folder is not free


@dataclass(frozen=True)
class Account:
    name: str
    root: Path  # what the client sees as `/`
    uid: int | None  # the owner of what it creates; None: the daemon's own (a fleet run without root)
    gid: int | None


class Accounts(Protocol):
    def account(self, name: str) -> Account | None: ...
    def authorized_keys(self, name: str) -> list[str]: ...
    def over_limit(self, name: str) -> bool: ...


@dataclass
class Limits:
    max_failures: int = 10  # refused keys from one address ...
    window: float = 600.0  # ... within this many seconds ...
    block_for: float = 900.0  # ... block it this long
    max_sessions: int = 4  # connections signed in as one instance at a time


@dataclass
class Guard:
    """Failed sign-ins per source address, and sessions per instance."""

    limits: Limits
    clock: object = time.monotonic
    failures: dict[str, list[float]] = field(default_factory=dict)
    blocked_until: dict[str, float] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return self.clock()  # type: ignore[operator]

    def blocked(self, address: str) -> bool:
        until = self.blocked_until.get(address)
        if until is None:
            return False
        if until > self.now():
            return True
        del self.blocked_until[address]
        return False

    def failed(self, address: str) -> None:
        now = self.now()
        recent = [t for t in self.failures.get(address, []) if t > now - self.limits.window] + [now]
        self.failures[address] = recent
        if len(recent) >= self.limits.max_failures:
            self.blocked_until[address] = now + self.limits.block_for
            self.failures.pop(address, None)
            log.warning("SFTP: %s blocked for %.0f s after %d refused sign-ins", address, self.limits.block_for,
                        len(recent))

    def may_open(self, name: str) -> bool:
        return self.sessions.get(name, 0) < self.limits.max_sessions

    def opened(self, name: str) -> None:
        self.sessions[name] = self.sessions.get(name, 0) + 1

    def closed(self, name: str) -> None:
        left = self.sessions.get(name, 0) - 1
        if left > 0:
            self.sessions[name] = left
        else:
            self.sessions.pop(name, None)


def _path(b: bytes) -> str:
    return os.fsdecode(b)


def _refuse(what: str) -> asyncssh.SFTPError:
    return asyncssh.SFTPPermissionDenied(what)


def _open_flags(pflags: int) -> tuple[int, str]:
    """os.open flags and the file object's mode for SFTP's open flags (as asyncssh's own open reads them)."""
    reading, writing = bool(pflags & asyncssh.FXF_READ), bool(pflags & asyncssh.FXF_WRITE)
    if reading and writing:
        flags, mode = os.O_RDWR, "r+b"
    elif writing or pflags & asyncssh.FXF_APPEND:
        flags, mode = os.O_WRONLY, "wb"
    else:
        flags, mode = os.O_RDONLY, "rb"
    if pflags & asyncssh.FXF_APPEND:
        flags |= os.O_APPEND
        mode = "a+b" if reading else "ab"
    if pflags & asyncssh.FXF_CREAT:
        flags |= os.O_CREAT
    if pflags & asyncssh.FXF_TRUNC:
        flags |= os.O_TRUNC
    if pflags & asyncssh.FXF_EXCL:
        flags |= os.O_EXCL | os.O_CREAT
    return flags, mode


class ConfinedSFTP(asyncssh.SFTPServer):
    """One signed-in instance's view of its folder. Paths are checked twice: resolved and held inside the
    root first (for a clear refusal), then opened by the kernel beneath the root's descriptor (openat2),
    so a link swapped in between cannot lead a write out."""

    def __init__(self, chan: asyncssh.SSHServerChannel, account: Account, accounts: Accounts) -> None:
        super().__init__(chan)
        self.account = account
        self.accounts = accounts
        self.confined = Confinement(account.root)
        self.root_fd = os.open(self.confined.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._room: tuple[float, bool] | None = None

    def exit(self) -> None:
        os.close(self.root_fd)

    # What the base class still runs on a path itself (listing a folder, statvfs) comes here.
    def map_path(self, path: bytes) -> bytes:
        return os.fsencode(self._real(path))

    def _real(self, path: bytes) -> str:
        try:
            return self.confined.resolve(_path(path))
        except Outside:
            raise _refuse("no such path in your folder") from None

    def _rel(self, real: str) -> str:
        rel = os.path.relpath(real, self.confined.root)
        return "" if rel == "." else rel

    def _open(self, path: bytes, flags: int, mode: int = 0) -> int:
        try:
            return open_beneath(self.root_fd, self._rel(self._real(path)), flags, mode)
        except Outside:
            raise _refuse("no such path in your folder") from None

    @contextmanager
    def _parent(self, path: bytes) -> Iterator[tuple[int, str]]:
        """The folder holding the entry `path` names (opened beneath the root) and the entry's name; the
        entry's own last link is not followed, so removing a link never removes what it points to."""
        try:
            entry = self.confined.entry(_path(path))
        except Outside:
            raise _refuse("no such path in your folder") from None
        if entry == self.confined.root:
            raise _refuse("that is your folder itself")
        parent, name = os.path.split(entry)
        try:
            fd = open_beneath(self.root_fd, self._rel(parent), os.O_PATH | os.O_DIRECTORY)
        except Outside:
            raise _refuse("no such path in your folder") from None
        try:
            yield fd, name
        finally:
            os.close(fd)

    def reverse_map_path(self, path: bytes) -> bytes:
        return self.confined.client_path(_path(path)).encode()

    def realpath(self, path: bytes) -> bytes:
        return self.reverse_map_path(self.map_path(path))

    async def _check_room(self) -> None:
        now = time.monotonic()
        if self._room is None or self._room[0] < now - ROOM_CHECK_EVERY:
            self._room = (now, await asyncio.to_thread(self.accounts.over_limit, self.account.name))
        if self._room[1]:
            raise asyncssh.SFTPQuotaExceeded("your instance is at its disk limit: delete files first")

    def _owner(self) -> tuple[int, int] | None:
        uid, gid = self.account.uid, self.account.gid
        if uid is None or (uid == os.geteuid() and gid == os.getegid()):
            return None
        return uid, gid if gid is not None else uid

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        flags, mode = _open_flags(pflags)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            await self._check_room()
        perms = 0o644 if attrs.permissions is None else attrs.permissions & 0o777
        created = False
        if flags & os.O_CREAT and not flags & os.O_EXCL:
            try:  # exclusively first: only a file made here is handed to the instance's user
                fd, created = self._open(path, flags | os.O_EXCL, perms), True
            except FileExistsError:
                fd = self._open(path, flags & ~os.O_CREAT)
        else:
            fd = self._open(path, flags, perms)
            created = bool(flags & os.O_EXCL)
        try:
            if created and (owner := self._owner()) is not None:
                os.fchown(fd, *owner)
            return open(fd, mode, buffering=0)
        except BaseException:
            os.close(fd)
            raise

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        return read_at(cast(BinaryIO, file_obj), offset, size)

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        return write_at(cast(BinaryIO, file_obj), offset, data)

    def open56(self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs) -> object:
        raise asyncssh.SFTPOpUnsupported("use SFTP version 3")

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        # Never the owner: as root that would hand a file to anyone. No setuid bits either.
        if attrs.size is not None:
            fd = self._open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, attrs.size)
            finally:
                os.close(fd)
        if attrs.permissions is None and attrs.atime is None and attrs.mtime is None:
            return
        fd = self._open(path, os.O_PATH)
        try:
            # Through the descriptor's own /proc link: the very file opened beneath the root.
            at = f"/proc/self/fd/{fd}"
            if attrs.permissions is not None:
                os.chmod(at, attrs.permissions & 0o777)
            if attrs.atime is not None or attrs.mtime is not None:
                now = os.stat(at)
                atime = now.st_atime_ns if attrs.atime is None else int(attrs.atime * 1e9) + (attrs.atime_ns or 0)
                mtime = now.st_mtime_ns if attrs.mtime is None else int(attrs.mtime * 1e9) + (attrs.mtime_ns or 0)
                os.utime(at, ns=(atime, mtime))
        finally:
            os.close(fd)

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self.setstat(path, attrs)

    def stat(self, path: bytes) -> os.stat_result:
        fd = self._open(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def lstat(self, path: bytes) -> os.stat_result:
        if self.confined.virtual(_path(path)) == "/":
            return self.stat(path)
        with self._parent(path) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._check_room()
        with self._parent(path) as (fd, name):
            os.mkdir(name, 0o755 if attrs.permissions is None else attrs.permissions & 0o777, dir_fd=fd)
            if (owner := self._owner()) is not None:
                os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)

    def remove(self, path: bytes) -> None:
        with self._parent(path) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def rmdir(self, path: bytes) -> None:
        with self._parent(path) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        with self._parent(oldpath) as (old_fd, old), self._parent(newpath) as (new_fd, new):
            try:
                os.stat(new, dir_fd=new_fd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(old, new, src_dir_fd=old_fd, dst_dir_fd=new_fd)
            else:
                raise asyncssh.SFTPFileAlreadyExists(_path(newpath))

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        with self._parent(oldpath) as (old_fd, old), self._parent(newpath) as (new_fd, new):
            os.replace(old, new, src_dir_fd=old_fd, dst_dir_fd=new_fd)

    def readlink(self, path: bytes) -> bytes:
        raise _refuse("links are not shown")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise _refuse("links cannot be made here")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise _refuse("links cannot be made here")


class _Connection(asyncssh.SSHServer):
    def __init__(self, accounts: Accounts, guard: Guard) -> None:
        self.accounts = accounts
        self.guard = guard
        self.address = "?"
        self.signed_in: str | None = None
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.address = peer[0] if peer else "?"
        if self.guard.blocked(self.address):
            conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.signed_in is not None:
            self.guard.closed(self.signed_in)
            self.signed_in = None

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self.guard.blocked(self.address):
            return False
        texts = await asyncio.to_thread(self.accounts.authorized_keys, username)
        offered = key.public_data
        for text in texts:
            try:
                if asyncssh.import_public_key(text).public_data == offered:
                    if not self.guard.may_open(username):
                        log.warning("SFTP: %s refused: %s has its most sessions open", self.address, username)
                        return False
                    return True
            except (asyncssh.KeyImportError, ValueError):
                continue
        self.guard.failed(self.address)
        return False

    def auth_completed(self) -> None:
        assert self.conn is not None
        self.signed_in = self.conn.get_extra_info("username")
        self.guard.opened(self.signed_in)


@dataclass
class SftpEndpoint:
    """The running endpoint; `close` stops it and ends its sessions."""

    server: asyncssh.SSHAcceptor

    @property
    def port(self) -> int:
        return self.server.get_port()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The endpoint's host key: made once, so clients that trusted it keep trusting it."""
    if path.exists():
        return asyncssh.read_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key


async def start_sftp(host: str, port: int, host_key: asyncssh.SSHKey, accounts: Accounts,
                     limits: Limits | None = None) -> SftpEndpoint:
    guard = Guard(limits or Limits())

    def sftp_factory(chan: asyncssh.SSHServerChannel) -> ConfinedSFTP:
        name = chan.get_extra_info("username")
        account = accounts.account(name)
        if account is None:  # deleted while signed in
            chan.close()
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "no such instance")
        return ConfinedSFTP(chan, account, accounts)

    server = await asyncssh.create_server(
        lambda: _Connection(accounts, guard), host, port,
        server_host_keys=[host_key], sftp_factory=sftp_factory, allow_scp=False,
        agent_forwarding=False, x11_forwarding=False, login_timeout=30,
        # AES-GCM only: the client's order wins, and OpenSSH's puts chacha20 first, which asyncssh moves at
        # half the speed (bench/sftp_upload.py). Every client since 2021 (OpenSSH 6.2, PuTTY 0.76,
        # WinSCP, FileZilla) has it.
        encryption_algs=GCM_CIPHERS,
        # The SFTP subsystem only: with no process or session factory, shells and commands are refused.
        process_factory=None, session_factory=None,
    )
    return SftpEndpoint(server)
