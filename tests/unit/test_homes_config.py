"""[[nomad.homes]] in fleet.toml: each home's nodes, root and datasets, every overlap refused with what
was wrong, and the storage each home gets (the fleet's own for "fleet" and nodes in no home)."""

from __future__ import annotations

import itertools
import re

from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import InvalidInput, NotFound
from foundry_fleet.services.init import init_fleet
from foundry_fleet.storage.directory import DirectoryStorage
from foundry_fleet.wiring import runtimes
from foundry_fleet.wiring.drivers import make_home_storage, make_storage


@pytest.fixture(autouse=True)
def nomad_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """[runtime] driver = "nomad" must name a registered driver; none of these tests starts one."""
    if "nomad" not in runtimes.RUNTIMES:
        monkeypatch.setitem(runtimes.RUNTIMES, "nomad", runtimes.RUNTIMES["local"])


def fleet_with(tmp_path: Path, homes: str, storage: str = "") -> Path:
    path = init_fleet(tmp_path / "f", runtime="nomad", force=True)
    text = path.read_text()
    if storage:
        start = text.index("[storage]\n")
        end = text.index("\n[", start + 1)
        text = text[:start] + "[storage]\n" + storage + text[end:]
    path.write_text(text + "\n" + homes)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(InvalidInput) as refused:
        load_config(path)
    assert refused.value.hint == "fix that key in fleet.toml (see the comments there)"
    return refused.value.message


def test_a_home_names_its_nodes_and_root_and_the_rest_stay_in_the_fleets_own(tmp_path: Path) -> None:
    config = load_config(fleet_with(tmp_path, '''
[[nomad.homes]]
name = "pool-b"
nodes = ["node-b", "node-c"]
root = "/srv/fleet-b"

[[nomad.homes]]
name = "pool-d"
nodes = ["node-d"]
root = "/mnt/d/fleet"
node_root = "/srv/fleet"
'''))
    b, d = config.nomad.homes
    assert (b.name, b.nodes, b.root, b.nodes_root, b.zfs_base) == (
        "pool-b", ["node-b", "node-c"], Path("/srv/fleet-b"), Path("/srv/fleet-b"), None)
    assert (d.root, d.nodes_root) == (Path("/mnt/d/fleet"), Path("/srv/fleet"))
    assert [config.nomad.home_of_node(n) for n in ("node-a", "node-b", "node-c", "node-d")] == [
        "fleet", "pool-b", "pool-b", "pool-d"]
    assert config.home_names == ("fleet", "pool-b", "pool-d")
    assert config.home("pool-d") is d and config.home("fleet") is None


def test_without_homes_the_storage_is_built_as_always(tmp_path: Path) -> None:
    config = load_config(init_fleet(tmp_path / "f"))
    assert config.nomad.homes == []
    storage = make_storage(config)
    assert isinstance(storage, DirectoryStorage) and storage.root == config.root


def test_each_home_gets_storage_at_its_own_root(tmp_path: Path) -> None:
    config = load_config(fleet_with(tmp_path, f'''
[[nomad.homes]]
name = "pool-b"
nodes = ["node-b"]
root = "{tmp_path / 'b-here'}"
node_root = "{tmp_path / 'b-on-node'}"
'''))
    main, b = make_home_storage(config, "fleet"), make_home_storage(config, "pool-b")
    assert isinstance(main, DirectoryStorage) and main.root == config.root
    assert isinstance(b, DirectoryStorage) and b.root == tmp_path / "b-here"
    assert make_home_storage(config, "pool-b", on_node=True).root == tmp_path / "b-on-node"  # type: ignore[attr-defined]
    with pytest.raises(NotFound) as unknown:
        make_home_storage(config, "pool-x")
    assert unknown.value.message == "no home named 'pool-x' in fleet.toml"
    assert unknown.value.hint == "the homes are: fleet, pool-b"
    with pytest.raises(ValueError, match="needs home_of"):
        make_storage(config)  # with homes, storage must know where each instance is


@pytest.mark.parametrize(("homes", "said"), [
    ('name = "fleet"\nnodes = ["n"]\nroot = "/x"',
     '[nomad.homes.0.name] Value error, "fleet" is the fleet\'s own home'),
    ('name = "Pool B"\nnodes = ["n"]\nroot = "/x"', "[nomad.homes.0.name] String should match pattern"),
    ('name = "b"\nnodes = []\nroot = "/x"', "[nomad.homes.0.nodes] List should have at least 1 item"),
    ('name = "b"\nnodes = ["node b"]\nroot = "/x"', "'node b' is not a Nomad node name"),
    ('name = "b"\nnodes = ["n", "n"]\nroot = "/x"', "a node is listed twice"),
    ('name = "b"\nnodes = ["n"]\nroot = "srv/b"', "[nomad.homes.0.root] Value error, 'srv/b' is not an absolute path"),
    ('name = "b"\nnodes = ["n"]\nroot = "/x"\nnode_root = "x"', "'x' is not an absolute path"),
    ('name = "b"\nnodes = ["n"]\nroot = "/x"\nsize = 3', "[nomad.homes.0.size] Extra inputs are not permitted"),
    ('name = "b"\nnodes = ["n"]\nroot = "/x"\nzfs_base = "tank/b"',
     '\'b\' has zfs_base but the fleet\'s [storage] driver is "directory": remove zfs_base'),
])
def test_a_bad_home_is_refused_naming_its_key(tmp_path: Path, homes: str, said: str) -> None:
    assert said in refusal(fleet_with(tmp_path, "[[nomad.homes]]\n" + homes + "\n"))


