"""A tenant's bytes written and read at offsets: every byte lands where the client put it, and a write the
kernel only partly takes is an error for the client, never a silent loss."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
from pathlib import Path

import asyncssh
import pytest

from foundry_fleet.sftp.file_io import read_at, write_at
from foundry_fleet.sftp.server import Account, start_sftp


class OneAccount:
    def __init__(self, root: Path, key: asyncssh.SSHKey) -> None:
        self.root, self.key = root, key

    def account(self, name: str) -> Account | None:
        return Account(name, self.root, None, None)

    def authorized_keys(self, name: str) -> list[str]:
        return [self.key.export_public_key().decode()]

    def over_limit(self, name: str) -> bool:
        return False


def test_a_file_sent_in_many_parallel_requests_lands_whole_and_comes_back_whole(tmp_path: Path) -> None:
    root = tmp_path / "Data"
    root.mkdir()
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # not a multiple of the block size
    user_key = asyncssh.generate_private_key("ssh-ed25519")

    async def run() -> None:
        endpoint = await start_sftp("127.0.0.1", 0, asyncssh.generate_private_key("ssh-ed25519"),
                                    OneAccount(root, user_key))
        try:
            async with asyncssh.connect("127.0.0.1", endpoint.port, username="alice", client_keys=[user_key],
                                        known_hosts=None) as conn, conn.start_sftp_client() as sftp:
                await sftp.put(str(source), "upload.bin", block_size=64 * 1024, max_requests=32)
                await sftp.get("upload.bin", str(tmp_path / "back.bin"), block_size=64 * 1024, max_requests=32)
        finally:
            await endpoint.close()

    asyncio.run(run())
    assert (root / "upload.bin").read_bytes() == source.read_bytes()
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_a_write_cut_short_by_the_kernel_is_an_error_not_a_short_count(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel take a write only up to the limit, then refuse the rest (EFBIG):
    # the way a quota reached midway behaves.
    limit = 100_000
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        with (tmp_path / "f").open("wb", buffering=0) as f:
            with pytest.raises(OSError) as refused:
                write_at(f, 0, b"x" * (limit + 50_000))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert refused.value.errno == errno.EFBIG
    assert (tmp_path / "f").stat().st_size == limit


def test_reads_and_writes_go_to_the_offsets_asked(tmp_path: Path) -> None:
    with (tmp_path / "f").open("w+b", buffering=0) as f:
        assert write_at(f, 5, b"world") == 5
        assert write_at(f, 0, b"hello") == 5
        assert read_at(f, 10, 4) == b""  # past the end: SFTP's end of file
        assert read_at(f, 3, 4) == b"lowo"
