"""Node.js images for the podman runtime against a real Podman API service (started here, with the fleet's
containers.conf settings) and the host's real node.

Every image made here is under a repository prefix unique to this run and is removed at the end; no
other image is touched. A module fixture builds once with a configured image that cannot be pulled
(`registry.invalid` never resolves), which is both the fallback case and the image the other tests reuse.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from foundry_fleet.domain.errors import ExternalFailure, Unsupported
from foundry_fleet.runtime.podman.images import NODE_DIGEST_LABEL, NodeImage, NodeImages, describe
from tests.support.foundry_standin import free_port, standin_source_dir, wait_for_status, write_options
from tests.support.harness import wait_until

NODE = shutil.which("node")
PODMAN = shutil.which("podman")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="needs node on PATH"),
    pytest.mark.skipif(PODMAN is None, reason="needs podman (apt podman runc catatonit)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (rootful podman)"),
    pytest.mark.timeout(180),
]

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
TENANT_UID = 200124  # an instance uid as the fleet gives one, owning the data
UNPULLABLE = "registry.invalid/foundry-fleet-test/node:20"  # .invalid never resolves: the pull fails at once

T = TypeVar("T")


@dataclass(frozen=True)
class Podman:
    socket: Path
    env: dict[str, str]  # CONTAINERS_CONF for the podman CLI, as the service has it
    prefix: str  # localhost/foundry-fleet-test-<random>: every image of this run is under it
    work_dir: Path

    def api(self, use: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        async def go() -> T:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
            async with httpx.AsyncClient(transport=transport, base_url="http://d/v4.0.0/libpod", timeout=30) as http:
                return await use(http)

        return asyncio.run(go())

    def images(self, http: httpx.AsyncClient, node: str | None = NODE, configured: str | None = None,
               repository: str | None = None) -> NodeImages:
        return NodeImages(
            http,
            node=lambda generation: node or "",
            configured=lambda major: configured,
            work_dir=self.work_dir,
            pull_timeout=10,
            repository=repository or f"{self.prefix}/node",
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PODMAN or "podman", *args], env=self.env, capture_output=True, text=True, timeout=60)

    def image_id(self, ref: str) -> str:
        out = self.run("image", "inspect", "--format", "{{.Id}}", ref)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def inspect(self, ref: str) -> dict:
        out = self.run("image", "inspect", ref)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)[0]

    def ours(self) -> list[str]:
        out = self.run("images", "--format", "{{.Repository}}:{{.Tag}}")
        return sorted(line for line in out.stdout.split() if line.startswith(self.prefix + "/"))


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    base = tmp_path_factory.mktemp("podman-images")
    conf = base / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    socket = base / "podman.sock"
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    service = subprocess.Popen(
        [PODMAN or "podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=env, stdout=subprocess.DEVNULL, stderr=(base / "service.log").open("w"),
    )
    p = Podman(socket, env, f"localhost/foundry-fleet-test-{secrets.token_hex(4)}", base / "work")
    try:
        wait_until(lambda: socket.exists() and _ping(socket), 15, "the podman API service to answer")
        yield p
    finally:
        for ref in p.ours():
            p.run("rmi", "--force", ref)
        service.terminate()
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _ping(socket: Path) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=1) as http:
            return http.get("http://d/v4.0.0/libpod/_ping").text == "OK"
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Built:
    image: NodeImage
    phases: list[tuple[str, float | None]]
    seconds: float
    absent_before: bool


@pytest.fixture(scope="module")
def built(podman: Podman) -> Built:
    """The first ensure of this run: the configured image cannot be pulled, so it builds."""
    phases: list[tuple[str, float | None]] = []

    async def go(http: httpx.AsyncClient) -> Built:
        images = podman.images(http, configured=UNPULLABLE)
        absent = not await images.present(13)
        started = time.monotonic()
        image = await images.resolve(13, lambda phase, fraction: phases.append((phase, fraction)))
        return Built(image, phases, time.monotonic() - started, absent)

    return podman.api(go)


def node_version(node: str) -> str:
    return subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def test_an_unpullable_configured_image_falls_back_to_a_build_that_runs_node(podman: Podman, built: Built) -> None:
    assert built.absent_before
    assert built.image.source == "built"
    assert built.image.ref.startswith(f"{podman.prefix}/node:{node_version(NODE or '').lstrip('v')}-")
    assert f"{UNPULLABLE} could not be pulled" in built.image.note
    assert "registry.invalid" in describe(built.image)
    out = podman.run("run", "--rm", built.image.ref, "node", "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == node_version(NODE or "")
    labels = podman.inspect(built.image.ref)["Labels"]
    assert labels[NODE_DIGEST_LABEL] == _sha256(NODE or "")


def test_the_image_runs_read_only_as_nobody_with_certificates_and_no_shell(podman: Podman, built: Built) -> None:
    program = (
        "const fs = require('fs');"
        "console.log(JSON.stringify({uid: process.getuid(), user: require('os').userInfo().username,"
        " ca: fs.statSync('/etc/ssl/certs/ca-certificates.crt').size,"
        " tls: require('tls').rootCertificates.length}))"
    )
    out = podman.run("run", "--rm", "--read-only", "--user", "65534:65534", "--cap-drop", "all", "--init",
                     "--security-opt", "no-new-privileges", built.image.ref, "node", "-e", program)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["uid"] == 65534 and seen["user"] == "nobody"
    assert seen["ca"] == Path("/etc/ssl/certs/ca-certificates.crt").stat().st_size
    assert seen["tls"] > 0
    libc_dir = next(Path(line.split("=>")[1].split("(")[0].strip()).parent for line in subprocess.run(
        ["ldd", NODE or ""], capture_output=True, text=True, check=True).stdout.splitlines() if "libc.so" in line)
    extras = [str(libc_dir / name) for name in ("libresolv.so.2", "librt.so.1") if (libc_dir / name).exists()]
    check = f"for (const p of {json.dumps(extras)}) require('fs').accessSync(p)"  # what native addons link
    out = podman.run("run", "--rm", built.image.ref, "node", "-e", check)
    assert out.returncode == 0, out.stderr
    shell = podman.run("run", "--rm", built.image.ref, "sh", "-c", "true")
    assert shell.returncode != 0  # tenant code gets node, not a shell


def test_the_standin_server_runs_from_the_image_as_an_instance_would(podman: Podman, built: Built) -> None:
    """Read-only root, the release read-only at /foundry, the data read-write at /data, an unprivileged uid."""
    data = Path(tempfile.mkdtemp(prefix="podman-images-data-"))
    name = f"{podman.prefix.split('/')[-1]}-standin"
    try:
        write_options(data)
        data.chmod(0o755)
        for path in [data, *data.rglob("*")]:
            os.chown(path, TENANT_UID, TENANT_UID)
        port = free_port()
        out = podman.run(
            "run", "-d", "--name", name, "--read-only", "--user", f"{TENANT_UID}:{TENANT_UID}", "--cap-drop", "all",
            "--init", "--security-opt", "no-new-privileges", "-p", f"127.0.0.1:{port}:{port}",
            "-v", f"{standin_source_dir()}:/foundry:ro", "-v", f"{data}:/data", built.image.ref,
            "node", "/foundry/main.js", f"--port={port}", "--dataPath=/data",
        )
        assert out.returncode == 0, out.stderr
        status = wait_for_status(port, timeout=20)
        assert status["version"] == "dev"
        logs = podman.run("logs", name).stdout
        assert f"node {node_version(NODE or '')}" in logs
    finally:
        podman.run("rm", "--force", "--time", "2", name)
        shutil.rmtree(data, ignore_errors=True)


def test_progress_is_reported_in_order(built: Built) -> None:
    names = [phase.split(" ")[0] for phase, _ in built.phases]
    collapsed = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
    assert collapsed == ["checking", "pulling", "collecting", "packing", "importing", "tagged"]
    assert built.phases[1][0] == f"pulling {UNPULLABLE}"
    packing = [fraction for phase, fraction in built.phases if phase.startswith("packing")]
    assert packing == sorted(packing) and packing[-1] == 1.0 and len(packing) > 10
    assert built.phases[-1] == (f"tagged {built.image.ref}", 1.0)


def test_a_second_ensure_builds_nothing(podman: Podman, built: Built) -> None:
    phases: list[str] = []
    before = podman.image_id(built.image.ref)

    async def go(http: httpx.AsyncClient) -> tuple[NodeImage, float, str]:
        images = podman.images(http)
        started = time.monotonic()
        image = await images.resolve(13, lambda phase, fraction: phases.append(phase))
        took = time.monotonic() - started
        return image, took, await images.ensure(13)

    image, took, ref = podman.api(go)
    assert image.source == "cached" and image.ref == ref == built.image.ref
    assert phases == ["checking"]
    assert took < 2.0, f"a cached image took {took:.2f} s to find (the build took {built.seconds:.2f} s)"
    assert podman.image_id(ref) == before


def test_a_failed_pull_is_remembered_and_the_built_image_used(podman: Podman, built: Built) -> None:
    phases: list[str] = []

    async def go(http: httpx.AsyncClient) -> tuple[NodeImage, NodeImage, NodeImage | None]:
        images = podman.images(http, configured=UNPULLABLE)
        first = await images.resolve(13, lambda phase, fraction: phases.append(phase))
        second = await images.resolve(13, lambda phase, fraction: phases.append(phase))
        return first, second, await images.lookup(13)

    first, second, found = podman.api(go)
    assert first.source == second.source == "cached" and first.ref == built.image.ref
    assert phases == ["checking", f"pulling {UNPULLABLE}", "checking"]  # tried once, then remembered
    assert "could not be pulled" in second.note and "no such host" in second.note
    assert found is not None and found.ref == built.image.ref


def test_a_configured_image_present_locally_is_used(podman: Podman, built: Built) -> None:
    configured = f"{podman.prefix}/configured:20"
    repo, tag = configured.rsplit(":", 1)
    assert podman.run("tag", built.image.ref, configured).returncode == 0
    phases: list[str] = []

    async def go(http: httpx.AsyncClient) -> tuple[NodeImage, NodeImage | None, bool]:
        images = podman.images(http, configured=configured, repository=f"{podman.prefix}/never-built")
        image = await images.resolve(13, lambda phase, fraction: phases.append(phase))
        return image, await images.lookup(13), await images.present(13)

    try:
        image, found, present = podman.api(go)
    finally:
        podman.run("untag", built.image.ref, configured)
    assert image.source == "configured" and image.ref == configured and image.note == ""
    assert found == image and present
    assert phases == ["checking"]
    assert not any(ref.startswith(f"{podman.prefix}/never-built") for ref in podman.ours())


def test_a_changed_node_binary_is_built_once_even_when_asked_concurrently(
        podman: Podman, built: Built, tmp_path: Path) -> None:
    changed = tmp_path / "node"
    shutil.copy2(NODE or "", changed)
    with changed.open("ab") as f:
        f.write(b"\n")  # same version, other content: an upgrade that kept the version number
    assert node_version(str(changed)) == node_version(NODE or "")
    changed_digest = _sha256(str(changed))
    phases: list[str] = []

    async def go(http: httpx.AsyncClient) -> list[NodeImage]:
        one, other = podman.images(http, node=str(changed)), podman.images(http, node=str(changed))
        report = lambda phase, fraction: phases.append(phase)  # noqa: E731
        return list(await asyncio.gather(one.resolve(13, report), one.resolve(13, report), other.resolve(13, report)))

    try:
        results = podman.api(go)
    finally:
        changed.unlink()  # ~100 MB: not kept among pytest's retained temporary directories
    assert sorted(r.source for r in results) == ["built", "cached", "cached"]
    assert len({r.ref for r in results}) == 1
    ref = results[0].ref
    assert ref != built.image.ref
    assert phases.count("collecting libraries") == 1
    assert podman.inspect(ref)["Labels"][NODE_DIGEST_LABEL] == changed_digest
    assert podman.image_id(ref) != podman.image_id(built.image.ref)
    out = podman.run("run", "--rm", ref, "node", "--version")
    podman.run("rmi", ref)
    assert out.returncode == 0 and out.stdout.strip() == node_version(NODE or "")


def test_a_removed_image_is_rebuilt_with_the_same_layer(podman: Podman, built: Built) -> None:
    """The tar is reproducible: the same node and libraries give the same layer digest."""
    copy = f"{podman.prefix}/copy:1"
    assert podman.run("tag", built.image.ref, copy).returncode == 0
    layers = podman.inspect(built.image.ref)["RootFS"]["Layers"]
    assert podman.run("untag", built.image.ref, built.image.ref).returncode == 0

    async def go(http: httpx.AsyncClient) -> tuple[bool, NodeImage]:
        images = podman.images(http)
        return await images.present(13), await images.resolve(13)

    try:
        present_before, image = podman.api(go)
    finally:
        podman.run("rmi", copy)
    assert not present_before
    assert image.source == "built" and image.ref == built.image.ref
    assert podman.inspect(image.ref)["RootFS"]["Layers"] == layers


def test_a_missing_node_says_what_to_set(podman: Podman) -> None:
    async def go(http: httpx.AsyncClient) -> None:
        await podman.images(http, node="/nonexistent/node").ensure(13)

    with pytest.raises(Unsupported) as raised:
        podman.api(go)
    assert "/nonexistent/node" in raised.value.message
    assert "[node] binaries" in (raised.value.hint or "")


def _sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_silent_podman_api_is_a_clear_error(podman: Podman, tmp_path: Path) -> None:
    async def go() -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(tmp_path / "absent.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://d/v4.0.0/libpod") as http:
            await podman.images(http).ensure(13)

    with pytest.raises(ExternalFailure) as raised:
        asyncio.run(go())
    assert "Podman's API did not answer" in raised.value.message
    assert "podman system service" in (raised.value.hint or "")
