"""The Nomad jobs the fleet submits, built as data (pure: no I/O).

Go field names and integer-nanosecond durations, as Nomad's HTTP API takes them (hashicorp/nomad
api/jobs.go, tasks.go, services.go). What each job is and why:

- one `service` job per instance (`fvtt-<name>`): a parameterized job can only be batch, and a job
  per tenant gives each its own lifecycle (a change to one never re-evaluates the others). Pinned
  by a constraint to the node whose storage holds its data; its data, install tree and the fleet's
  shared assets arrive as host volumes; its port is dynamic and published as a Nomad-native service
  whose tags carry what the edge needs (service registrations have no meta);
- `fvtt-provision`, a parameterized `sysbatch` job: one dispatch runs once on every eligible node,
  and only the node named in the dispatch meta lays the instance out (a dispatch cannot pin a node);
- optionally the edge's Caddy as a service job, configured by the fleet through its admin API.
"""

from __future__ import annotations

import math
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry_fleet.domain.crash_policy import CrashPolicy
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.foundry_options import SERVER_FLAGS, data_path_flag
from foundry_fleet.domain.instance_layout import SHARED_MOUNT
from foundry_fleet.runtime.base import TaskSpec

PROVISION_JOB_ID = "fvtt-provision"
CADDY_JOB_ID = "fvtt-caddy"
SERVICE_NAME = "fvtt-instance"
GROUP = "foundry"
TASK = "foundry"
PROVISION_TASK = "provision"
CADDY_TASK = "caddy"
PORT_LABEL = "http"
TASK_DRIVERS = ("podman", "exec")

INSTALL_MOUNT = "/foundry"
DATA_MOUNT = "/data"
SHARED_DESTINATION = posixpath.join(DATA_MOUNT, str(SHARED_MOUNT))
STATUS_PATH = "/-/api/status"
PAYLOAD_FILE = "payload.json"
PROVISION_META = ("instance", "release", "node")

NODE_ID_TARGET = "${node.unique.id}"
DEFAULT_MEMORY_MB = 300  # Nomad's own default when no limit is configured
NOBODY = 65534  # the podman task's user when the spec names none (as the podman runtime does)
SECOND = 1_000_000_000
# Nomad refuses a restart interval below this (structs.RestartPolicyMinInterval).
MIN_RESTART_INTERVAL = 5.0

META_FLEET = "fvtt_fleet"
META_INSTANCE = "fvtt_instance"
META_RELEASE = "fvtt_release"
META_GENERATION = "fvtt_generation"
META_ENTRY = "fvtt_entry"


@dataclass(frozen=True)
class JobSettings:
    fleet_id: str
    namespace: str = "default"
    datacenters: tuple[str, ...] = ("*",)
    task_driver: str = "podman"
    mhz_per_core: int = 2000
    crash_policy: CrashPolicy = CrashPolicy()
    stop_timeout: float = 10.0
    python: str = sys.executable
    config_path: Path = Path("/etc/foundry-fleet/fleet.toml")
    check_interval: float = 15.0  # the service's health check ([supervisor] health_interval)
    check_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.task_driver not in TASK_DRIVERS:
            raise InvalidInput(f"unknown Nomad task driver {self.task_driver!r}",
                               f"set [nomad] task_driver to one of: {', '.join(TASK_DRIVERS)}")
        if self.mhz_per_core < 1:
            raise InvalidInput(f"[nomad] mhz_per_core must be at least 1, not {self.mhz_per_core}")
        if not self.datacenters:
            raise InvalidInput("[nomad] datacenters is empty", 'use ["*"] for every datacenter')
        _check_id(self.fleet_id, "fleet id")


def instance_job_id(name: str) -> str:
    return _check_id(f"fvtt-{name}", "job id")


def host_volume_name(instance: str, kind: str) -> str:
    """The dynamic host volume holding an instance's `data` or `install` tree on its node."""
    if kind not in ("data", "install"):
        raise ValueError(f"an instance's host volume is data or install, not {kind!r}")
    return _check_id(f"fvtt-{instance}-{kind}", "host volume name")


def shared_volume_name(fleet_id: str) -> str:
    """The host volume of the fleet's shared assets (read-only in every instance)."""
    return _check_id(f"fvtt-{fleet_id}-shared", "host volume name")