def test_homes_may_not_share_a_name_a_node_or_a_root(tmp_path: Path) -> None:
    def two(second: str) -> str:
        return refusal(fleet_with(tmp_path, '[[nomad.homes]]\nname = "b"\nnodes = ["node-b"]\nroot = "/srv/b"\n\n'
                                            '[[nomad.homes]]\n' + second + "\n"))

    assert "two [[nomad.homes]] are named 'b'" in two('name = "b"\nnodes = ["node-c"]\nroot = "/srv/c"')
    assert "node 'node-b' is in homes 'b' and 'c': a node sees one home's storage" in two(
        'name = "c"\nnodes = ["node-b"]\nroot = "/srv/c"')
    assert ("[[nomad.homes]] 'c' root '/srv/b/c' overlaps the root of home 'b' ('/srv/b'): each home needs a "
            "root of its own, neither inside the other") in two('name = "c"\nnodes = ["node-c"]\nroot = "/srv/b/c"')
    assert "overlaps the root of home 'b'" in two('name = "c"\nnodes = ["node-c"]\nroot = "/srv"')


def test_a_home_may_not_overlap_the_fleet_root(tmp_path: Path) -> None:
    inside = fleet_with(tmp_path, f'[[nomad.homes]]\nname = "b"\nnodes = ["n"]\nroot = "{tmp_path / "f" / "b"}"\n')
    said = refusal(inside)
    assert f"fleet.toml: Value error, [[nomad.homes]] 'b' root '{tmp_path / 'f' / 'b'}' overlaps the root of home 'fleet' " \
           f"('{tmp_path / 'f'}')" in said  # a rule across sections: no key to name


def test_with_zfs_every_home_has_datasets_of_its_own(tmp_path: Path) -> None:
    zfs = 'driver = "zfs"\nzfs_base = "tank/fleet"\n'
    missing = fleet_with(tmp_path, '[[nomad.homes]]\nname = "b"\nnodes = ["n"]\nroot = "/srv/b"\n', zfs)
    assert ("[[nomad.homes]] 'b' needs zfs_base = \"POOL[/PATH]\": the fleet's [storage] driver is \"zfs\", and "
            "every home uses it") in refusal(missing)
    nested = fleet_with(tmp_path, '[[nomad.homes]]\nname = "b"\nnodes = ["n"]\nroot = "/srv/b"\n'
                                  'zfs_base = "tank/fleet/b"\n', zfs)
    assert "zfs_base 'tank/fleet/b' overlaps the datasets of home 'fleet' ('tank/fleet')" in refusal(nested)
    bad = fleet_with(tmp_path, '[[nomad.homes]]\nname = "b"\nnodes = ["n"]\nroot = "/srv/b"\nzfs_base = "tank//b"\n',
                     zfs)
    assert "[nomad.homes.0.zfs_base] Value error, 'tank//b' is not a ZFS dataset name" in refusal(bad)
    good = load_config(fleet_with(tmp_path, '[[nomad.homes]]\nname = "b"\nnodes = ["n"]\nroot = "/srv/b"\n'
                                            'zfs_base = "tankb/fleet"\n', zfs))
    assert good.nomad.homes[0].zfs_base == "tankb/fleet"


def test_the_fleets_own_home_has_one_name_in_every_layer() -> None:
    from foundry_fleet.domain import homes
    from foundry_fleet.runtime.nomad import provision_payload
    from foundry_fleet.storage import homes as storage_homes

    assert storage_homes.MAIN_HOME == homes.MAIN_HOME == provision_payload.MAIN_HOME == "fleet"


def test_the_commented_home_in_a_new_fleet_toml_is_a_valid_one_once_uncommented(tmp_path: Path) -> None:
    # The example a new fleet.toml shows for a ZFS home over ssh: what an operator uncomments must load.
    text = init_fleet(tmp_path / "f", runtime="nomad", force=True).read_text()
    header, *rest = text[text.index("# [[nomad.homes]]\n"):].splitlines()
    keys = list(itertools.takewhile(lambda line: re.match(r"# [a-z_]+ = ", line), rest))
    example = [header[2:], *(line[2:] for line in keys)]
    assert len(example) == 8, example  # name, nodes, root, node_root, zfs_base, ssh, ssh_command
    path = fleet_with(tmp_path, "\n".join(example) + "\n", storage='driver = "zfs"\nzfs_base = "tank/fleet"\n')
    home = load_config(path).nomad.homes[0]
    assert (home.name, home.nodes, home.zfs_base, home.ssh) == ("pool-b", ["node-b"], "tankb/fleet", "root@node-b")
    assert home.ssh_command == ["ssh", "-i", "/etc/foundry-fleet/node-key"]
