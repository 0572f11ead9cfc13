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
- `progress(phase, fraction)` hears the phases in order: "checking", "pulling <ref>" (only when the
  configured image is pulled), then for a build "collecting libraries", "packing <n>/<total> MB" (the
  tar is streamed to podman as it is packed), "importing" (podman storing the layer), "tagged <ref>";
  fraction is 0..1 where known, else None.
- Errors: the node resolver's own FleetError (no node for that generation: set [node] binaries) passes
  through, also from `lookup` and `present`; a build that cannot be done says what was missing
  (Unsupported: ldd, a library) or what failed (ExternalFailure: the podman API), with a hint.
- Two callers ensuring the same Node major at once build once: an asyncio lock per major inside a
  process, a file lock under `work_dir` across processes; after the locks the image is looked up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from foundry_fleet.domain.errors import ExternalFailure, FleetError, Unsupported
from foundry_fleet.runtime.podman.node_rootfs import NodeBinary, collect, inspect_node, pack, total_bytes

DEFAULT_REPOSITORY = "localhost/foundry-fleet/node"
NODE_DIGEST_LABEL = "foundry-fleet.node-sha256"
NODE_VERSION_LABEL = "foundry-fleet.node-version"
IMAGE_PATH = "/usr/local/bin:/usr/bin:/bin"
IMPORT_TIMEOUT = 600.0  # ~100 MB over a local socket takes a few seconds; a stuck service must not hang a start
LOCK_WAIT = 900.0  # longest wait for another process's pull or build of the same Node major

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
    origin = {
        "configured": "configured, present",
        "pulled": "configured, pulled",
        "built": f"built from {image.node_path} (Node.js {image.node_version})",
        "cached": f"built from {image.node_path} (Node.js {image.node_version})",
    }[image.source]
    line = f"{image.ref} ({origin})"
    return f"{line}; {image.note}" if image.note else line


def built_reference(repository: str, binary: NodeBinary) -> str:
    """The tag of the image built from `binary`: its version and the start of its digest."""
    return f"{repository}:{binary.version}-{binary.sha256[:12]}"


