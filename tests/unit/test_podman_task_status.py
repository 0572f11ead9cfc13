"""The podman runtime's inspect_task names the server's process, the one the container's init forks.

The window this is about (Podman has started the init, the init has not forked the server yet) lasts
microseconds in a real container and cannot be held open from outside; tests/drivers/test_runtime_podman.py
checks the same with real Podman on the path it takes. Here the inspect document comes from a stand-in
of libpod's API (httpx's MockTransport) naming a pid, and the processes behind that pid are real ones,
standing in for catatonit and node, so the window can be made as long as the test needs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.base import TaskHandle
from foundry_fleet.runtime.podman.api import PodmanApi
from foundry_fleet.runtime.podman.driver import PodmanRuntime

HANDLE = TaskHandle("podman", "carol", 0.0, {"container": "c1", "port": 30001})


def runtime_seeing(pid: int, init: bool) -> PodmanRuntime:
    """A runtime whose API says container c1 runs with `pid` as its process, an init's or the server's."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/containers/c1/json"), request.url
        return httpx.Response(200, json={"Id": "c1", "State": {"Running": True, "Pid": pid},
                                         "HostConfig": {"Init": init}})

    api = PodmanApi(Path("/nonexistent.sock"), transport=httpx.MockTransport(handler))
    return PodmanRuntime("f1", SimpleNamespace(api=api), lambda api: None)  # type: ignore[arg-type]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()
            p.wait()


def python(code: str, started: list[subprocess.Popen]) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code])
    started.append(p)
    return p


def test_asked_before_the_init_has_forked_the_server_it_names_the_server_not_the_init(processes) -> None:
    """Podman answers a start once the container's process runs; catatonit forks node a moment later,
    which on a busy host is after the supervisor has asked for the pid it records."""
    init = python("import subprocess, time; time.sleep(0.5); subprocess.run(['sleep', '30'])", processes)
    assert procfs.children(init.pid) == []
    status = asyncio.run(runtime_seeing(init.pid, init=True).inspect_task(HANDLE))
    assert status.running and status.pid is not None and status.pid != init.pid
    assert procfs.cmdline(status.pid)[0] == "sleep" and procfs.stat(status.pid).ppid == init.pid


def test_an_init_whose_server_is_gone_names_no_pid_and_is_not_waited_for(processes) -> None:
    init = python("import time; time.sleep(0.3)", processes)  # its server exited: the init is ending too
    began = time.monotonic()
    status = asyncio.run(runtime_seeing(init.pid, init=True).inspect_task(HANDLE))
    assert status.running and status.pid is None
    assert time.monotonic() - began < 3


def test_without_an_init_the_containers_process_is_the_server(processes) -> None:
    server = python("import time; time.sleep(30)", processes)
    status = asyncio.run(runtime_seeing(server.pid, init=False).inspect_task(HANDLE))
    assert status.running and status.pid == server.pid
