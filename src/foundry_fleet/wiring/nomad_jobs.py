"""The Nomad jobs of this fleet, built from its configuration: what the nomad runtime submits,
`foundry-fleet nomad render` shows and deploy/nomad/ keeps.

The settings come from fleet.toml exactly as the nomad runtime builds them, so what is printed is what
the fleet submits. An instance's job is built from the fleet's records (its release, data, uid, limits)
through the supervisor's own task spec; the node it is pinned to is the one its recorded task runs on,
or a marked placeholder before the instance was ever placed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.runtime.nomad import hcl
from foundry_fleet.runtime.nomad.jobs import (
    CADDY_JOB_ID, PROVISION_JOB_ID, JobSettings, caddy_job, instance_job, provision_job,
)

if TYPE_CHECKING:
    from foundry_fleet.config import FleetConfig
    from foundry_fleet.wiring.services import FleetServices

FORMATS = ("hcl", "json", "both")
NODE_PLACEHOLDER = "<node id: chosen when the instance is first placed>"
CADDY_NODE_PLACEHOLDER = "<node id: the Nomad node on the fleet's own host>"
CADDY_ADMIN_SOCKET = "caddy-admin.sock"  # under the fleet's run/: the edge's admin socket either way
DEPLOY_FILES = {PROVISION_JOB_ID: "fvtt-provision.nomad.hcl", CADDY_JOB_ID: "caddy.nomad.hcl"}

# The settings the files in deploy/nomad/ are rendered with: a fleet installed under /opt/foundry-fleet
# with its root at /srv/foundry-fleet. `foundry-fleet nomad render` prints them with a fleet's own.
EXAMPLE_ROOT = Path("/srv/foundry-fleet")
EXAMPLE_SETTINGS = JobSettings(fleet_id="0123abcd", python="/opt/foundry-fleet/bin/python",
                               config_path=EXAMPLE_ROOT / "fleet.toml")
EXAMPLE_CADDY = {"caddy_binary": "/opt/foundry-fleet/bin/caddy",
                 "admin_address": f"unix/{EXAMPLE_ROOT / 'run' / CADDY_ADMIN_SOCKET}",
                 "http_port": 80, "https_port": 443, "data_dir": EXAMPLE_ROOT / "edge"}


@dataclass(frozen=True)
class RenderedJob:
    job: dict[str, Any]
    note: str  # what a reader should know (placeholders, example settings), shown atop the HCL


def job_settings(config: FleetConfig, config_path: Path) -> JobSettings:
    """The job settings of this fleet; `config_path` is its fleet.toml as the nodes read it."""
    from foundry_fleet.wiring.runtimes import fleet_id

    sup = config.supervisor
    return JobSettings(
        fleet_id=fleet_id(config),
        namespace=config.nomad.namespace,
        datacenters=tuple(config.nomad.datacenters),
        task_driver=config.nomad.task_driver,
        mhz_per_core=config.nomad.mhz_per_core,
        crash_policy=sup.crash_policy(),
        stop_timeout=config.instances.stop_timeout,
        python=sys.executable,
        config_path=node_path(config, config_path),
        check_interval=sup.health_interval,
        check_timeout=sup.health_timeout,
    )


def node_path(config: FleetConfig, path: Path) -> Path:
    """`path` as the nodes that use it see it: under a home's root, as that home's nodes see the root
    (its node_root); under the fleet root, as [nomad] node_root (default: the same root); elsewhere,
    the same path on every node."""
    path = path.resolve()
    for home in config.nomad.homes:
        root = Path(home.root).resolve()
        if path.is_relative_to(root):
            return Path(home.node_root or home.root) / path.relative_to(root)
    if config.nomad.node_root is None or not path.is_relative_to(config.root):
        return path
    return config.nomad.node_root / path.relative_to(config.root)


def node_homes(config: FleetConfig) -> dict[str, str]:
    """Nomad node name -> the home it keeps instances' data in ([[nomad.homes]]); nodes in none share
    the fleet's own home."""
    return {node: home.name for home in config.nomad.homes for node in home.nodes}


def caddy_arguments(config: FleetConfig) -> dict[str, Any]:
    """caddy_job's arguments for this fleet: its Caddy binary, the edge's ports, its admin socket and its
    certificate store (the same as when the fleet runs Caddy itself, so nothing is issued twice)."""
    from foundry_fleet.edge.process import find_caddy

    return {"caddy_binary": find_caddy(config.edge.caddy_binary),
            "admin_address": f"unix/{config.paths.run / CADDY_ADMIN_SOCKET}",
            "http_port": config.edge.http_port, "https_port": config.edge.https_port,
            "data_dir": config.root / "edge"}


def caddy_job_for(config: FleetConfig, node_id: str, config_path: Path | None = None) -> dict[str, Any]:
    """The Caddy job of this fleet pinned to `node_id` (the Nomad node on the fleet's own host, where its
    admin socket is): what the edge submits with [edge] on_nomad, and what `nomad render` prints."""
    from foundry_fleet.config_file import CONFIG_NAME

    settings = job_settings(config, config_path or config.root / CONFIG_NAME)
    return caddy_job(settings, node_id=node_id, **caddy_arguments(config))


def fleet_jobs(config: FleetConfig, config_path: Path) -> list[RenderedJob]:
    """The jobs the fleet submits whatever its instances: provisioning, and Caddy with [edge] on_nomad."""
    settings = job_settings(config, config_path)
    found = [RenderedJob(provision_job(settings), "")]
    if config.edge.on_nomad:
        found.append(RenderedJob(caddy_job_for(config, CADDY_NODE_PLACEHOLDER, config_path),
                                 "The node constraint is a placeholder: the fleet pins Caddy to the Nomad node "
                                 "on its own host when it submits the job."))
    return found


