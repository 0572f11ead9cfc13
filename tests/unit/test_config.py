"""fleet.toml: init writes a loadable, documented file; bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.config import find_config, load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.services.init import init_fleet


def test_init_defaults_to_localhost_with_a_local_ca(tmp_path: Path) -> None:
    path = init_fleet(tmp_path / "f")
    cfg = load_config(path)
    assert cfg.root == (tmp_path / "f").resolve()
    assert cfg.fleet.domain == "localhost"
    assert (cfg.edge.http_port, cfg.edge.https_port, cfg.edge.tls) == (8080, 8443, "internal")
    assert cfg.public_url("gm1") == "https://gm1.localhost:8443/-/"
    assert "# " in path.read_text()  # documented
    assert (cfg.paths.run.stat().st_mode & 0o777) == 0o700


def test_init_with_domain_uses_acme_on_443(tmp_path: Path) -> None:
    cfg = load_config(init_fleet(tmp_path, domain="Games.Example.org"))
    assert (cfg.fleet.domain, cfg.edge.http_port, cfg.edge.https_port, cfg.edge.tls) == ("games.example.org", 80, 443, "acme")
    assert cfg.public_url("gm") == "https://gm.games.example.org/-/"


def test_init_refuses_overwrite_and_bad_input(tmp_path: Path) -> None:
    init_fleet(tmp_path)
    with pytest.raises(Conflict):
        init_fleet(tmp_path)
    init_fleet(tmp_path, force=True, https_port=9443)
    assert load_config(tmp_path / "fleet.toml").edge.https_port == 9443
    with pytest.raises(InvalidInput):
        init_fleet(tmp_path / "x", tls="self-signed")
    with pytest.raises(InvalidInput):
        init_fleet(tmp_path / "y", domain="bad domain")
    with pytest.raises(InvalidInput, match="zfs-base"):
        init_fleet(tmp_path / "z", storage="zfs")
    with pytest.raises(InvalidInput, match="not a ZFS dataset name"):
        init_fleet(tmp_path / "z2", storage="zfs", zfs_base="tank/../etc")


def test_init_takes_the_web_port_and_the_instance_ports_outside_the_ephemeral_range(tmp_path: Path) -> None:
    cfg = load_config(init_fleet(tmp_path / "a", web_port=9099, instance_ports="30100-30199", ephemeral=(32768, 60999)))
    assert (cfg.edge.web_port, cfg.instances.port_range) == (9099, (30100, 30199))
    defaults = load_config(init_fleet(tmp_path / "b"))
    assert (defaults.edge.web_port, defaults.instances.port_range) == (8099, (30000, 30999))
    for given, says in (("30199-30100", "LOW <= HIGH"), ("80-90", "1024-65535"), ("30100", "LOW-HIGH"),
                        ("a-b", "LOW-HIGH"), ("30000-70000", "1024-65535")):
        with pytest.raises(InvalidInput) as refused:
            init_fleet(tmp_path / "c", instance_ports=given)
        assert says in f"{refused.value.message} {refused.value.hint}"
    with pytest.raises(InvalidInput, match="ephemeral ports 32768-60999") as overlapping:
        init_fleet(tmp_path / "d", instance_ports="32000-33000", ephemeral=(32768, 60999))
    assert "below 32768 or above 60999" in (overlapping.value.hint or "")
    assert not (tmp_path / "d" / "fleet.toml").exists()
    with pytest.raises(InvalidInput, match="--web-port"):
        init_fleet(tmp_path / "e", web_port=70000)


def test_storage_section_needs_a_valid_base_for_zfs(tmp_path: Path) -> None:
    path = init_fleet(tmp_path)
    text = path.read_text()
    path.write_text(text.replace('driver = "directory"', 'driver = "zfs"'))
    with pytest.raises(InvalidInput, match=r"\[storage\].*zfs_base"):
        load_config(path)
    path.write_text(text.replace('# zfs_base = "tank/foundry"', 'zfs_base = "tank foundry"'))
    with pytest.raises(InvalidInput, match=r"storage.zfs_base"):
        load_config(path)


def test_destinations_are_checked_where_they_are_written(tmp_path: Path) -> None:
    path = init_fleet(tmp_path)
    base = path.read_text()
    good = '\n[[backups.destinations]]\nname = "usb"\ntarget = "backup/fleet"\nplan = "30d=>1d"\npassword_file = "pw"\n'
    path.write_text(base + good)
    dest = load_config(path).backups.destinations[0]
    assert dest.plan == "30d=>1d" and dest.password_file == (tmp_path / "pw").resolve()
    path.write_text(base + good.replace("30d=>1d", "1d=>30d"))
    with pytest.raises(InvalidInput, match="backups.destinations.0.plan"):
        load_config(path)
    path.write_text(base + good + good)
    with pytest.raises(InvalidInput, match="same name"):
        load_config(path)
    path.write_text(base + good.replace('"usb"', '"USB disk"'))
    with pytest.raises(InvalidInput, match="backups.destinations.0.name"):
        load_config(path)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("http_port = 8080", "http_port = 99999"), "edge.http_port"),
        (('tls = "internal"', 'tls = "plain"'), "edge.tls"),
        (("port_range = [30000, 30999]", "port_range = [30999, 30000]"), "instances"),
        (("memory_mb = 2048", "memory_mb = 1"), "limits.memory_mb"),
        (("[logs]", "[logs]\nsurprise = 1"), "logs.surprise"),
        (('plan = "7d=>1h,30d=>1d,1y=>1w"', 'plan = "1h=>7d"'), "backups.plan"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, edit: tuple[str, str], key: str) -> None:
    path = init_fleet(tmp_path)
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(InvalidInput) as e:
        load_config(path)
    assert f"[{key}" in e.value.message


def test_not_toml(tmp_path: Path) -> None:
    p = tmp_path / "fleet.toml"
    p.write_text("[fleet\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(p)


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FOUNDRY_FLEET_CONFIG", raising=False)
    with pytest.raises(NotFound):
        find_config()
    init_fleet(tmp_path / "fleet-data")
    assert find_config() == Path("fleet-data/fleet.toml")
    (tmp_path / "fleet.toml").write_text("")
    assert find_config() == Path("fleet.toml")
    monkeypatch.setenv("FOUNDRY_FLEET_CONFIG", "/elsewhere.toml")
    assert find_config() == Path("/elsewhere.toml")
    assert find_config("given.toml") == Path("given.toml")


def test_config_option_is_accepted_anywhere() -> None:
    from foundry_fleet.cli.main import hoist_config_option

    assert hoist_config_option(["instance", "list", "--config", "f.toml", "--json"]) == [
        "--config", "f.toml", "instance", "list", "--json"]
    assert hoist_config_option(["status", "--config=f.toml"]) == ["--config=f.toml", "status"]
    assert hoist_config_option(["-c", "f.toml", "status"]) == ["-c", "f.toml", "status"]
    # After `--` everything is an argument, even a word that looks like the option.
    assert hoist_config_option(["instance", "create", "--", "--config"]) == ["instance", "create", "--", "--config"]


FLOAT_KEYS = [
    ("stream_close_delay_hours = 8.0", "edge.stream_close_delay_hours"),
    ("stop_timeout = 10.0", "instances.stop_timeout"),
    ("backoff_initial = 1.0", "supervisor.backoff_initial"),
    ("backoff_max = 60.0", "supervisor.backoff_max"),
    ("crash_loop_minutes = 10.0", "supervisor.crash_loop_minutes"),
    ("stable_after = 60.0", "supervisor.stable_after"),
    ("health_interval = 15.0", "supervisor.health_interval"),
    ("health_timeout = 2.0", "supervisor.health_timeout"),
    ("start_timeout = 120.0", "supervisor.start_timeout"),
    ("session_hours = 12.0", "discord.session_hours"),
    ("sample_interval = 30.0", "panel.sample_interval"),
]


@pytest.mark.parametrize("value", ["inf", "+inf", "nan", "-nan", "1e308", "1e30"])
@pytest.mark.parametrize(("line", "key"), FLOAT_KEYS)
def test_infinite_and_absurd_delays_are_refused_with_their_key(tmp_path: Path, line: str, key: str, value: str) -> None:
    """An infinite (or astronomically long) timeout would stall the fleet, or overflow the timer that
    waits for it (asyncio and time.sleep raise OverflowError on huge values)."""
    path = init_fleet(tmp_path)
    text = path.read_text()
    assert line in text
    path.write_text(text.replace(line, f"{line.split(' = ')[0]} = {value}"))
    with pytest.raises(InvalidInput) as e:
        load_config(path)
    assert f"[{key}]" in e.value.message
    assert "finite" in e.value.message or "less than or equal" in e.value.message


def test_every_float_setting_is_bounded() -> None:
    """A float key added later must be bounded too: every one has an upper bound and refuses inf/nan."""
    from pydantic import BaseModel

    from foundry_fleet.config import FleetConfig

    seen = []
    for section_name, section in FleetConfig.model_fields.items():
        model = section.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        assert model.model_config.get("allow_inf_nan") is False, section_name
        for name, field in model.model_fields.items():
            if field.annotation is float:
                seen.append(f"{section_name}.{name}")
                assert any(getattr(m, "le", None) is not None for m in field.metadata), f"{section_name}.{name}"
    # [podman] and [nomad] are commented out in the template; their floats are checked in
    # test_podman_section_* and test_nomad_config.py.
    assert sorted(seen) == sorted([*(key for _line, key in FLOAT_KEYS), "podman.pull_timeout", "nomad.timeout",
                                   "nomad.wait"])


@pytest.mark.parametrize("value", ["inf", "nan", "1e30"])
def test_podman_section_refuses_an_unbounded_pull_timeout(tmp_path: Path, value: str) -> None:
    path = init_fleet(tmp_path)
    path.write_text(path.read_text() + f"\n[podman]\npull_timeout = {value}\n")
    with pytest.raises(InvalidInput) as e:
        load_config(path)
    assert "[podman.pull_timeout]" in e.value.message


def test_podman_section_images_per_node_major_and_socket_relative_to_the_file(tmp_path: Path) -> None:
    path = init_fleet(tmp_path)
    path.write_text(path.read_text() + '\n[podman]\nimage_node20 = "docker.io/library/node:20-slim"\n'
                                       'socket = "sock/podman.sock"\n')
    config = load_config(path)
    assert config.podman.image_for(20) == "docker.io/library/node:20-slim"
    assert config.podman.image_for(22) is None
    assert config.podman.socket == (tmp_path / "sock" / "podman.sock").resolve()
    assert config.podman.pull_timeout == 60.0


@pytest.mark.parametrize(("line", "says"), [
    ('image_nodeX = "node:20"', "image_node<major>"),
    ('imagenode20 = "node:20"', "image_node<major>"),
    ('image_node20 = "node 20"', "image reference"),
    ("image_node20 = 20", "image reference"),
])
def test_podman_section_refuses_unknown_keys_and_bad_images(tmp_path: Path, line: str, says: str) -> None:
    path = init_fleet(tmp_path)
    path.write_text(path.read_text() + f"\n[podman]\n{line}\n")
    with pytest.raises(InvalidInput) as e:
        load_config(path)
    assert "[podman" in e.value.message and says in e.value.message


@pytest.mark.parametrize("where", ["plan", "destination"])
def test_a_plan_keeping_billions_of_snapshots_names_its_key(tmp_path: Path, where: str) -> None:
    path = init_fleet(tmp_path)
    text = path.read_text()
    if where == "plan":
        path.write_text(text.replace('plan = "7d=>1h,30d=>1d,1y=>1w"', 'plan = "100y=>1s"'))
        key = "backups.plan"
    else:
        path.write_text(text + '\n[[backups.destinations]]\nname = "usb"\ntarget = "b/f"\nplan = "100y=>1s"\n')
        key = "backups.destinations.0.plan"
    with pytest.raises(InvalidInput) as e:
        load_config(path)
    assert f"[{key}]" in e.value.message and "3,155,760,000" in e.value.message and "10,000" in e.value.message
