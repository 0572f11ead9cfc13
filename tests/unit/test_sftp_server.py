"""The SFTP server's refusals, against asyncssh's own client on loopback (no fleet needed)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncssh
import pytest

from foundry_fleet.sftp.confine import Outside, open_beneath
from foundry_fleet.sftp.server import Account, Limits, start_sftp


class Accounts:
    def __init__(self, root: Path, key: asyncssh.SSHKey) -> None:
        self.root, self.key, self.full = root, key, False

    def account(self, name: str) -> Account | None:
        return Account(name, self.root, None, None) if name == "alice" else None

    def authorized_keys(self, name: str) -> list[str]:
        return [self.key.export_public_key().decode()] if name == "alice" else []

    def over_limit(self, name: str) -> bool:
        return self.full


def test_the_kernel_refuses_a_lookup_that_leaves_the_root(tmp_path: Path) -> None:
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "up").symlink_to("../..")
    fd = os.open(tmp_path / "root", os.O_PATH | os.O_DIRECTORY)
    try:
        for rel in ("sub/up/x", "../x", "/etc/passwd"):
            with pytest.raises(Outside):
                open_beneath(fd, rel, os.O_RDONLY)
        os.close(open_beneath(fd, "sub/new", os.O_WRONLY | os.O_CREAT, 0o600))
        assert (tmp_path / "root" / "sub" / "new").stat().st_mode & 0o777 == 0o600
    finally:
        os.close(fd)


def test_no_owner_change_no_setuid_and_uploads_stop_at_the_disk_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("foundry_fleet.sftp.server.ROOM_CHECK_EVERY", 0.0)  # every open asks afresh
    root = tmp_path / "Data"
    root.mkdir()
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    accounts = Accounts(root, user_key)

    async def run() -> None:
        endpoint = await start_sftp("127.0.0.1", 0, asyncssh.generate_private_key("ssh-ed25519"), accounts,
                                    Limits(max_failures=2, max_sessions=1))
        try:
            async with asyncssh.connect("127.0.0.1", endpoint.port, username="alice", client_keys=[user_key],
                                        known_hosts=None) as conn, conn.start_sftp_client() as sftp:
                async with sftp.open("a.txt", "w") as f:
                    await f.write("hello")
                await sftp.setstat("a.txt", asyncssh.SFTPAttrs(uid=4242, gid=4242, permissions=0o4777))
                st = (root / "a.txt").stat()
                assert (st.st_uid, st.st_mode & 0o7777) == (os.geteuid(), 0o777)
                assert await sftp.realpath("../../..") == "/"
                # One session per instance here: a second connection is refused while this one is open.
                with pytest.raises(asyncssh.PermissionDenied):
                    await asyncssh.connect("127.0.0.1", endpoint.port, username="alice", client_keys=[user_key],
                                           known_hosts=None)
                accounts.full = True
                with pytest.raises(asyncssh.SFTPError, match="disk limit"):
                    await sftp.open("b.txt", "w")
                with pytest.raises(asyncssh.SFTPError, match="disk limit"):
                    await sftp.mkdir("d")
                assert await sftp.listdir(".") in (["a.txt"], [".", "..", "a.txt"])
                assert not (root / "b.txt").exists()
            # A wrong key, twice from one address: it is turned away, even with the right key after.
            stranger = asyncssh.generate_private_key("ssh-ed25519")
            for key in (stranger, stranger, user_key):
                with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError, OSError)):
                    await asyncssh.connect("127.0.0.1", endpoint.port, username="alice", client_keys=[key],
                                           known_hosts=None)
        finally:
            await endpoint.close()

    asyncio.run(run())
