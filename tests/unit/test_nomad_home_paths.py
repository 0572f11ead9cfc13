"""Where the nodes of each home find an instance's files: the host volumes' paths map a home's root to
that home's node_root, the fleet root to [nomad] node_root, and anything else to itself; and which home
each node keeps data in."""

from __future__ import annotations

from pathlib import Path

from foundry_fleet.config import load_config
from foundry_fleet.runtime.nomad import node_storage
from foundry_fleet.services.init import init_fleet
from foundry_fleet.wiring.nomad_jobs import node_homes, node_path


def test_each_homes_root_is_mapped_to_its_own_node_root(tmp_path: Path) -> None:
    path = init_fleet(tmp_path / "fleet", runtime="nomad", nomad_address="http://127.0.0.1:4646")
    root = path.parent.resolve()
    b, c = tmp_path / "home-b", tmp_path / "home-c"
    text = path.read_text().replace("[nomad]\n", '[nomad]\nnode_root = "/mnt/fleet"\n', 1)
    path.write_text(text + f'\n[[nomad.homes]]\nname = "pool-b"\nnodes = ["node-b", "node-d"]\nroot = "{b}"\n'
                           f'node_root = "/srv/fleet-b"\n'
                           f'\n[[nomad.homes]]\nname = "pool-c"\nnodes = ["node-c"]\nroot = "{c}"\n')
    config = load_config(path)

    assert node_path(config, b / "instances" / "alice" / "data") == Path("/srv/fleet-b/instances/alice/data")
    assert node_path(config, c / "instances" / "bob" / "install") == c / "instances" / "bob" / "install"
    assert node_path(config, root / "shared") == Path("/mnt/fleet/shared")
    assert node_path(config, Path("/opt/node/bin/node")) == Path("/opt/node/bin/node")

    homes = node_homes(config)
    assert homes == {"node-b": "pool-b", "node-d": "pool-b", "node-c": "pool-c"}
    assert [node_storage.storage_of(n, homes) for n in ("node-a", "node-b", "node-c")] == ["fleet", "pool-b", "pool-c"]
