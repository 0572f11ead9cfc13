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
    path.write_text(path.read_text().replace('driver = "local"', 'driver = "fake"'))  # init writes [runtime]
    assert isinstance(make_runtime(load_config(path)), FakeRuntime)
    assert set(RUNTIMES) == {"local", "podman", "fake", "nomad"}


def test_the_podman_runtime_is_built_for_the_fleet_from_its_section(tmp_path: Path) -> None:
    from foundry_fleet.runtime.podman.driver import PodmanRuntime
    from foundry_fleet.wiring.runtimes import fleet_id

    path = init_fleet(tmp_path / "f")
    path.write_text(path.read_text().replace('driver = "local"', 'driver = "podman"'))
    config = load_config(path)
    runtime = make_runtime(config)
    assert isinstance(runtime, PodmanRuntime) and runtime.fleet_id == fleet_id(config)
    assert runtime.service.own and runtime.service.socket_path == config.paths.run / "podman" / "podman.sock"
    assert runtime.network is not None and runtime.network.name == f"foundry-fleet-{fleet_id(config)}"
    assert runtime.log_dir_of is not None and runtime.log_dir_of("alice") == config.paths.instance_logs("alice")
    path.write_text(path.read_text() + '\n[podman]\nsocket = "/run/elsewhere.sock"\n')
    other = make_runtime(load_config(path))
    assert isinstance(other, PodmanRuntime) and not other.service.own
    assert other.service.socket_path == Path("/run/elsewhere.sock")


def test_the_nomad_runtime_is_built_from_the_nomad_section(tmp_path: Path) -> None:
    from foundry_fleet.runtime.nomad.driver import NomadRuntime
    from foundry_fleet.wiring.runtimes import fleet_id

    path = init_fleet(tmp_path / "f", runtime="nomad")
    text = path.read_text().replace('task_driver = "podman"', 'task_driver = "exec"')
    path.write_text(text)
    config = load_config(path)
    runtime = make_runtime(config)
    assert isinstance(runtime, NomadRuntime)
    assert (runtime.settings.address, runtime.settings.namespace, runtime.jobs.fleet_id) == (
        "http://127.0.0.1:4646", "default", fleet_id(config))
    assert (runtime.jobs.task_driver, runtime.jobs.config_path, runtime.wait) == ("exec", path.resolve(), 300.0)
    assert runtime.capabilities.multi_node and not runtime.capabilities.needs_image
    assert runtime.port_is_free(1) and runtime.host_processes() == set()
    assert runtime.node_path(config.root / "instances" / "a") == config.root / "instances" / "a"
    path.write_text(path.read_text().replace("[nomad]\n", '[nomad]\nnode_root = "/srv/fleet"\n', 1))
    moved = make_runtime(load_config(path))
    assert isinstance(moved, NomadRuntime)
    assert moved.node_path(config.root / "instances" / "a") == Path("/srv/fleet/instances/a")
    assert moved.jobs.config_path == Path("/srv/fleet/fleet.toml")


def test_an_unknown_runtime_driver_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    path = init_fleet(tmp_path / "f")
    path.write_text(path.read_text().replace('driver = "local"', 'driver = "docker"'))
    with pytest.raises(InvalidInput) as info:
        load_config(path)
    assert "runtime.driver" in info.value.message and "unknown runtime driver 'docker'" in info.value.message
    assert "known: fake, local, nomad, podman" in info.value.message


def test_every_registered_driver_has_every_verb_of_the_port_in_its_kind() -> None:
    """No type checker runs here: this keeps each driver's verbs async (or sync) as the port says."""
    import inspect

    from foundry_fleet.runtime.base import Runtime

    verbs = {name: member for name, member in vars(Runtime).items()
             if callable(member) and not name.startswith("_")}
    assert {"open", "close", "fingerprint", "start_task", "wait_task", "stop_task", "destroy_task", "inspect_task",
            "recover_task", "task_stats", "address", "watch_address", "nodes", "data_node", "port_is_free", "logs",
            "forget_unknown", "forget_instance", "host_processes", "take_events"} == set(verbs)

    def kind(fn: object) -> str:
        if inspect.isasyncgenfunction(fn):
            return "async iterator"
        return "async" if inspect.iscoroutinefunction(fn) else "sync"

    port_kinds = {name: kind(fn) for name, fn in verbs.items()}
    port_kinds["logs"] = "async iterator"  # declared as a plain def returning AsyncIterator in the port
    from foundry_fleet.runtime.nomad.driver import NomadRuntime
    from foundry_fleet.runtime.podman.driver import PodmanRuntime

    for driver in (LocalRuntime, FakeRuntime, PodmanRuntime, NomadRuntime):
        got = {name: kind(getattr(driver, name)) for name in verbs}
        assert got == port_kinds, driver
        params = {name: list(inspect.signature(getattr(driver, name)).parameters) for name in verbs}
        assert params == {name: list(inspect.signature(fn).parameters) for name, fn in verbs.items()}, driver
        assert driver.capabilities.multi_node is (driver is NomadRuntime) and isinstance(driver.name, str)


def test_the_runtime_decides_which_ports_new_instances_get(tmp_path: Path) -> None:
    """Provisioning asks the runtime, not the host: a port the runtime calls taken is skipped."""
    from foundry_fleet.config import load_config
    from foundry_fleet.services.init import init_fleet
    from foundry_fleet.wiring.services import open_services

    config = load_config(init_fleet(tmp_path / "fleet"))
    low = config.instances.port_range[0]

    class Busy:
        """A runtime that holds the range's first two ports elsewhere (another node, another task)."""

        def port_is_free(self, port: int) -> bool:
            return port not in (low, low + 1)

    services = open_services(config, actor="test", runtime=Busy())  # type: ignore[arg-type]
    assert services.provisioning.port_is_free(low) is False
    assert services.provisioning.port_is_free(low + 2) is True


def test_a_single_host_runtime_has_one_node_this_host_with_its_available_memory(tmp_path: Path) -> None:
    import asyncio
    import socket

    from foundry_fleet.runtime.this_host import available_memory_mb

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16314824 kB\nMemFree:         1048576 kB\nMemAvailable:    8388608 kB\n")
    assert available_memory_mb(meminfo) == 8192
    assert available_memory_mb(tmp_path / "missing") is None
    (node,) = asyncio.run(FakeRuntime().nodes())
    assert (node.name, node.address, node.healthy, node.status, node.instances) == (
        socket.gethostname(), "127.0.0.1", True, "ready", 0)
    assert isinstance(node.free_memory_mb, int) and node.free_memory_mb > 0
