"""A strict stand-in Nomad for the tests: Nomad's HTTP API on 127.0.0.1, simulated nodes on loopback
addresses, and tasks that really run on this host (see cluster.py, drivers.py, http.py).

    nodes = [StandinNode("node-a", "127.0.0.1", memory_mb=4096), StandinNode("node-b", "127.0.0.2")]
    with NomadStandin(tmp_path / "nomad", nodes, token="secret", port_range=(a, b)) as nomad:
        nomad.url; nomad.node_id("node-a"); nomad.set_node_down("node-b"); nomad.calls
        nomad.pause(); nomad.resume()  # Nomad unreachable for a while, then back

Stopping it stops every task it runs and removes what their runtimes made (cgroups, chains,
containers, forwarders); a client's blocking query still open is answered at once.

Where it is simpler than Nomad (on purpose; the fleet does not rely on these): no deployments, update
strategies, canaries, affinities or spreads; a failed allocation is not rescheduled (the fleet's jobs
set ReschedulePolicy Attempts 0), only a lost one is replaced; a re-registered job whose spec changed
replaces its allocations at once; every node runs every driver; health checks are not run (a Nomad
service is registered when its task starts); no event stream; raw_exec runs in the task dir as Nomad
does (NOMAD_TASK_DIR is its `local/`); an exec task's stdout and stderr are one log (the local
runtime's), which both log types read; a task's resource usage is sampled when it is asked for, not
every second (usage.py).
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from tests.support.cgroups import remove_groups
from tests.support.nomad_standin.cluster import Cluster, Node
from tests.support.nomad_standin.drivers import NodeRuntime
from tests.support.nomad_standin.http import Api
from tests.support.nomad_standin.store import Store
from tests.support.ports import port_block, single_port

__all__ = ["NomadStandin", "StandinNode"]


@dataclass(frozen=True)
class StandinNode:
    name: str
    address: str  # a loopback address (127.0.0.0/8): where this node's tasks are published
    memory_mb: int = 4096
    cpu_mhz: int = 4000
    host_volumes: dict[str, Path] = field(default_factory=dict)  # static host volumes: name -> path
    datacenter: str = "dc1"


class NomadStandin:
    def __init__(self, root: Path, nodes: list[StandinNode], token: str | None = None,
                 port_range: tuple[int, int] | None = None, namespaces: tuple[str, ...] = ("default",),
                 region: str = "global") -> None:
        self.root = Path(root)
        self.token = token
        if port_range is None:
            low = port_block()
            port_range = (low, low + 49)
        self.port_range = port_range
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self._tag = f"{os.getpid()}-{id(self) % 10000}"
        self._nodes = [Node(name=n.name, address=n.address, memory_mb=n.memory_mb, cpu_mhz=n.cpu_mhz,
                            datacenter=n.datacenter, host_volumes={k: Path(v) for k, v in n.host_volumes.items()})
                       for n in nodes]
        self.store = Store()
        self.cluster = Cluster(self.root, self._nodes, port_range, self.store, namespaces, region)
        self.port = single_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------- life

    def start(self) -> NomadStandin:
        (self.root / "allocs").mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # tasks running as their own uids walk into their alloc dirs
        for index, node in enumerate(self._nodes):
            node.runtime = NodeRuntime(
                cgroup_parent=f"ff-nomad-{self._tag}-{node.name}", firewall=False,
                firewall_chain=f"FFN-{os.getpid() % 100000}-{index}", run_dir=self.root / "run" / node.name,
                listen_host=node.address)
        api = Api(self.cluster, self.token, self.calls)
        config = uvicorn.Config(api.app(), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", access_log=False,
                                # A client's blocking query (up to 10 minutes) must not hold up stop().
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            ready.set()
            self._loop.run_until_complete(self._server.serve())

        self._thread = threading.Thread(target=serve, name="nomad-standin", daemon=True)
        self._thread.start()
        ready.wait(10)
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the stand-in Nomad did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop every task (kill signal, then SIGKILL after its kill timeout), remove their runtimes'
        cgroups, chains and forwarders, stop the server."""
        if self._loop is None or self._server is None:
            return
        try:
            self._call(self.cluster.stop_everything(), timeout=120)
        finally:
            for node in self._nodes:
                if node.runtime is not None:
                    node.runtime.unprotect_ports()  # the egress filter and the forwarders' group
                    remove_groups(node.runtime.cgroups.parent)
            self._call(self.store.close())
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(15)
            self._loop = None

    def pause(self) -> None:
        """Nomad away: its address refuses connections and those open (blocking queries) are cut, while
        the cluster carries on (its nodes keep running their tasks, as Nomad clients do without servers)."""
        async def close() -> None:
            assert self._server is not None
            for server in self._server.servers:
                server.close()
            for connection in list(self._server.server_state.connections):
                connection.transport.abort()

        self._call(close())

    def resume(self) -> None:
        """Nomad back on the same address, with everything it held (see pause)."""
        async def reopen() -> None:
            assert self._server is not None
            await self._server.startup()  # listens on the configured host and port again

        self._call(reopen())

    def __enter__(self) -> NomadStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        assert self._loop is not None, "the stand-in is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---------------------------------------------------------------------------------- for tests

    def node_id(self, name: str) -> str:
        return self.cluster.node_by_name(name).id

    def node_address(self, name: str) -> str:
        return self.cluster.node_by_name(name).address

    def set_node_down(self, name: str) -> None:
        """The node stops answering: its allocations become lost (their tasks killed) and are replaced
        where their constraints and volumes allow."""
        self._call(self.cluster.set_node_status(name, "down"))

    def set_node_up(self, name: str) -> None:
        self._call(self.cluster.set_node_status(name, "ready"))

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """A copy of the registered jobs by ID (every namespace), for asserts."""
        return self._snapshot(lambda: {jid: copy.deepcopy(j) for (_, jid), j in self.store.jobs.items()})

    @property
    def allocations(self) -> dict[str, dict[str, Any]]:
        return self._snapshot(lambda: {aid: copy.deepcopy({k: v for k, v in a.items() if k != "Job"})
                                       for aid, a in self.store.allocs.items()})

    @property
    def services(self) -> list[dict[str, Any]]:
        return self._snapshot(lambda: [{k: copy.deepcopy(v) for k, v in s.items() if not k.startswith("_")}
                                       for s in self.store.services.values()])

    def _snapshot(self, take: Any) -> Any:
        async def run() -> Any:
            return take()

        return self._call(run())
