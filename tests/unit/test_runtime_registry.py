"""[runtime] driver picks the runtime from one registry; an unknown one is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.runtime.fake import FakeRuntime
from foundry_fleet.runtime.local import LocalRuntime
from foundry_fleet.services.init import init_fleet
from foundry_fleet.wiring.runtimes import RUNTIMES, make_runtime


def test_the_local_runtime_is_the_default_and_fake_is_one_line_away(tmp_path: Path) -> None:
    path = init_fleet(tmp_path / "f")
    config = load_config(path)
    assert config.runtime.driver == "local"
    local = make_runtime(config)
    assert isinstance(local, LocalRuntime) and local.port_range == config.instances.port_range
    assert local.log_dir_of is not None and local.log_dir_of("alice") == config.paths.instance_logs("alice")
    path.write_text(path.read_text() + '\n[runtime]\ndriver = "fake"\n')
    assert isinstance(make_runtime(load_config(path)), FakeRuntime)
    assert set(RUNTIMES) == {"local", "fake"}


def test_an_unknown_runtime_driver_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    path = init_fleet(tmp_path / "f")
    path.write_text(path.read_text() + '\n[runtime]\ndriver = "podman"\n')
    with pytest.raises(InvalidInput) as info:
        load_config(path)
    assert "runtime.driver" in info.value.message and "unknown runtime driver 'podman'" in info.value.message
    assert "known: fake, local" in info.value.message
