"""The one atomic write: whole or nothing, the final mode from the first byte, no link followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from foundry_fleet.files import atomic
from foundry_fleet.files.atomic import create_atomic, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def test_writes_text_and_bytes_with_the_mode_asked_for(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # would strip 0o044 from a plain open()
    try:
        write_atomic(tmp_path / "a.json", '{"x": 1}\n', 0o644)
        write_atomic(tmp_path / "b.bin", b"\x00\xff" * 70000, 0o600)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "a.json").read_text() == '{"x": 1}\n' and _mode(tmp_path / "a.json") == 0o644
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff" * 70000 and _mode(tmp_path / "b.bin") == 0o600
    assert _leftovers(tmp_path) == []


def test_a_secret_is_never_readable_by_others_even_before_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_text("old")
    seen: list[tuple[int, str]] = []
    write_atomic(target, "new secret", 0o600, check=lambda temp: seen.append((_mode(temp), temp.read_text())))
    assert seen == [(0o600, "new secret")]  # complete and private before it replaced anything
    assert target.read_text() == "new secret" and _mode(target) == 0o600


def test_replacing_keeps_the_old_content_when_the_check_refuses(tmp_path: Path) -> None:
    target = tmp_path / "fleet.toml"
    target.write_text("good = 1\n")

    def refuse(temp: Path) -> None:
        raise ValueError(f"{temp.name} does not load")

    with pytest.raises(ValueError, match="does not load"):
        write_atomic(target, "bad ===", 0o644, check=refuse)
    assert target.read_text() == "good = 1\n"
    assert _leftovers(tmp_path) == []


def test_a_link_planted_at_the_temporary_name_is_refused_not_followed(tmp_path: Path, monkeypatch) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "guessed")
    (tmp_path / ".options.json.guessed.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "options.json", "planted?", 0o600)
    assert victim.read_text() == "untouched"
    assert not (tmp_path / "options.json").exists()


def test_a_link_at_the_target_is_replaced_by_the_file_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "admin.txt").symlink_to(victim)
    write_atomic(tmp_path / "admin.txt", "hash", 0o600)
    assert not (tmp_path / "admin.txt").is_symlink() and (tmp_path / "admin.txt").read_text() == "hash"
    assert victim.read_text() == "untouched"


def test_create_only_when_absent(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    assert create_atomic(key, "first\n", 0o600) is True
    assert create_atomic(key, "second\n", 0o600) is False
    assert key.read_text() == "first\n" and _mode(key) == 0o600
    assert _leftovers(tmp_path) == []
