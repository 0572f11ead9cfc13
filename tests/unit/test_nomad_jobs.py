"""The jobs the fleet submits to Nomad, as data: Go field names, integer nanoseconds, and the design's
choices (pinned to the data's node, host volumes, a native service with the edge's tags, the crash
policy as Nomad's restart policy, the task driver's own config)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from foundry_fleet.domain.crash_policy import CrashPolicy
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, TaskSpec
from foundry_fleet.runtime.nomad import jobs
from foundry_fleet.runtime.nomad.jobs import JobSettings, caddy_job, instance_job, provision_job

SECOND = 1_000_000_000


def spec(**changes: object) -> TaskSpec:
    base: dict[str, object] = {
        "name": "alice",
        "release": ReleaseToRun(version="13.345", generation=13, install_dir=Path("/fleet/instances/alice/install"),
                                entry="resources/app/main.js"),
        "data_dir": Path("/fleet/instances/alice/data"), "shared_dir": Path("/fleet/shared"),
        "log_dir": Path("/fleet/logs/alice"), "port": 30001, "uid": 200001, "gid": 200001,
        "env": {"TZ": "UTC"}, "limits": ResourceLimits(memory_mb=1024, cpu_percent=50, pids=512),
    }
    return TaskSpec(**{**base, **changes})  # type: ignore[arg-type]


SETTINGS = JobSettings(fleet_id="f00dcafe", namespace="games", datacenters=("dc1", "dc2"), mhz_per_core=2400,
                       crash_policy=CrashPolicy(backoff_initial=2.0, max_crashes=5, window=600.0), stop_timeout=20.0)


def podman_job(**changes: object) -> dict:
    return instance_job(spec(**changes), SETTINGS, node_id="node-a-id", image="localhost/foundry-fleet/node:20",
                        node_binary=None)


def test_an_instance_is_one_service_job_with_one_group_and_one_task() -> None:
    job = podman_job()
    assert (job["ID"], job["Name"], job["Type"]) == ("fvtt-alice", "fvtt-alice", "service")
    assert job["Namespace"] == "games" and job["Datacenters"] == ["dc1", "dc2"]
    assert job["Meta"] == {"fvtt_fleet": "f00dcafe", "fvtt_instance": "alice", "fvtt_release": "13.345"}
    assert job["Constraints"] == [{"LTarget": "${node.unique.id}", "Operand": "=", "RTarget": "node-a-id"}]
    [group] = job["TaskGroups"]
    assert (group["Name"], group["Count"]) == ("foundry", 1)
    assert group["Networks"] == [{"Mode": "host", "DynamicPorts": [{"Label": "http"}]}]
    [task] = group["Tasks"]
    assert task["Name"] == "foundry" and task["Driver"] == "podman"
    assert task["Meta"] == {"fvtt_generation": "13", "fvtt_entry": "resources/app/main.js"}
    assert task["Env"] == {"TZ": "UTC"}


def test_without_a_node_the_job_is_not_pinned() -> None:
    job = instance_job(spec(), SETTINGS, node_id=None, image="img", node_binary=None)
    assert "Constraints" not in job


def test_the_service_is_nomads_own_with_the_tags_the_edge_reads() -> None:
    [service] = podman_job()["TaskGroups"][0]["Services"]
    assert (service["Name"], service["Provider"], service["PortLabel"]) == ("fvtt-instance", "nomad", "http")
    assert service["Tags"][:2] == ["fleet=f00dcafe", "instance=alice"]
    assert jobs.service_tags("f00dcafe", "alice", ("alice.example.org", "dnd.example.org")) == [
        "fleet=f00dcafe", "instance=alice", "host=alice.example.org", "host=dnd.example.org"]
    [check] = service["Checks"]
    assert check["Type"] == "http" and check["Path"] == "/-/api/status"
    assert check["Interval"] == 15 * SECOND and check["Timeout"] == 2 * SECOND


def test_data_install_and_shared_are_host_volumes_mounted_where_the_server_expects_them() -> None:
    group = podman_job()["TaskGroups"][0]
    assert group["Volumes"] == {
        "data": {"Name": "data", "Type": "host", "Source": "fvtt-alice-data", "ReadOnly": False},
        "install": {"Name": "install", "Type": "host", "Source": "fvtt-alice-install", "ReadOnly": True},
        "shared": {"Name": "shared", "Type": "host", "Source": "fvtt-f00dcafe-shared", "ReadOnly": True},
    }
    assert group["Tasks"][0]["VolumeMounts"] == [
        {"Volume": "data", "Destination": "/data", "ReadOnly": False},
        {"Volume": "install", "Destination": "/foundry", "ReadOnly": True},
        {"Volume": "shared", "Destination": "/data/Data/shared", "ReadOnly": True},
    ]
    no_shared = podman_job(shared_dir=None)["TaskGroups"][0]
    assert set(no_shared["Volumes"]) == {"data", "install"} and len(no_shared["Tasks"][0]["VolumeMounts"]) == 2
    assert jobs.host_volume_name("alice", "data") == "fvtt-alice-data"
    with pytest.raises(ValueError):
        jobs.host_volume_name("alice", "shared")


def test_durations_are_integer_nanoseconds_everywhere() -> None:
    def durations(node: object, key: str = "") -> list[tuple[str, object]]:
        if isinstance(node, dict):
            return [d for k, v in node.items() for d in durations(v, k)]
        if isinstance(node, list):
            return [d for v in node for d in durations(v, key)]
        return [(key, node)] if key in ("Interval", "Delay", "Timeout", "KillTimeout") else []

    found = durations(podman_job()) + durations(provision_job(SETTINGS))
    assert len(found) >= 8
    assert all(type(v) is int and v >= SECOND for _, v in found)
    assert podman_job()["TaskGroups"][0]["Tasks"][0]["KillTimeout"] == 20 * SECOND


def test_the_restart_policy_is_the_fleets_crash_policy() -> None:
    group = podman_job()["TaskGroups"][0]
    # Five restarts within ten minutes, two seconds apart; the next crash fails the allocation.
    assert group["RestartPolicy"] == {"Attempts": 5, "Interval": 600 * SECOND, "Delay": 2 * SECOND, "Mode": "fail"}
    assert group["ReschedulePolicy"] == {"Attempts": 0, "Unlimited": False}


def test_a_restart_policy_nomad_would_refuse_is_clamped_to_the_restarts_that_fit() -> None:
    # 5 x 60 s > 120 s: Nomad refuses attempts x delay > interval; only two restarts fit anyway.
    policy = jobs.restart_policy(CrashPolicy(backoff_initial=60.0, max_crashes=5, window=120.0))
    assert policy == {"Attempts": 2, "Interval": 120 * SECOND, "Delay": 60 * SECOND, "Mode": "fail"}
    assert policy["Attempts"] * policy["Delay"] <= policy["Interval"]
    # Nomad's shortest interval is 5 s; in delay mode zero attempts is refused as ambiguous.
    short = jobs.restart_policy(CrashPolicy(backoff_initial=30.0, max_crashes=3, window=1.0), mode="delay")
    assert short == {"Attempts": 1, "Interval": 5 * SECOND, "Delay": 5 * SECOND, "Mode": "delay"}


def test_resources_come_from_the_limits() -> None:
    task = podman_job()["TaskGroups"][0]["Tasks"][0]
    assert task["Resources"] == {"CPU": 1200, "MemoryMB": 1024}  # 50 % of a 2400 MHz core
    unlimited = podman_job(limits=ResourceLimits())["TaskGroups"][0]["Tasks"][0]
    assert unlimited["Resources"] == {"CPU": 2400, "MemoryMB": 300}  # Nomad's own memory default


def test_the_podman_task_config_has_only_the_drivers_keys() -> None:
    task = podman_job()["TaskGroups"][0]["Tasks"][0]
    assert task["Config"] == {
        "image": "localhost/foundry-fleet/node:20",
        "command": "node",
        "args": ["/foundry/resources/app/main.js", "--port=${NOMAD_PORT_http}", "--dataPath=/data",
                 "--noupdate", "--noupnp", "--noipdiscovery"],
        "ports": ["http"],
        "user": "200001:200001",
        "init": True,
        "cap_drop": ["all"],
        "readonly_rootfs": True,
    }
    assert "User" not in task
    with pytest.raises(InvalidInput, match="image"):
        instance_job(spec(), SETTINGS, node_id="n", image=None, node_binary="/usr/bin/node")


def test_the_exec_task_runs_the_hosts_node_as_the_instances_named_user() -> None:
    settings = JobSettings(fleet_id="f00dcafe", task_driver="exec")
    task = instance_job(spec(), settings, node_id="n", image=None, node_binary="/opt/node-22/bin/node")[
        "TaskGroups"][0]["Tasks"][0]
    assert task["Driver"] == "exec" and task["User"] == "fvtt-u200001"
    assert task["Config"] == {"command": "/opt/node-22/bin/node",
                              "args": ["/foundry/resources/app/main.js", "--port=${NOMAD_PORT_http}",
                                       "--dataPath=/data", "--noupdate", "--noupnp", "--noipdiscovery"]}
    with pytest.raises(InvalidInput, match="node binary"):
        instance_job(spec(), settings, node_id="n", image="img", node_binary=None)


def test_bad_names_and_settings_are_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot name a Nomad object"):
        jobs.instance_job_id("has space")
    with pytest.raises(InvalidInput, match="cannot name"):
        jobs.instance_job_id("nul\x00")
    with pytest.raises(InvalidInput, match="unknown Nomad task driver"):
        JobSettings(fleet_id="f", task_driver="docker")
    with pytest.raises(InvalidInput, match="not inside the release"):
        podman_job(release=ReleaseToRun(version="1", generation=13, install_dir=Path("/i"), entry="../x.js"))


def test_the_provision_job_is_a_parameterized_sysbatch_host_task() -> None:
    settings = JobSettings(fleet_id="f00dcafe", config_path=Path("/srv/fleet/fleet.toml"), python="/usr/bin/python3")
    job = provision_job(settings)
    assert (job["ID"], job["Type"]) == ("fvtt-provision", "sysbatch")
    assert job["ParameterizedJob"] == {"Payload": "required", "MetaRequired": ["instance", "release", "node"]}
    [group] = job["TaskGroups"]
    assert group["RestartPolicy"]["Attempts"] == 0 and group["RestartPolicy"]["Mode"] == "fail"
    assert "ReschedulePolicy" not in group  # Nomad refuses one on system-type jobs
    [task] = group["Tasks"]
    assert (task["Name"], task["Driver"]) == ("provision", "raw_exec")
    assert task["DispatchPayload"] == {"File": "payload.json"}
    assert task["Config"] == {"command": "/usr/bin/python3", "args": [
        "-m", "foundry_fleet", "nomad", "provision", "--config", "/srv/fleet/fleet.toml",
        "--node-id", "${node.unique.id}", "--payload", "${NOMAD_TASK_DIR}/payload.json"]}
    assert JobSettings(fleet_id="x").python == sys.executable


def test_the_caddy_job_runs_the_fleets_caddy_on_static_ports_without_a_template() -> None:
    job = caddy_job(SETTINGS, caddy_binary="/opt/fleet/bin/caddy", admin_address="127.0.0.1:2019",
                    http_port=80, https_port=443, node_id="node-a-id", data_dir=Path("/srv/fleet/edge"))
    assert (job["ID"], job["Type"]) == ("fvtt-caddy", "service")
    assert job["Constraints"][0]["RTarget"] == "node-a-id"
    [group] = job["TaskGroups"]
    assert group["Networks"] == [{"Mode": "host", "ReservedPorts": [{"Label": "http", "Value": 80},
                                                                    {"Label": "https", "Value": 443}]}]
    assert group["RestartPolicy"]["Mode"] == "delay"
    [task] = group["Tasks"]
    assert task["Config"] == {"command": "/opt/fleet/bin/caddy", "args": ["run", "--resume"]}
    assert task["Env"]["CADDY_ADMIN"] == "127.0.0.1:2019" and task["Env"]["XDG_DATA_HOME"] == "/srv/fleet/edge/data"
    assert "Templates" not in task
    with pytest.raises(InvalidInput, match="port"):
        caddy_job(SETTINGS, caddy_binary="caddy", admin_address="127.0.0.1:2019", http_port=0, https_port=443)
