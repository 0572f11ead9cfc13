"""The podman runtime's Node.js images, built one way for the driver (wiring/runtimes.py), the `runtime
image` command and `status`: NodeImages over the fleet's podman API socket, its builds under the fleet's
run directory (so a daemon and a command share one build lock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from foundry_fleet.config import FleetConfig
from foundry_fleet.services.runtime_images import ReleaseImage, image_states, unknown_states
from foundry_fleet.services.views import ReleaseView

if TYPE_CHECKING:
    from foundry_fleet.runtime.podman.images import NodeImages

STATUS_TIMEOUT = 3.0  # `status` waits this long for podman's answer at most


def podman_run_dir(config: FleetConfig) -> Path:
    """The podman runtime's own directory: its API socket, containers.conf and image builds."""
    return config.paths.run / "podman"


def make_node_images(config: FleetConfig, http: httpx.AsyncClient) -> NodeImages:
    from foundry_fleet.runtime.podman.images import NodeImages
    from foundry_fleet.services.node_binaries import resolve_node

    return NodeImages(
        http,
        node=lambda generation: resolve_node(config.node, generation),
        configured=config.podman.image_for,
        work_dir=podman_run_dir(config) / "images",
        pull_timeout=config.podman.pull_timeout,
    )


@asynccontextmanager
async def node_images(config: FleetConfig) -> AsyncIterator[NodeImages]:
    """The images over the fleet's podman service; a service started here for the purpose is stopped after
    (a running daemon's, or a configured one, is used and left alone)."""
    from foundry_fleet.runtime.podman.service import PodmanService

    service = PodmanService(podman_run_dir(config), config.podman.socket)
    api = await service.ensure()
    started_here = service.restarts > 0
    try:
        yield make_node_images(config, api.http)
    finally:
        if started_here:
            await service.stop()
        else:
            await api.aclose()


async def release_image_states(config: FleetConfig, releases: list[ReleaseView]) -> list[ReleaseImage]:
    """For `status`: each cached generation's image, present or not, when podman's API answers; it is
    never started for a read."""
    from foundry_fleet.runtime.podman.api import PodmanApi
    from foundry_fleet.runtime.podman.service import SOCKET_NAME

    if not releases:
        return []
    socket = config.podman.socket or podman_run_dir(config) / SOCKET_NAME
    api = PodmanApi(socket, timeout=STATUS_TIMEOUT)
    try:
        if not await api.ping():
            return unknown_states(releases, f"podman's API at {socket} does not answer (the daemon starts it)")
        try:
            return await image_states(make_node_images(config, api.http), releases)
        except httpx.HTTPError as e:  # the service went away half-way: a read says so, never fails
            return unknown_states(releases, f"podman's API at {socket} stopped answering ({e.__class__.__name__})")
    finally:
        await api.aclose()
