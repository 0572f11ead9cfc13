"""`ssh` and `ssh_command` of a ZFS home in fleet.toml: checked as backup destinations' hosts are, refused
where they cannot work (directory storage, a node_root other than root, ssh_command alone), and the
storage each side builds: over ssh on the fleet's host, the pool itself on the home's node."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_cmd import SSH_OPTIONS
from foundry_fleet.wiring.drivers import make_home_storage
from tests.unit.test_homes_config import fleet_with, nomad_registered, refusal  # noqa: F401 (its fixture too)

ZFS = 'driver = "zfs"\nzfs_base = "tank/fleet"\n'
HOME = 'name = "pool-b"\nnodes = ["node-b"]\nroot = "/srv/fleet-b"\nzfs_base = "tankb/fleet"\n'


def test_a_zfs_home_over_ssh_runs_its_commands_there_from_the_fleet_host_and_locally_on_its_node(
        tmp_path: Path) -> None:
    config = load_config(fleet_with(tmp_path, f'''[[nomad.homes]]
{HOME}ssh = "root@node-b"
ssh_command = ["ssh", "-i", "/etc/foundry-fleet/node-key"]
''', ZFS))
    home = config.nomad.homes[0]
    assert (home.ssh, home.ssh_command) == ("root@node-b", ["ssh", "-i", "/etc/foundry-fleet/node-key"])
    here = make_home_storage(config, "pool-b")
    assert isinstance(here, ZfsStorage)
    assert here.zfs.remote == ["ssh", "-i", "/etc/foundry-fleet/node-key", *SSH_OPTIONS, "root@node-b", "--"]
    assert (here.zfs.host, here.zfs.whose) == ("root@node-b", "home pool-b")
    on_node = make_home_storage(config, "pool-b", on_node=True)
    assert isinstance(on_node, ZfsStorage) and on_node.zfs.remote == [] and on_node.zfs.host is None
    assert make_home_storage(config, "fleet").zfs.remote == []  # type: ignore[attr-defined]
    plain = load_config(fleet_with(tmp_path, f"[[nomad.homes]]\n{HOME}", ZFS))
    assert plain.nomad.homes[0].ssh is None and make_home_storage(plain, "pool-b").zfs.remote == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("extra", "storage", "said"), [
    ('ssh = "-oProxyCommand=x"', ZFS, "ssh = '-oProxyCommand=x' is not [user@]host"),
    ('ssh = "root@node b"', ZFS, "is not [user@]host"),
    ('ssh = "root@node-b"\nssh_command = []', ZFS, "ssh_command"),
    ('ssh_command = ["ssh", "-p", "2222"]', ZFS, "'pool-b' has ssh_command but no ssh: add ssh"),
    ('ssh = "root@node-b"\nnode_root = "/data/fleet-b"', ZFS,
     "is driven over ssh, so its datasets are mounted at its root ('/srv/fleet-b') on root@node-b"),
])
def test_bad_ssh_settings_are_refused_saying_what_to_do(tmp_path: Path, extra: str, storage: str, said: str) -> None:
    assert said in refusal(fleet_with(tmp_path, f"[[nomad.homes]]\n{HOME}{extra}\n", storage))


def test_a_directory_home_on_another_machine_is_its_mount_not_ssh(tmp_path: Path) -> None:
    message = refusal(fleet_with(tmp_path, '''[[nomad.homes]]
name = "disk-b"
nodes = ["node-b"]
root = "/srv/fleet-b"
ssh = "root@node-b"
'''))
    assert "'disk-b' has ssh but the fleet's [storage] driver is \"directory\"" in message
    assert "reached through its mount at root; remove ssh" in message
