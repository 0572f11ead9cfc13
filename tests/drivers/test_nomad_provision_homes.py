"""`foundry-fleet nomad provision` for an instance whose data is in a home of its own: the payload names
the home, and the node lays the instance out in that home's storage, at the home's root as the node sees
it (`node_root`): here a bind mount of the home's root (a tmpfs, another file system than the fleet
root's and its release cache's), so what the node writes is what the fleet's host reads at `root`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry_fleet.runtime.nomad.provision_payload import ProvisionPayload
from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness
from tests.support.homes import mount_tmpfs, unmount

NODE = "7c1e0b52-4a7e-4c1e-8d63-0d1f5b2a7e11"
UID = 264321


@pytest.fixture
def fleet(tmp_path: Path, release_zips: dict[str, Path]) -> Iterator[tuple[FleetHarness, Path, Path]]:
    root, seen_by_node = tmp_path / "pool-b", tmp_path / "node-b-view"
    mount_tmpfs(root)
    seen_by_node.mkdir()
    subprocess.run(["mount", "--bind", str(root), str(seen_by_node)], check=True, capture_output=True)
    h = make_fleet(tmp_path)
    try:
        h.config.write_text(h.config.read_text() + f'\n[[nomad.homes]]\nname = "pool-b"\nnodes = ["node-b"]\n'
                                                   f'root = "{root}"\nnode_root = "{seen_by_node}"\n')
        h.cli("release", "add", str(release_zips["node"]))
        yield h, root, seen_by_node
    finally:
        h.tear_down()
        unmount(seen_by_node)
        unmount(root)


def provision(h: FleetHarness, payload: ProvisionPayload | bytes) -> subprocess.CompletedProcess[str]:
    task_dir = h.root.parent / "task"
    task_dir.mkdir(exist_ok=True)
    (task_dir / "payload.json").write_bytes(payload if isinstance(payload, bytes) else payload.to_bytes())
    return subprocess.run(
        [sys.executable, "-m", "foundry_fleet", "nomad", "provision", "--config", str(h.config), "--node-id", NODE,
         "--payload", str(task_dir / "payload.json")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_the_node_lays_the_instance_out_in_the_payloads_home(fleet: tuple[FleetHarness, Path, Path]) -> None:
    h, root, seen_by_node = fleet
    payload = ProvisionPayload("dora", "13.345", NODE, UID, port=30123, home="pool-b")
    done = provision(h, payload)
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"dora: made its storage at {seen_by_node / 'instances' / 'dora'}; "
                                  "installed release 13.345; wrote Config/options.json"), done.stdout
    data = root / "instances" / "dora" / "data"  # the same files, as the fleet's host reaches them
    assert (data / "Config" / "options.json").is_file() and data.stat().st_uid == UID
    # The release cache is on another file system: the home holds a copy of the release of its own.
    main_js = root / "instances" / "dora" / "install" / "main.js"
    assert main_js.is_file() and main_js.stat().st_dev == root.stat().st_dev
    assert not (h.root / "instances" / "dora").exists()  # nothing in the fleet's own home
    again = provision(h, payload)
    assert (again.returncode, again.stdout.strip()) == (0, "dora: unchanged")


def test_a_home_the_nodes_fleet_toml_does_not_list_is_refused(fleet: tuple[FleetHarness, Path, Path]) -> None:
    h, root, _ = fleet
    done = provision(h, ProvisionPayload("dora", "13.345", NODE, UID, port=30123, home="pool-x"))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == "error: no home named 'pool-x' in fleet.toml; the homes are: fleet, pool-b"
    assert not os.path.exists(root / "instances")
