"""The Node.js image an instance's container runs: Node only, never the Foundry release (that is mounted).

API (what the driver, the CLI and status use):

    images = NodeImages(http, node, configured, work_dir, pull_timeout, repository="localhost/foundry-fleet/node")
    ref: str = await images.ensure(generation, progress)      # the reference to run; builds or pulls if needed
    image: NodeImage = await images.resolve(generation, progress)  # the same, with where it came from and why
    found: NodeImage | None = await images.lookup(generation)  # what ensure would use now, without pull/build
    ok: bool = await images.present(generation)                # lookup(...) is not None
    text: str = describe(image)                                # one line for status and the CLI

- `http` is the libpod API client (base_url ".../v4.0.0/libpod", over the unix socket transport);
  `node(generation)` is the host's node binary for a Foundry generation (services.node_binaries.resolve_node,
  passed in: runtime/ imports no service) and may raise a FleetError saying what to set;
  `configured(major)` is the image configured for a Node major (`[podman] image_node<major>`) or None.
- Which image: the configured image for the host node's major when it is present locally; else it is
  pulled (bounded by `pull_timeout`; a failed pull is remembered for `pull_retry_after` seconds so
  that every start does not wait on an unreachable registry); else, or when none is configured, an image
  built offline from the host's node binary, the libraries `ldd` names and a minimal /etc, imported
  through the API and tagged `<repository>:<node version>-<first 12 hex of the binary's sha256>`,
  labelled with the binary's full digest. The digest is in the tag so that two different node builds
  of one version (an apt upgrade that kept the version, two generations' binaries) each keep their own
  image instead of taking the tag from each other; an unchanged binary reuses its image (idempotent).
- `progress(phase, fraction)` hears the phases in order: "checking", "pulling <ref>", "collecting
  libraries", "packing <n>/<total> MB", "importing <n>/<total> MB", "tagged <ref>"; fraction is 0..1
  where known, else None.
- Two callers ensuring the same Node major at once build once: an asyncio lock per major inside a
  process, a file lock under `work_dir` across processes; after the locks the image is looked up again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

DEFAULT_REPOSITORY = "localhost/foundry-fleet/node"
NODE_DIGEST_LABEL = "foundry-fleet.node-sha256"
NODE_VERSION_LABEL = "foundry-fleet.node-version"

Progress = Callable[[str, float | None], None]
Source = Literal["configured", "pulled", "built", "cached"]


@dataclass(frozen=True)
class NodeImage:
    """The image to run for a generation and where it came from.

    source: "configured" (the configured image, already present), "pulled" (the configured image, pulled
    now), "built" (built now from the host's node), "cached" (built earlier from the same node binary).
    note says why the configured image was not used, when one is configured and it was not.
    """

    ref: str
    source: Source
    node_version: str  # "20.20.2", of the host binary (the configured image's own node may differ)
    node_path: str  # the host binary the version and, for built images, the image come from
    note: str = ""


def describe(image: NodeImage) -> str:
    """One line for `status` and the CLI."""
    raise NotImplementedError


class NodeImages:
    def __init__(
        self,
        http: httpx.AsyncClient,
        node: Callable[[int], str],
        configured: Callable[[int], str | None],
        work_dir: Path,
        pull_timeout: float,
        repository: str = DEFAULT_REPOSITORY,
        pull_retry_after: float = 600.0,
    ) -> None:
        raise NotImplementedError

    async def ensure(self, generation: int, progress: Progress | None = None) -> str:
        return (await self.resolve(generation, progress)).ref

    async def resolve(self, generation: int, progress: Progress | None = None) -> NodeImage:
        raise NotImplementedError

    async def lookup(self, generation: int) -> NodeImage | None:
        raise NotImplementedError

    async def present(self, generation: int) -> bool:
        return await self.lookup(generation) is not None