def nanoseconds(seconds: float) -> int:
    return int(round(seconds * SECOND))


def _check_id(value: str, what: str) -> str:
    # Nomad refuses an ID with a space; a null or any other control character would not survive the API.
    if not value or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in value):
        raise InvalidInput(f"{what} {value!r} cannot name a Nomad object (empty, or a space or control character)",
                           "use letters, digits and dashes")
    return value


# ---------------------------------------------------------------- policies


def restart_policy(policy: CrashPolicy, mode: str = "fail") -> dict[str, Any]:
    """Nomad's restart policy for the fleet's crash policy: restarted after `backoff_initial` (Nomad's
    delay is fixed, it does not double) until the crash loop, then `mode` (fail: the allocation fails).

    The fleet gives up at a crash that finds `max_crashes` others within the window, i.e. it restarts
    `max_crashes` times; Nomad's Attempts is the number of restarts allowed within Interval (the next
    failure fails the task), so Attempts = max_crashes and Interval = the window.
    """
    interval = max(policy.window, MIN_RESTART_INTERVAL)
    delay = policy.backoff_initial
    attempts = policy.max_crashes
    # Nomad refuses attempts x delay > interval ("can't restart N times in an interval of ..."). More
    # restarts than interval/delay cannot happen inside the interval anyway, so fewer attempts give
    # the same behaviour and a job Nomad accepts.
    if attempts * delay > interval:
        attempts = int(math.floor(interval / delay))
        if attempts == 0 and mode == "delay":  # Nomad refuses 0 attempts in delay mode as ambiguous
            attempts, delay = 1, interval
    return {"Attempts": attempts, "Interval": nanoseconds(interval), "Delay": nanoseconds(delay), "Mode": mode}


NO_RESCHEDULE: dict[str, Any] = {"Attempts": 0, "Unlimited": False}


# ---------------------------------------------------------------- the instance


def _entry(spec: TaskSpec) -> str:
    entry = posixpath.normpath(spec.release.entry)
    if entry.startswith("/") or entry == ".." or entry.startswith("../"):
        raise InvalidInput(f"the release entry {spec.release.entry!r} is not inside the release",
                           "re-add the release: its entry script must be a relative path inside it")
    return entry


def _server_args(entry: str) -> list[str]:
    return [posixpath.join(INSTALL_MOUNT, entry), f"--port=${{NOMAD_PORT_{PORT_LABEL}}}", data_path_flag(DATA_MOUNT),
            *SERVER_FLAGS]


def _podman_user(spec: TaskSpec) -> str:
    if spec.uid is None:
        return f"{NOBODY}:{NOBODY}"
    return f"{spec.uid}:{spec.gid if spec.gid is not None else spec.uid}"


def exec_user(uid: int) -> str:
    """The system user the provision job creates for an instance's uid: Nomad's exec driver looks users
    up by name."""
    return f"fvtt-u{uid}"


def _task_config(spec: TaskSpec, settings: JobSettings, image: str | None, node_binary: str | None,
                 args: list[str]) -> tuple[dict[str, Any], str | None]:
    """The driver's own Config (lowercase keys of nomad-driver-podman, or exec's) and the task's User."""
    if settings.task_driver == "podman":
        if not image:
            raise InvalidInput(f"no image for {spec.name}'s Node.js", "the podman task driver needs an image: "
                               "see [podman] image_node<major> or `foundry-fleet runtime image`")
        config = {"image": image, "command": "node", "args": args, "ports": [PORT_LABEL],
                  "user": _podman_user(spec), "init": True, "cap_drop": ["all"], "readonly_rootfs": True}
        return config, None
    if not node_binary:
        raise InvalidInput(f"no node binary for {spec.name}'s Foundry {spec.release.generation}",
                           "set [node] binaries for that major (the exec task driver runs it on the node)")
    return {"command": node_binary, "args": args}, (exec_user(spec.uid) if spec.uid is not None else None)


