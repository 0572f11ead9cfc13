"""[nomad] in fleet.toml and `init --runtime nomad`: defaults, every bad value named by its key, the
token file's permissions checked, paths relative to fleet.toml."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.init import init_fleet
from foundry_fleet.wiring import runtimes


@pytest.fixture(autouse=True)
def nomad_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """[runtime] driver = "nomad" must name a registered driver; none of these tests starts one."""
    if "nomad" not in runtimes.RUNTIMES:
        monkeypatch.setitem(runtimes.RUNTIMES, "nomad", runtimes.RUNTIMES["local"])


def nomad_fleet(tmp_path: Path, section: str) -> Path:
    path = init_fleet(tmp_path / "f", runtime="nomad")
    text = path.read_text()
    start = text.index("[nomad]\n")
    end = text.index("\n[", start + 1)
    path.write_text(text[:start] + "[nomad]\n" + section + text[end:])
    return path


def test_the_defaults_name_a_local_nomad(tmp_path: Path) -> None:
    config = load_config(init_fleet(tmp_path / "f", runtime="nomad"))
    n = config.nomad
    assert (n.address, n.region, n.namespace, n.token_file, n.ca_file) == (
        "http://127.0.0.1:4646", None, "default", None, None)
    assert (n.datacenters, n.task_driver, n.mhz_per_core, n.timeout, n.wait, n.node_root) == (
        ["*"], "podman", 2000, 10.0, 300.0, None)
    assert config.runtime.driver == "nomad" and config.edge.on_nomad is False
    # Other runtimes get the section as a commented example, and the same defaults.
    other = init_fleet(tmp_path / "g")
    assert "# [nomad]" in other.read_text() and load_config(other).nomad.address == "http://127.0.0.1:4646"


def test_paths_are_relative_to_fleet_toml_and_wait_takes_a_duration(tmp_path: Path) -> None:
    path = nomad_fleet(tmp_path, 'address = "https://nomad.example.org:4646/"\ntoken_file = "nomad-token"\n'
                                 'ca_file = "ca.pem"\nwait = "5m"\nnode_root = "/srv/fleet"\n'
                                 'datacenters = ["dc1", "edge-*"]\ntask_driver = "exec"\n')
    n = load_config(path).nomad
    base = path.parent.resolve()
    assert n.address == "https://nomad.example.org:4646"
    assert (n.token_file, n.ca_file, n.node_root) == (base / "nomad-token", base / "ca.pem", Path("/srv/fleet"))
    assert n.wait == 300.0 and n.datacenters == ["dc1", "edge-*"] and n.task_driver == "exec"


@pytest.mark.parametrize("section, says", [
    ('address = "ftp://nomad:4646"\n', "nomad.address"),
    ('address = "nomad:4646"\n', "not an http:// or https:// URL"),
    ('address = "http://user:pw@nomad:4646"\n', "only scheme, host and port"),
    ('address = "http://nomad:4646/v1"\n', "only scheme, host and port"),
    ('address = "http://nomad:99999"\n', "port out of range"),
    ('task_driver = "docker"\n', "nomad.task_driver"),
    ('namespace = "has space"\n', "not a Nomad name"),
    ('datacenters = []\n', "nomad.datacenters"),
    ('datacenters = ["dc 1"]\n', "has a space"),
    ('wait = "11m"\n', "nomad.wait"),
    ('wait = "soon"\n', "not a duration"),
    ('mhz_per_core = 0\n', "nomad.mhz_per_core"),
    ('timeout = 0\n', "nomad.timeout"),
    ('ca_file = "ca.pem"\n', "address is not https://"),
    ('tokenfile = "x"\n', "tokenfile"),
    ("timeout = inf\n", "nomad.timeout"),
    ("wait = nan\n", "nomad.wait"),
])
def test_a_bad_value_is_refused_naming_its_key(tmp_path: Path, section: str, says: str) -> None:
    path = nomad_fleet(tmp_path, section)
    with pytest.raises(InvalidInput) as info:
        load_config(path)
    assert says in info.value.message


def test_caddy_on_nomad_needs_the_nomad_runtime(tmp_path: Path) -> None:
    path = init_fleet(tmp_path / "f")
    path.write_text(path.read_text().replace("# on_nomad = false", "on_nomad = true"))
    with pytest.raises(InvalidInput, match='on_nomad = true needs \\[runtime\\] driver = "nomad"'):
        load_config(path)
    nomad = init_fleet(tmp_path / "g", runtime="nomad")
    nomad.write_text(nomad.read_text().replace("# on_nomad = false", "on_nomad = true"))
    assert load_config(nomad).edge.on_nomad is True


def test_init_writes_the_nomad_settings_it_was_given(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret-token-value\n")
    token.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    path = init_fleet(tmp_path / "f", runtime="nomad", nomad_address="https://nomad.example.org:4646",
                      nomad_token_file=token, nomad_ca_file=ca)
    n = load_config(path).nomad
    assert (n.address, n.token_file, n.ca_file) == ("https://nomad.example.org:4646", token.resolve(), ca.resolve())
    assert "secret-token-value" not in path.read_text()


def test_init_refuses_a_readable_token_file_a_bad_address_and_nomad_options_without_nomad(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret-token-value\n")
    token.chmod(0o644)
    with pytest.raises(InvalidInput) as info:
        init_fleet(tmp_path / "a", runtime="nomad", nomad_token_file=token)
    assert "readable by others" in info.value.message and "secret-token-value" not in info.value.message
    with pytest.raises(InvalidInput, match="--nomad-addr: 'nomad:4646' is not an http"):
        init_fleet(tmp_path / "b", runtime="nomad", nomad_address="nomad:4646")
    with pytest.raises(InvalidInput, match="are for --runtime nomad"):
        init_fleet(tmp_path / "c", nomad_address="http://127.0.0.1:4646")
    with pytest.raises(InvalidInput, match="does not exist"):
        init_fleet(tmp_path / "d", runtime="nomad", nomad_address="https://n:4646", nomad_ca_file=tmp_path / "no.pem")
    assert not (tmp_path / "a" / "fleet.toml").exists() and not (tmp_path / "b").exists()


def test_the_init_command_takes_the_nomad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from foundry_fleet.cli.main import main

    monkeypatch.setattr(sys, "argv", ["foundry-fleet", "init", "--root", str(tmp_path / "f"), "--runtime", "nomad",
                                      "--nomad-addr", "http://10.0.0.5:4646"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None), capsys.readouterr().err
    config = load_config(tmp_path / "f" / "fleet.toml")
    assert config.runtime.driver == "nomad" and config.nomad.address == "http://10.0.0.5:4646"