@dataclass(frozen=True)
class _PullFailure:
    at: float  # time.monotonic()
    reason: str


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
        self._http = http
        self._node = node
        self._configured = configured
        self._work_dir = Path(work_dir)
        self._digests = self._work_dir / "node-binaries.json"  # version and digest per binary identity
        self._pull_timeout = pull_timeout
        self._repository = repository
        self._pull_retry_after = pull_retry_after
        self._locks: dict[int, asyncio.Lock] = {}
        self._pull_failures: dict[str, _PullFailure] = {}

    async def ensure(self, generation: int, progress: Progress | None = None) -> str:
        """The reference of the image to run for `generation`, pulling or building it when needed."""
        return (await self.resolve(generation, progress)).ref

    async def present(self, generation: int) -> bool:
        """Whether an image for `generation` is there now (no pull, no build)."""
        return await self.lookup(generation) is not None

    async def lookup(self, generation: int) -> NodeImage | None:
        """The image `ensure` would use now without pulling or building, or None."""
        binary = await self._binary(generation)
        configured = self._configured(binary.major)
        if configured and await self._exists(configured):
            return NodeImage(configured, "configured", binary.version, binary.path)
        return await self._cached(binary, self._why_not(configured))

    async def resolve(self, generation: int, progress: Progress | None = None) -> NodeImage:
        """The image to run for `generation` and where it came from; pulls or builds when needed."""
        report = progress or (lambda phase, fraction: None)
        report("checking", None)
        binary = await self._binary(generation)
        configured = self._configured(binary.major)
        if configured and await self._exists(configured):
            return NodeImage(configured, "configured", binary.version, binary.path)
        if not configured or self._recently_failed(configured):
            found = await self._cached(binary, self._why_not(configured))
            if found is not None:
                return found
        async with self._exclusive(binary.major):
            # Another caller may have pulled or built it while this one waited for the locks.
            if configured and await self._exists(configured):
                return NodeImage(configured, "configured", binary.version, binary.path)
            if configured and not self._recently_failed(configured):
                report(f"pulling {configured}", None)
                if await self._pull(configured):
                    return NodeImage(configured, "pulled", binary.version, binary.path)
            found = await self._cached(binary, self._why_not(configured))
            if found is not None:
                return found
            ref = await self._build(binary, report)
            return NodeImage(ref, "built", binary.version, binary.path, self._why_not(configured))

    # -- the host's node ------------------------------------------------------------------------------

    async def _binary(self, generation: int) -> NodeBinary:
        try:
            path = await asyncio.to_thread(self._node, generation)
        except FleetError:
            raise
        except OSError as e:
            raise Unsupported(
                f"no node binary for Foundry {generation}: {e}",
                f'install Node.js and set [node] binaries."{generation}" = "/path/to/node" in fleet.toml',
            ) from None
        return await inspect_node(path, self._digests)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ExternalFailure(f"Podman's API did not answer {method} {path.split('?')[0]}: {e}",
                                  "is `podman system service` running? the fleet starts it when it is not") from e

    # -- what is there ---------------------------------------------------------------------------------

    async def _exists(self, ref: str) -> bool:
        r = await self._request("GET", f"/images/{quote(ref, safe='')}/exists")
        if r.status_code == 204:
            return True
        if r.status_code == 404:
            return False
        raise ExternalFailure(f"podman could not say whether image {ref} exists: {_error_text(r)}")

    async def _cached(self, binary: NodeBinary, note: str) -> NodeImage | None:
        """The image built earlier from this very binary, if it is still there and still labelled so."""
        ref = built_reference(self._repository, binary)
        r = await self._request("GET", f"/images/{quote(ref, safe='')}/json")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise ExternalFailure(f"podman could not inspect image {ref}: {_error_text(r)}")
        labels = (r.json().get("Config") or {}).get("Labels") or r.json().get("Labels") or {}
        if labels.get(NODE_DIGEST_LABEL) != binary.sha256:
            return None  # same tag, other content (a digest-prefix clash or a hand-made tag): rebuild
        return NodeImage(ref, "cached", binary.version, binary.path, note)

    # -- pulling ---------------------------------------------------------------------------------------

    def _recently_failed(self, ref: str) -> bool:
        failure = self._pull_failures.get(ref)
        return failure is not None and time.monotonic() - failure.at < self._pull_retry_after

    def _why_not(self, configured: str | None) -> str:
        if not configured:
            return ""
        failure = self._pull_failures.get(configured)
        if failure is None:
            return f"the configured {configured} is not present"
        return f"the configured {configured} could not be pulled ({failure.reason})"

    async def _pull(self, ref: str) -> bool:
        """Pull `ref` within pull_timeout; a failure is remembered with its reason, not raised."""
        try:
            async with asyncio.timeout(self._pull_timeout):
                reason = await self._pull_stream(ref)
        except TimeoutError:
            reason = f"no answer within pull_timeout = {self._pull_timeout:g} s"
        except httpx.HTTPError as e:
            reason = f"podman API: {e}"
        if reason is None and await self._exists(ref):
            self._pull_failures.pop(ref, None)
            return True
        self._pull_failures[ref] = _PullFailure(time.monotonic(), reason or "podman reported no image")
        return False

    async def _pull_stream(self, ref: str) -> str | None:
        """None when podman reports the image pulled, else its error text."""
        params = {"reference": ref, "policy": "always", "quiet": "true"}
        timeout = httpx.Timeout(self._pull_timeout)
        async with self._http.stream("POST", "/images/pull", params=params, timeout=timeout) as r:
            if r.status_code != 200:
                await r.aread()
                return _error_text(r)
            error = None
            pulled = False
            async for line in r.aiter_lines():
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("error"):
                    error = str(event["error"]).strip()
                if event.get("images") or event.get("id"):
                    pulled = True
            return None if pulled and error is None else (error or "podman reported no image")

    # -- building --------------------------------------------------------------------------------------

    async def _build(self, binary: NodeBinary, report: Progress) -> str:
        ref = built_reference(self._repository, binary)
        report("collecting libraries", None)
        entries = await collect(binary)
        total = total_bytes(entries)
        mb_total = total / 1e6
        last = -1

        def sent(n: int) -> None:
            nonlocal last
            mb = int(n / 1e6)
            if mb != last or n == total:
                last = mb
                report(f"packing {mb}/{mb_total:.0f} MB", n / total)

        params: list[tuple[str, str]] = [
            ("reference", ref),
            ("message", f"Node.js {binary.version} from {binary.path}"),
            ("changes", f"ENV PATH={IMAGE_PATH}"),
            ("changes", f"LABEL {NODE_DIGEST_LABEL}={binary.sha256}"),
            ("changes", f"LABEL {NODE_VERSION_LABEL}={binary.version}"),
            ("changes", 'CMD ["node"]'),
        ]

        async def body() -> AsyncIterator[bytes]:
            async for chunk in pack(entries, sent):
                yield chunk
            report("importing", None)

        r = await self._request(
            "POST", "/images/import", params=params, content=body(),
            headers={"Content-Type": "application/x-tar", "Content-Length": str(total)},
            timeout=httpx.Timeout(IMPORT_TIMEOUT),
        )
        if r.status_code != 200:
            raise ExternalFailure(
                f"podman could not import the node image {ref}: {_error_text(r)}",
                "check the podman service's log; the build is retried on the next start",
            )
        if (await inspect_node(binary.path, self._digests)).sha256 != binary.sha256:
            # Replaced while packed (an upgrade mid-build): the layer may not match its label.
            await self._request("DELETE", f"/images/{quote(ref, safe='')}", params={"force": "true"})
            raise ExternalFailure(f"{binary.path} changed while its image was being built",
                                  "start the instance again: the next start builds from the new binary")
        if await self._cached(binary, "") is None:
            raise ExternalFailure(f"podman imported {ref} but it is not there with its label afterwards")
        report(f"tagged {ref}", 1.0)
        return ref

    # -- one pull or build at a time per Node major ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def _exclusive(self, major: int) -> AsyncIterator[None]:
        lock = self._locks.setdefault(major, asyncio.Lock())
        async with lock:
            self._work_dir.mkdir(parents=True, exist_ok=True)
            path = self._work_dir / f"node{major}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                deadline = time.monotonic() + LOCK_WAIT
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise ExternalFailure(
                                f"another process has held {path} for {LOCK_WAIT:g} s building the Node {major} image",
                                "check for a stuck foundry-fleet process",
                            ) from None
                        await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)  # closing drops the flock


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text.strip()[:300]}"
    if isinstance(body, dict):
        return str(body.get("message") or body.get("cause") or body)[:300]
    return str(body)[:300]