def _resources(spec: TaskSpec, settings: JobSettings) -> dict[str, int]:
    memory = spec.limits.memory_mb if spec.limits.memory_mb is not None else DEFAULT_MEMORY_MB
    cpu_percent = spec.limits.cpu_percent if spec.limits.cpu_percent is not None else 100
    return {"CPU": max(1, cpu_percent * settings.mhz_per_core // 100), "MemoryMB": memory}


def _volumes(spec: TaskSpec, settings: JobSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    volumes = {
        "data": {"Name": "data", "Type": "host", "Source": host_volume_name(spec.name, "data"), "ReadOnly": False},
        "install": {"Name": "install", "Type": "host", "Source": host_volume_name(spec.name, "install"),
                    "ReadOnly": True},
    }
    mounts = [
        {"Volume": "data", "Destination": DATA_MOUNT, "ReadOnly": False},
        {"Volume": "install", "Destination": INSTALL_MOUNT, "ReadOnly": True},
    ]
    if spec.shared_dir is not None:
        volumes["shared"] = {"Name": "shared", "Type": "host", "Source": shared_volume_name(settings.fleet_id),
                             "ReadOnly": True}
        mounts.append({"Volume": "shared", "Destination": SHARED_DESTINATION, "ReadOnly": True})
    return volumes, mounts


def service_tags(fleet_id: str, instance: str, hosts: tuple[str, ...]) -> list[str]:
    """What the edge reads from a registration (Nomad's service registrations carry no meta)."""
    return [f"fleet={fleet_id}", f"instance={instance}", *(f"host={h}" for h in hosts)]


def instance_job(spec: TaskSpec, settings: JobSettings, *, node_id: str | None, image: str | None,
                 node_binary: str | None) -> dict:
    """The service job running `spec`; pinned to `node_id` (None: anywhere, e.g. a job shown before its
    instance has a node)."""
    job_id = instance_job_id(spec.name)
    entry = _entry(spec)
    args = _server_args(entry)
    config, user = _task_config(spec, settings, image, node_binary, args)
    volumes, mounts = _volumes(spec, settings)
    hosts = spec.hosts
    task: dict[str, Any] = {
        "Name": TASK,
        "Driver": settings.task_driver,
        "Config": config,
        "Env": dict(spec.env),
        "Meta": {META_GENERATION: str(spec.release.generation), META_ENTRY: entry},
        "VolumeMounts": mounts,
        "Resources": _resources(spec, settings),
        "KillTimeout": nanoseconds(settings.stop_timeout),
        "LogConfig": {"MaxFiles": spec.log_keep, "MaxFileSizeMB": max(1, spec.log_max_bytes // (1024 * 1024))},
    }
    if user is not None:
        task["User"] = user
    group: dict[str, Any] = {
        "Name": GROUP,
        "Count": 1,
        "Networks": [{"Mode": "host", "DynamicPorts": [{"Label": PORT_LABEL}]}],
        "Services": [{
            "Name": SERVICE_NAME,
            "Provider": "nomad",
            "PortLabel": PORT_LABEL,
            "Tags": service_tags(settings.fleet_id, spec.name, hosts),
            "Checks": [{"Name": "foundry-status", "Type": "http", "Path": STATUS_PATH,
                        "Interval": nanoseconds(settings.check_interval),
                        "Timeout": nanoseconds(settings.check_timeout)}],
        }],
        "Volumes": volumes,
        "RestartPolicy": restart_policy(settings.crash_policy),
        # A tenant's data is on one node: never place it elsewhere. A lost node's allocation is still
        # replaced by Nomad, and the constraint keeps the replacement on that node.
        "ReschedulePolicy": dict(NO_RESCHEDULE),
        "Tasks": [task],
    }
    job: dict[str, Any] = {
        "ID": job_id,
        "Name": job_id,
        "Type": "service",
        "Namespace": settings.namespace,
        "Datacenters": list(settings.datacenters),
        "Meta": {META_FLEET: settings.fleet_id, META_INSTANCE: spec.name, META_RELEASE: spec.release.version},
        **({"Constraints": [node_constraint(node_id)]} if node_id is not None else {}),
        "TaskGroups": [group],
    }
    return job


def node_constraint(node_id: str) -> dict[str, str]:
    return {"LTarget": NODE_ID_TARGET, "Operand": "=", "RTarget": node_id}


# ---------------------------------------------------------------- provisioning


def provision_job(settings: JobSettings) -> dict:
    """The parameterized job whose dispatches lay an instance out on the node named in their meta."""
    task = {
        "Name": PROVISION_TASK,
        # A host task: it creates ZFS datasets and directories, chowns them and adds the exec user.
        "Driver": "raw_exec",
        "Config": {"command": settings.python,
                   "args": ["-m", "foundry_fleet", "nomad", "provision", "--config", str(settings.config_path),
                            "--node-id", NODE_ID_TARGET, "--payload", f"${{NOMAD_TASK_DIR}}/{PAYLOAD_FILE}"]},
        "DispatchPayload": {"File": PAYLOAD_FILE},
        "Resources": {"CPU": 500, "MemoryMB": 512},
        "KillTimeout": nanoseconds(settings.stop_timeout),
    }
    group = {
        "Name": PROVISION_TASK,
        "Count": 1,
        # A failed layout is reported to the fleet with the task's own stderr; the fleet dispatches again.
        "RestartPolicy": {"Attempts": 0, "Interval": nanoseconds(5 * 60), "Delay": nanoseconds(15), "Mode": "fail"},
        "Tasks": [task],
    }
    return {
        "ID": PROVISION_JOB_ID,
        "Name": PROVISION_JOB_ID,
        "Type": "sysbatch",
        "Namespace": settings.namespace,
        "Datacenters": list(settings.datacenters),
        "Meta": {META_FLEET: settings.fleet_id},
        "ParameterizedJob": {"Payload": "required", "MetaRequired": list(PROVISION_META)},
        "TaskGroups": [group],
    }


# ---------------------------------------------------------------- the edge


def caddy_job(settings: JobSettings, *, caddy_binary: str, admin_address: str, http_port: int, https_port: int,
              node_id: str | None = None, data_dir: Path | None = None) -> dict:
    """Caddy as a service job ([edge] on_nomad). No template: the fleet configures it through its admin
    API at `admin_address` exactly as it does a Caddy of its own, because a template re-render means a
    reload, and every reload that lacks the fleet's stream_close_delay closes every player's websocket.
    `caddy run --resume` starts from the config the fleet last pushed (Caddy saves it), so a restarted
    Caddy serves at once. `node_id` pins it where the fleet reaches its admin address; `data_dir` keeps
    its certificates (and its local CA) across restarts."""
    for label, port in (("http", http_port), ("https", https_port)):
        if not 1 <= port <= 65535:
            raise InvalidInput(f"the edge's {label} port {port} is not a TCP port", "use 1-65535")
    if not admin_address or any(c.isspace() for c in admin_address):
        raise InvalidInput(f"Caddy's admin address {admin_address!r} is not an address", "e.g. 127.0.0.1:2019")
    env = {"CADDY_ADMIN": admin_address}  # the admin endpoint until the fleet's first config names it
    if data_dir is not None:
        env |= {"HOME": str(data_dir), "XDG_DATA_HOME": str(data_dir / "data"),
                "XDG_CONFIG_HOME": str(data_dir / "config")}
    task = {
        "Name": CADDY_TASK,
        # Caddy binds the edge's ports on the host and is the fleet's own binary: a host task.
        "Driver": "raw_exec",
        "Config": {"command": caddy_binary, "args": ["run", "--resume"]},
        "Env": env,
        "Resources": {"CPU": 500, "MemoryMB": 512},
        "KillTimeout": nanoseconds(settings.stop_timeout),
    }
    group = {
        "Name": CADDY_TASK,
        "Count": 1,
        "Networks": [{"Mode": "host", "ReservedPorts": [{"Label": "http", "Value": http_port},
                                                        {"Label": "https", "Value": https_port}]}],
        # The edge must come back: keep restarting it (mode delay) rather than give up.
        "RestartPolicy": restart_policy(settings.crash_policy, mode="delay"),
        "Tasks": [task],
    }
    job: dict[str, Any] = {
        "ID": CADDY_JOB_ID,
        "Name": CADDY_JOB_ID,
        "Type": "service",
        "Namespace": settings.namespace,
        "Datacenters": list(settings.datacenters),
        "Meta": {META_FLEET: settings.fleet_id},
        **({"Constraints": [node_constraint(node_id)]} if node_id is not None else {}),
        "TaskGroups": [group],
    }
    return job
