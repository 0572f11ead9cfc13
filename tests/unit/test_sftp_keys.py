from pathlib import Path

import asyncssh
import pytest

from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.services.sftp_keys import parse_public_key
from foundry_fleet.sftp.server import Guard, Limits


def public(kind: str, **kw: object) -> str:
    key = asyncssh.generate_private_key(kind, comment="me@laptop", **kw)
    return key.export_public_key("openssh").decode()


def test_an_ed25519_key_is_taken_with_its_comment() -> None:
    parsed = parse_public_key("  " + public("ssh-ed25519") + "\n")
    assert parsed.key_type == "ssh-ed25519"
    assert parsed.fingerprint.startswith("SHA256:")
    assert parsed.comment == "me@laptop"
    assert parsed.text.startswith("ssh-ed25519 ") and "\n" not in parsed.text


def test_rsa_of_2048_bits_is_taken_and_smaller_refused() -> None:
    assert parse_public_key(public("ssh-rsa", key_size=2048)).key_type == "ssh-rsa"
    with pytest.raises(InvalidInput, match="1024 bits is too weak"):
        parse_public_key(public("ssh-rsa", key_size=1024))


def test_private_keys_and_rubbish_are_refused() -> None:
    private = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    with pytest.raises(InvalidInput, match="private key"):
        parse_public_key(private)
    for text in ("", "ssh-ed25519 AAAAnotbase64!!", "hello", "x" * 20000):
        with pytest.raises(InvalidInput):
            parse_public_key(text)


def test_dsa_keys_are_refused() -> None:
    with pytest.raises(InvalidInput, match="ssh-dss keys are too weak"):
        parse_public_key(public("ssh-dss"))


def test_keys_are_stored_per_instance(tmp_path: Path) -> None:
    from sqlalchemy import insert

    from foundry_fleet.services.sftp_keys import SftpKeys
    from foundry_fleet.store.database import open_database
    from foundry_fleet.store.models import Instance, Release

    sessions = open_database(tmp_path / "fleet.sqlite")
    with sessions.begin() as s:
        s.execute(insert(Release).values(version="13.345", generation=13, build=345, layout="node", entry="main.js",
                                         sha256="0" * 64, zip_bytes=1, unpacked_bytes=1, path="/x", source="test"))
        s.add(Instance(name="alice", release_version="13.345", port=30001, uid=None))
        s.add(Instance(name="bob", release_version="13.345", port=30002, uid=None))
    keys = SftpKeys(sessions, "test")
    text = public("ssh-ed25519")
    added = keys.add("alice", text)
    assert [k.fingerprint for k in keys.list("alice")] == [added.fingerprint]
    assert keys.list("bob") == [] and keys.authorized("bob") == [] and keys.authorized("nobody") == []
    with pytest.raises(Conflict):
        keys.add("alice", text)
    with pytest.raises(NotFound):
        keys.add("carol", text)
    assert keys.remove("alice", added.fingerprint.removeprefix("SHA256:")).id == added.id
    assert keys.authorized("alice") == []
    with pytest.raises(NotFound):
        keys.remove("alice", str(added.id))


def test_an_address_is_blocked_after_repeated_failures_and_sessions_are_capped() -> None:
    now = [0.0]
    guard = Guard(Limits(max_failures=3, window=60, block_for=100, max_sessions=2), clock=lambda: now[0])
    for _ in range(2):
        guard.failed("10.0.0.1")
    assert not guard.blocked("10.0.0.1")
    guard.failed("10.0.0.1")
    assert guard.blocked("10.0.0.1") and not guard.blocked("10.0.0.2")
    now[0] = 101
    assert not guard.blocked("10.0.0.1")
    guard.opened("alice")
    guard.opened("alice")
    assert not guard.may_open("alice") and guard.may_open("bob")
    guard.closed("alice")
    assert guard.may_open("alice")