def instance_job_for(services: FleetServices, config_path: Path, name: str) -> RenderedJob:
    """The job of instance `name`, from the fleet's records."""
    from foundry_fleet.services.supervision_records import SupervisionRecords
    from foundry_fleet.services.supervisor import SupervisionSettings, build_task_spec

    config = services.config
    settings = job_settings(config, config_path)
    # Its own hostname too, as the daemon's records give it: the service's host= tags carry it.
    records = SupervisionRecords(services.sessions, services.storage, own_host=config.host_for)
    spec = build_task_spec(SupervisionSettings.from_config(config), records, name)
    spec = _as_on_node(config, spec)
    image = node_binary = None
    if settings.task_driver == "podman":
        image = asyncio.run(_podman_image(config, spec.release.generation))
    else:
        from foundry_fleet.services.node_binaries import resolve_node

        node_binary = resolve_node(config.node, spec.release.generation)
    node_id = _recorded_node(services, name)
    job = instance_job(spec, settings, node_id=node_id or NODE_PLACEHOLDER, image=image, node_binary=node_binary)
    note = "" if node_id else f"The node constraint is a placeholder: {name} has not been placed on a node yet."
    return RenderedJob(job, note)


def _as_on_node(config: FleetConfig, spec: Any) -> Any:
    """The spec's paths as the nodes see them (they only name host volumes today, but stay truthful)."""
    from dataclasses import replace

    if config.nomad.node_root is None and not config.nomad.homes:
        return spec
    return replace(spec, data_dir=node_path(config, spec.data_dir),
                   shared_dir=node_path(config, spec.shared_dir) if spec.shared_dir else None)


def _recorded_node(services: FleetServices, name: str) -> str | None:
    """The Nomad node the instance's recorded task runs on, if the nomad runtime recorded one."""
    from sqlalchemy import select

    from foundry_fleet.store.models import Instance

    with services.sessions() as s:
        task = s.scalar(select(Instance.task).where(Instance.name == name))
    state = task.get("state") if isinstance(task, dict) else None
    node = state.get("node_id") if isinstance(state, dict) else None
    return node if isinstance(node, str) and node else None


async def _podman_image(config: FleetConfig, generation: int) -> str:
    """The image the podman task runs for `generation`: the configured one for the node's major, else the
    one the fleet builds from the host's node binary (its tag names the binary's version and digest)."""
    from foundry_fleet.runtime.podman.images import DEFAULT_REPOSITORY, built_reference
    from foundry_fleet.runtime.podman.node_rootfs import inspect_node
    from foundry_fleet.services.node_binaries import resolve_node
    from foundry_fleet.wiring.podman_images import podman_run_dir

    binary = await inspect_node(resolve_node(config.node, generation),
                                podman_run_dir(config) / "images" / "node-binaries.json")
    return config.podman.image_for(binary.major) or built_reference(DEFAULT_REPOSITORY, binary)


# ---------------------------------------------------------------- output


def render(jobs: list[RenderedJob], fmt: str) -> str:
    """HCL for reading, JSON ({"Job": ...}, as `nomad job run -json` and the API take it), or both."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    parts = []
    if fmt in ("hcl", "both"):
        parts.extend(hcl.render_job(r.job, r.note or None) for r in jobs)
    if fmt in ("json", "both"):
        bodies = [{"Job": r.job} for r in jobs]
        parts.append(json.dumps(bodies[0] if len(bodies) == 1 else bodies, indent=2) + "\n")
    return "\n".join(parts)


_DEPLOY_HEADER = """\
{title}

{about}

Generated from foundry_fleet/runtime/nomad/jobs.py by `foundry-fleet nomad render --write-deploy DIR`
(a test keeps it current), with example settings: fleet id {fleet_id}, fleet root {root},
foundry-fleet installed in /opt/foundry-fleet, namespace "default", every datacenter. The fleet
submits this job itself with its own settings; `foundry-fleet nomad render` prints them.
"""

_ABOUT = {
    PROVISION_JOB_ID: (
        "fvtt-provision: lays out one instance (storage, release install tree, exec user) on a node.",
        "Dispatched by the fleet with meta instance, release and node and a JSON payload; a sysbatch child\n"
        "runs on every eligible node and only the one named in meta `node` acts. Needs raw_exec enabled\n"
        "on the clients (it creates datasets, directories and users)."),
    CADDY_JOB_ID: (
        "fvtt-caddy: the fleet's edge as a Nomad service job ([edge] on_nomad = true).",
        "No template: the fleet configures Caddy through its admin API (the unix socket below) as it\n"
        "does its own Caddy, keeping stream_close_delay on every change, so no player's websocket is\n"
        "closed by a reload. `caddy run --resume` starts with the last configuration the fleet pushed."),
}


def render_deploy_files() -> dict[str, str]:
    """deploy/nomad/'s files: file name -> text."""
    files = {}
    for job_id, job in ((PROVISION_JOB_ID, provision_job(EXAMPLE_SETTINGS)),
                        (CADDY_JOB_ID, caddy_job(EXAMPLE_SETTINGS, **EXAMPLE_CADDY))):
        title, about = _ABOUT[job_id]
        header = _DEPLOY_HEADER.format(title=title, fleet_id=EXAMPLE_SETTINGS.fleet_id, root=EXAMPLE_ROOT,
                                       about=about)
        files[DEPLOY_FILES[job_id]] = hcl.render_job(job, header)
    return files


def write_deploy_files(directory: Path) -> list[Path]:
    from foundry_fleet.files.atomic import write_atomic

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_deploy_files().items():
        write_atomic(directory / name, text, 0o644)
        written.append(directory / name)
    return written
