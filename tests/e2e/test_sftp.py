"""Tenants' SFTP on a real daemon, driven with OpenSSH's own sftp client: keys registered through the CLI,
files landing in the instance's Data/ as its user, and no way out of it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.fleets import make_fleet, set_section
from tests.support.harness import FleetHarness
from tests.support.ports import single_port

pytestmark = pytest.mark.e2e


def keypair(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def ssh_options(key: Path, port: int) -> list[str]:
    return ["-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "PasswordAuthentication=no", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR"]


def sftp(key: Path, port: int, user: str, batch: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "batch").write_text(batch)
    return subprocess.run(["sftp", "-b", "batch", "-P", str(port), *ssh_options(key, port), f"{user}@127.0.0.1"],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def data_of(h: FleetHarness, name: str) -> tuple[Path, int]:
    shown = h.cli("instance", "show", name, "--json").json()
    uid = shown["uid"] if shown["uid"] is not None else os.geteuid()
    return Path(shown["data_dir"]) / "Data", uid


def test_a_tenant_uploads_over_sftp_into_its_own_data_and_nowhere_else(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path)
    port = single_port()
    set_section(h, "sftp", {"enabled": "true", "listen": f"127.0.0.1:{port}"})
    work = tmp_path / "client"
    work.mkdir()
    alice_key, bob_key, stranger = (keypair(work, n) for n in ("alice", "bob", "stranger"))
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        host_key = h.root / "state" / "sftp_host_key"
        assert host_key.stat().st_mode & 0o777 == 0o600  # made by the daemon's first start
        for name in ("alice", "bob"):
            h.cli("instance", "create", name, "--release", "13.345")
        h.cli("instance", "sftp-key", "add", "alice", f"{alice_key}.pub")
        h.cli("instance", "sftp-key", "add", "bob", f"{bob_key}.pub")
        listed = h.cli("instance", "sftp-key", "list", "alice", "--json").json()
        assert [k["comment"] for k in listed] == ["alice"]
        refused = h.cli("instance", "sftp-key", "add", "alice", str(alice_key), check=False)
        assert refused.code != 0 and "private key" in refused.out + refused.err

        alice_data, alice_uid = data_of(h, "alice")
        bob_data, _ = data_of(h, "bob")
        (bob_data / "secret.txt").write_text("bob's")
        (work / "map.txt").write_text("a map\n" * 1000)

        done = sftp(alice_key, port, "alice", "put map.txt\nmkdir maps\nput map.txt maps/copy.txt\nls -l\n", work)
        assert done.returncode == 0, done.stderr
        for landed in (alice_data / "map.txt", alice_data / "maps" / "copy.txt", alice_data / "maps"):
            assert landed.stat().st_uid == alice_uid and landed.stat().st_gid == alice_uid
        assert (alice_data / "map.txt").read_text() == "a map\n" * 1000

        # `..` stops at the account's root: the file lands in alice's Data/, not above it.
        done = sftp(alice_key, port, "alice", "cd ..\ncd ../..\nput map.txt up.txt\npwd\n", work)
        assert done.returncode == 0, done.stderr
        assert (alice_data / "up.txt").exists() and not (alice_data.parent / "up.txt").exists()

        # A link out of the tree (as Foundry, running as alice, could make one) is not followed.
        (alice_data / "to-bob").symlink_to(bob_data)
        for attempt in ("get ../../bob/Data/secret.txt", f"get {bob_data}/secret.txt", "get /etc/passwd",
                        "get to-bob/secret.txt", "cd to-bob", "symlink / root-link",
                        f"symlink {bob_data} bob-link", "put map.txt to-bob/dropped.txt"):
            done = sftp(alice_key, port, "alice", attempt + "\n", work)
            assert done.returncode != 0, f"{attempt} worked: {done.stdout}"
        assert not (work / "secret.txt").exists() and not (work / "passwd").exists()
        # The link shows as an entry of alice's own, never what lies behind it.
        assert "secret" not in sftp(alice_key, port, "alice", "ls -l to-bob\nls -l to-bob/\nls -l\n", work).stdout
        assert not (bob_data / "dropped.txt").exists()
        assert not (alice_data / "root-link").exists() and not (alice_data / "bob-link").is_symlink()
        # Removing the link removes the link, never what it points to.
        assert sftp(alice_key, port, "alice", "rm to-bob\n", work).returncode == 0
        assert not (alice_data / "to-bob").is_symlink() and (bob_data / "secret.txt").exists()

        # Keys: a stranger's is refused, alice's does not open bob's account, and no shell or command runs.
        assert sftp(stranger, port, "alice", "ls\n", work).returncode != 0
        assert sftp(alice_key, port, "bob", "ls\n", work).returncode != 0
        assert sftp(bob_key, port, "bob", "get secret.txt\n", work).returncode == 0
        command = subprocess.run(["ssh", "-p", str(port), *ssh_options(alice_key, port), "alice@127.0.0.1", "id"],
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert command.returncode != 0 and "uid=" not in command.stdout

        # A removed key is refused from the next sign-in on.
        h.cli("instance", "sftp-key", "remove", "alice", str(listed[0]["id"]))
        assert sftp(alice_key, port, "alice", "ls\n", work).returncode != 0
    finally:
        h.tear_down()
