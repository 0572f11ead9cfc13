"""The TaskSpec -> libpod create body translation (pure): what each container is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, TaskSpec
from foundry_fleet.runtime.podman import container_spec
from foundry_fleet.runtime.podman.container_logs import server_lines


def spec(**fields) -> TaskSpec:
    base = dict(
        name="alice",
        release=ReleaseToRun(version="13.345", generation=13, install_dir=Path("/srv/i/alice/install"),
                             entry="resources/app/main.js"),
        data_dir=Path("/srv/i/alice/data"),
        shared_dir=Path("/srv/shared"),
        log_dir=Path("/srv/logs/alice"),
        port=30007,
        uid=200007,
        gid=200007,
        env={"FOO": "bar"},
        limits=ResourceLimits(memory_mb=1024, cpu_percent=150, pids=256),
        log_max_bytes=4096,
    )
    base.update(fields)
    return TaskSpec(**base)


def body(**fields) -> dict:
    return container_spec.build(spec(**fields), "localhost/foundry-fleet/node:20", "ab12cd34").body


def test_name_labels_hostname_and_the_foundry_command() -> None:
    plan = container_spec.build(spec(), "img:1", "ab12cd34")
    b = plan.body
    assert plan.name == b["name"] == "foundry-fleet-ab12cd34-alice"
    assert b["labels"] == {"foundry-fleet.fleet": "ab12cd34", "foundry-fleet.instance": "alice"}
    assert b["hostname"] == "alice" and b["image"] == "img:1"
    assert b["command"] == ["node", "/foundry/resources/app/main.js", "--port=30007", "--dataPath=/data",
                            "--noupdate", "--noupnp", "--noipdiscovery"]
    assert b["env"] == {"FOO": "bar"}


def test_release_read_only_data_read_write_shared_read_only_under_data() -> None:
    mounts = {m["destination"]: m for m in body()["mounts"]}
    assert mounts["/foundry"]["source"] == "/srv/i/alice/install" and "ro" in mounts["/foundry"]["options"]
    assert mounts["/data"]["source"] == "/srv/i/alice/data" and "rw" in mounts["/data"]["options"]
    shared = mounts["/data/Data/shared"]
    assert shared["source"] == "/srv/shared" and "ro" in shared["options"]
    for m in (mounts["/foundry"], mounts["/data"], shared):
        assert m["type"] == "bind" and {"nosuid", "nodev"} <= set(m["options"])
    assert mounts["/tmp"]["type"] == "tmpfs" and "noexec" in mounts["/tmp"]["options"]
    assert "/data/Data/shared" not in {m["destination"] for m in body(shared_dir=None)["mounts"]}


def test_locked_down_root_fs_capabilities_privileges_and_init() -> None:
    b = body()
    assert b["read_only_filesystem"] is True and b["read_only_tmpfs"] is False
    assert b["cap_drop"] == ["ALL"] and "cap_add" not in b
    assert b["no_new_privileges"] is True
    assert b["init"] is True and b["stop_signal"] == 15
    assert b["restart_policy"] == "no"  # the fleet's supervisor restarts, with its backoff
    assert b["sysctl"]["net.ipv6.conf.all.disable_ipv6"] == "1"  # no link-local way around the firewall


def test_the_user_is_the_specs_else_the_datas_owner_else_nobody_never_root() -> None:
    assert body()["user"] == "200007:200007"
    assert body(gid=300)["user"] == "200007:300"
    plain = spec(uid=None, gid=None)
    assert container_spec.build(plain, "i", "f", data_owner=(1001, 1002)).body["user"] == "1001:1002"
    assert container_spec.build(plain, "i", "f", data_owner=(0, 0)).body["user"] == "65534:65534"
    assert container_spec.build(plain, "i", "f").body["user"] == "65534:65534"


def test_limits_become_cgroup_limits_and_absent_ones_are_left_out() -> None:
    limits = body()["resource_limits"]
    assert limits["memory"] == {"limit": 1024 * 1024 * 1024, "swap": 1024 * 1024 * 1024}
    assert limits["cpu"] == {"quota": 150_000, "period": 100_000}
    assert limits["pids"] == {"limit": 256}
    assert body(limits=ResourceLimits())["resource_limits"] == {}


def test_the_port_is_published_on_loopback_only_and_the_log_is_capped_in_the_log_dir() -> None:
    b = body()
    assert b["portmappings"] == [{"host_ip": "127.0.0.1", "host_port": 30007, "container_port": 30007,
                                  "protocol": "tcp"}]
    assert b["log_configuration"] == {"driver": "k8s-file", "path": "/srv/logs/alice/foundry.log", "size": 4096}


def test_the_fleet_network_when_given() -> None:
    assert "Networks" not in body()
    with_net = container_spec.build(spec(), "i", "ab12cd34", network="foundry-fleet-ab12cd34").body
    assert with_net["Networks"] == {"foundry-fleet-ab12cd34": {}} and with_net["netns"] == {"nsmode": "bridge"}


@pytest.mark.parametrize("entry", ["../evil.js", "/etc/x.js", "a/../../b.js"])
def test_an_entry_outside_the_release_is_refused(entry: str) -> None:
    release = ReleaseToRun(version="1", generation=13, install_dir=Path("/r"), entry=entry)
    with pytest.raises(ValueError, match="not inside the release"):
        container_spec.build(spec(release=release), "i", "f")


@pytest.mark.parametrize(("fleet", "name"), [("ab/cd", "alice"), ("ab", "al ice"), ("", "alice")])
def test_names_that_cannot_name_a_container_are_refused(fleet: str, name: str) -> None:
    with pytest.raises(ValueError, match="cannot name a container"):
        container_spec.build(spec(name=name), "i", fleet)


def test_conmon_log_lines_lose_their_prefix_and_partial_lines_join() -> None:
    raw = [
        "2026-11-29T23:55:44.190546885+00:00 stdout F listening on 31999",
        "2026-11-29T23:55:44.2+00:00 stderr P first half ",
        "2026-11-29T23:55:44.3+00:00 stderr F second half",
        "2026-11-29T23:55:44.4+00:00 stdout F ",
        "not a conmon line",
    ]
    assert list(server_lines(raw)) == ["listening on 31999", "first half second half", "", "not a conmon line"]
