"""[metrics]: the token-free address is a loopback or private IP literal, and the token file is the
fleet's kind of secret (0600, made once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.metrics.scrape_token import load_or_create_token, token_path


def _with_metrics(tmp_path: Path, table: str) -> Path:
    path = init_fleet(tmp_path / "f")
    text = path.read_text()
    # The new fleet's own [metrics] table (the last one) gives way to this one.
    path.write_text(text[:text.index("\n[metrics]\n")] + f"\n[metrics]\n{table}\n")
    return path


@pytest.mark.parametrize("listen, address", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("10.0.0.5:9464", ("10.0.0.5", 9464)),
    ("192.168.1.20:9100", ("192.168.1.20", 9100)),
    ("100.100.1.2:9464", ("100.100.1.2", 9464)),  # shared address space (a VPN's), not routed on the internet
    ("[::1]:9464", ("::1", 9464)),
    ("[fd00::5]:9464", ("fd00::5", 9464)),
    ("", None),
])
def test_private_addresses_are_taken(tmp_path: Path, listen: str, address: tuple[str, int] | None) -> None:
    cfg = load_config(_with_metrics(tmp_path, f'listen = "{listen}"'))
    assert cfg.metrics.listen_address == address


@pytest.mark.parametrize("listen, said", [
    ("0.0.0.0:9464", "every address of the host"),
    ("[::]:9464", "every address of the host"),
    ("8.8.8.8:9464", "public address"),
    ("[2a00:1450::1]:9464", "public address"),
    ("localhost:9464", "'localhost' is not an IP address"),
    ("metrics.example.org:9464", "is not an IP address"),
    ("127.0.0.1", "is not HOST:PORT"),
    ("127.0.0.1:0", "is not HOST:PORT"),
    ("127.0.0.1:65536", "is not HOST:PORT"),
    ("::1:9464", "written in brackets"),
])
def test_public_addresses_and_names_are_refused_with_the_key(tmp_path: Path, listen: str, said: str) -> None:
    with pytest.raises(InvalidInput) as e:
        load_config(_with_metrics(tmp_path, f'listen = "{listen}"'))
    assert "[metrics.listen]" in e.value.message and said in e.value.message, e.value.message


def test_the_token_file_is_made_once_0600_and_a_relative_one_is_beside_fleet_toml(tmp_path: Path) -> None:
    cfg = load_config(init_fleet(tmp_path / "f"))
    path = token_path(cfg)
    assert path == cfg.root / "state" / "metrics.token"
    token = load_or_create_token(path)
    assert len(token) == 64 and (path.stat().st_mode & 0o777) == 0o600
    assert load_or_create_token(path) == token  # the next start: the same one

    moved = load_config(_with_metrics(tmp_path / "g", 'token_file = "secrets/metrics.token"'))
    assert token_path(moved) == (tmp_path / "g" / "f" / "secrets" / "metrics.token").resolve()

    path.chmod(0o644)  # a token others can read is no secret: refused, as the fleet's other secrets are
    with pytest.raises(InvalidInput):
        load_or_create_token(path)
