"""`foundry-fleet nomad provision` on a real fleet root, run as Nomad's raw_exec runs the fvtt-provision
task: a subprocess, as root, with the node's fleet.toml, the node's ID and the payload file Nomad wrote."""

from __future__ import annotations

import grp
import itertools
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict
from foundry_fleet.runtime.nomad.provision_payload import ProvisionPayload
from foundry_fleet.services import uid_claims
from foundry_fleet.services.exec_users import exec_user_name, remove_exec_user
from foundry_fleet.services.node_provisioning import provision_on_node
from foundry_fleet.storage.trees import remove_tree
from foundry_fleet.wiring.drivers import make_storage
from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness
from tests.support.offline import create_offline

NODE = "5d3e61c4-0f1a-4b8e-9c27-6a4f1e2b9d80"


class Node:
    """A fleet with an instance created (release 13.345; 12.331 cached too), and the command as Nomad runs it."""

    def __init__(self, h: FleetHarness, alice: dict[str, Any]) -> None:
        self.h = h
        self.alice = alice
        self.name = alice["name"]
        # A uid of the fleet's block no instance of this module is given (they are allocated in order).
        self.spare_uid = alice["uid"] + 1000
        self.data = Path(alice["data_dir"])
        self.install = Path(alice["install_dir"])
        self.releases = h.root / "releases" / "versions"

    def payload(self, **changes: Any) -> ProvisionPayload:
        fields = {"instance": self.name, "release": "13.345", "node": NODE, "uid": self.alice["uid"],
                  "port": self.alice["port"], **changes}
        return ProvisionPayload(**fields)

    def run(self, payload: ProvisionPayload | bytes, *extra: str, node_id: str = NODE) -> subprocess.CompletedProcess[str]:
        task_dir = self.h.root.parent / "task"
        task_dir.mkdir(exist_ok=True)
        (task_dir / "payload.json").write_bytes(payload if isinstance(payload, bytes) else payload.to_bytes())
        return subprocess.run(
            [sys.executable, "-m", "foundry_fleet", "nomad", "provision", "--config", str(self.h.config),
             "--node-id", node_id, "--payload", str(task_dir / "payload.json"), *extra],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "80"},
        )

    def ok(self, payload: ProvisionPayload) -> str:
        done = self.run(payload)
        assert done.returncode == 0, done
        assert done.stderr == "" and done.stdout.count("\n") == 1, done
        return done.stdout.strip()

    def failed(self, payload: ProvisionPayload | bytes, code: int = 1) -> str:
        done = self.run(payload)
        assert done.returncode == code, done
        assert done.stdout == "" and done.stderr.count("\n") == 1, done
        return done.stderr.strip()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[FleetHarness]:
    """One fleet for the module (adding the releases is most of a fleet's making); each test has an
    instance of its own in it."""
    h = make_fleet(tmp_path_factory.mktemp("provision"))
    h.cli("release", "add", str(release_zips["node"]))
    h.cli("release", "add", str(release_zips["legacy"]))
    yield h
    h.tear_down()


_made = itertools.count(1)


@pytest.fixture
def node(fleet: FleetHarness) -> Node:
    alice = create_offline(fleet, f"alice{next(_made)}")["instance"]
    assert isinstance(alice["uid"], int), alice  # the tests run as root: instances get their own uid
    return Node(fleet, alice)


def tree_state(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """(inode, mtime, uid, gid, mode) of every entry under `root`, the root included, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else [*dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_ino, st.st_mtime_ns, st.st_uid, st.st_gid, st.st_mode)
    return out


def links_release(install: Path, release: Path) -> bool:
    """Every file of the release is in the install as a hard link to the cache's copy, and nothing more."""
    def files(root: Path) -> dict[str, tuple[int, int]]:
        out = {}
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_dev, st.st_ino)
        return out
    return bool(files(release)) and files(install) == files(release)


def test_lays_out_what_is_missing_then_a_rerun_changes_nothing(node: Node) -> None:
    options = node.data / "Config" / "options.json"
    written_at_create = options.read_bytes()
    remove_tree(node.install)
    options.unlink()
    (node.data / "Data" / "worlds").mkdir()  # made by root, as a restore by hand might leave it
    uid = node.alice["uid"]

    said = node.ok(node.payload())

    assert said == (f"{node.name}: installed release 13.345; wrote Config/options.json; "
                    f"gave 2 of its data's entries to uid {uid}")
    assert links_release(node.install, node.releases / "13.345")
    assert (node.install / "main.js").is_file()
    assert options.read_bytes() == written_at_create  # exactly what the fleet writes at create
    assert options.stat().st_mode & 0o777 == 0o600 and options.stat().st_uid == uid
    assert (node.data / "Data" / "worlds").stat().st_uid == uid
    assert (node.data / "Data" / "shared").stat().st_uid == 0  # the shared assets' mount point stays root's
    assert (node.data / "Config" / "admin.txt").exists()  # the fleet's secrets are left as they were

    before = tree_state(node.data.parent)
    assert node.ok(node.payload()) == f"{node.name}: unchanged"
    assert tree_state(node.data.parent) == before  # same inodes, times, owners and modes


def test_an_instance_this_node_has_nothing_of_is_laid_out_whole(node: Node) -> None:
    """A node that holds nothing of the instance yet (another node's root, one day): storage, install,
    options.json, ownership. Its secrets stay the fleet's to write; none travel in the payload."""
    uid = node.spare_uid
    carol = node.h.root / "instances" / "carol"
    said = node.ok(node.payload(instance="carol", uid=uid, port=node.alice["port"] + 1))
    assert said.startswith(f"carol: made its storage at {carol}; installed release 13.345; "
                           f"wrote Config/options.json; gave ")
    assert said.endswith(f" of its data's entries to uid {uid}")
    assert links_release(carol / "install", node.releases / "13.345")
    options = json.loads((carol / "data" / "Config" / "options.json").read_text())
    assert (options["dataPath"], options["port"]) == (str(carol / "data"), node.alice["port"] + 1)
    assert (carol / "data").stat().st_uid == uid and (carol / "data").stat().st_mode & 0o777 == 0o700
    assert sorted(os.listdir(carol / "data" / "Config")) == ["options.json"]
    before = tree_state(carol)
    assert node.ok(node.payload(instance="carol", uid=uid, port=node.alice["port"] + 1)) == "carol: unchanged"
    assert tree_state(carol) == before


def test_a_created_instance_is_already_provisioned(node: Node) -> None:
    before = tree_state(node.data.parent)
    assert node.ok(node.payload()) == f"{node.name}: unchanged"
    assert tree_state(node.data.parent) == before


def test_another_release_replaces_the_install_as_a_release_switch_does(node: Node) -> None:
    assert node.ok(node.payload(release="12.331")) == f"{node.name}: replaced its install with release 12.331"
    assert links_release(node.install, node.releases / "12.331")
    assert not (node.install / "main.js").exists() and (node.install / "resources/app/main.js").is_file()
    assert node.ok(node.payload(release="12.331")) == f"{node.name}: unchanged"
    assert node.ok(node.payload()) == f"{node.name}: replaced its install with release 13.345"
    assert links_release(node.install, node.releases / "13.345")


def test_an_install_changed_by_hand_is_replaced(node: Node) -> None:
    os.chmod(node.install, 0o755)
    (node.install / "extra.js").write_text("// not the release's\n")
    assert node.ok(node.payload()) == f"{node.name}: replaced its install with release 13.345"
    assert links_release(node.install, node.releases / "13.345")


def test_a_payload_for_another_node_changes_nothing_here(node: Node) -> None:
    remove_tree(node.install)
    before = tree_state(node.data.parent)
    other = node.payload(node="c0ffee00-0000-4000-8000-000000000001")
    assert node.ok(other) == f"not this node: {node.name} is provisioned on node c0ffee00-0000-4000-8000-000000000001"
    assert tree_state(node.data.parent) == before and not node.install.exists()


def imported_by(node: Node, payload: ProvisionPayload, config: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The job's command line run as Nomad runs it, and every module it imported (from -X importtime)."""
    payload_file = node.h.root.parent / "task" / "payload.json"
    payload_file.parent.mkdir(exist_ok=True)
    payload_file.write_bytes(payload.to_bytes())
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "foundry_fleet", "nomad", "provision",
                           "--config", str(config), "--node-id", NODE, "--payload", str(payload_file)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    modules = {line.rpartition("|")[2].strip() for line in lines}
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout,
                                       "".join(f"{line}\n" for line in done.stderr.splitlines() if line not in lines)), modules


def test_the_nodes_a_payload_does_not_name_answer_from_the_payload_alone(node: Node) -> None:
    """Every node runs every dispatch: the others read the payload, not fleet.toml, and load no more."""
    other = node.payload(node="c0ffee00-0000-4000-8000-000000000001")
    done, modules = imported_by(node, other, node.h.root / "no-such-fleet.toml")
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout == f"not this node: {node.name} is provisioned on node c0ffee00-0000-4000-8000-000000000001\n"
    assert not {m for m in modules if m.split(".")[0] in ("typer", "pydantic", "sqlalchemy", "httpx", "filelock")}


def test_the_node_that_acts_loads_no_database_and_no_http_client(node: Node) -> None:
    remove_tree(node.install)
    done, modules = imported_by(node, node.payload(), node.h.config)
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout == f"{node.name}: installed release 13.345\n"
    assert links_release(node.install, node.releases / "13.345")
    assert not {m for m in modules if m.split(".")[0] in ("typer", "sqlalchemy", "alembic", "httpx")}


def test_a_release_missing_from_the_cache_fails_naming_it_and_the_cache(node: Node) -> None:
    said = node.failed(node.payload(release="13.999"))
    assert said == (f"error: release 13.999 is not in this node's release cache {node.releases}; add it on this "
                    "node (`foundry-fleet release add ZIP_OR_URL`), then dispatch again")


@pytest.mark.parametrize(("payload", "said"), [
    (b"not json", "error: the payload is not JSON (Expecting value at line 1 column 1)"),
    (b'{"instance": "alice", "release": "13.345", "node": "n", "uid": 200000, "license": "ABCD"}',
     "error: the payload has unknown key 'license'"),
    (b'{"instance": "Alice", "release": "13.345", "node": "n", "uid": 200000}',
     "error: the payload's instance name 'Alice' has uppercase letters; use 'alice' instead"),
    (b'{"instance": "alice", "release": "13.345", "node": "n", "uid": "200000"}',
     'error: the payload\'s uid is "200000", not a whole number'),
])
def test_a_malformed_payload_fails_with_what_was_wrong(node: Node, payload: bytes, said: str) -> None:
    assert node.failed(payload).startswith(said)
    assert node.install.is_dir()


def test_a_missing_payload_file_and_usage_errors(node: Node) -> None:
    done = subprocess.run([sys.executable, "-m", "foundry_fleet", "nomad", "provision", "--config", str(node.h.config),
                           "--node-id", NODE, "--payload", str(node.h.root / "nowhere.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"error: cannot read the payload file {node.h.root / 'nowhere.json'}: "
                                  "No such file or directory; pass the file Nomad wrote"), done.stderr
    done = subprocess.run([sys.executable, "-m", "foundry_fleet", "nomad", "provision", "--config", str(node.h.config),
                           "--payload", "x.json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--node-id" in done.stderr


def test_missing_options_without_a_port_in_the_payload_fails(node: Node) -> None:
    (node.data / "Config" / "options.json").unlink()
    said = node.failed(node.payload(port=None))
    assert said == (f"error: {node.data / 'Config' / 'options.json'} is missing and the payload names no port to "
                    "write it with; dispatch again with the instance's port in the payload")


# the exec task driver's user -----------------------------------------------------------------------

@pytest.fixture
def exec_config(node: Node) -> Iterator[Any]:
    """The node's configuration with `[nomad] task_driver = "exec"`; the exec user removed afterwards."""
    config = load_config(node.h.config)
    yield config.model_copy(update={"nomad": config.nomad.model_copy(update={"task_driver": "exec"})})
    remove_exec_user(node.alice["uid"])
    remove_exec_user(node.spare_uid)


def test_exec_driver_gets_a_system_user_of_the_instances_uid(node: Node, exec_config: Any) -> None:
    uid = node.alice["uid"]
    name = exec_user_name(uid)
    storage = make_storage(exec_config)
    result = provision_on_node(exec_config, NODE, node.payload(), storage=storage)
    assert result.summary() == f"{node.name}: made system group and user {name} (id {uid})"
    user = pwd.getpwnam(name)
    assert (user.pw_uid, user.pw_gid, user.pw_dir, user.pw_shell) == (uid, uid, "/nonexistent", "/usr/sbin/nologin")
    assert grp.getgrnam(name).gr_gid == uid and not os.path.exists("/nonexistent")
    assert provision_on_node(exec_config, NODE, node.payload(), storage=storage).summary() == f"{node.name}: unchanged"

    # The daemon's uid check still passes for this fleet: the user is its own instance's, not the host's;
    # for anyone else it is a host user like any other.
    block = exec_config.instances.uid_range
    uid_claims.check_and_claim(node.h.root, block, set(), registry=node.h.root.parent / "claims")
    assert (uid, uid) in uid_claims.host_ids() and (uid, uid) not in uid_claims.host_ids(own=block)

    assert remove_exec_user(uid)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(name)


def test_exec_user_refuses_a_name_or_id_held_by_another(node: Node, exec_config: Any) -> None:
    uid = node.alice["uid"]
    storage = make_storage(exec_config)
    # A group fvtt-u<uid> with another gid: never adopted.
    subprocess.run(["groupadd", "--system", "--gid", str(uid + 1), exec_user_name(uid)], check=True)
    with pytest.raises(Conflict, match=f"group fvtt-u{uid} exists with gid {uid + 1}, not {uid}"):
        provision_on_node(exec_config, NODE, node.payload(), storage=storage)
    subprocess.run(["groupdel", exec_user_name(uid)], check=True)
    # The uid taken by a user of another name.
    subprocess.run(["groupadd", "--system", "--gid", str(uid), exec_user_name(uid)], check=True)
    subprocess.run(["useradd", "--system", "--uid", str(uid), "--gid", str(uid), "--no-create-home",
                    exec_user_name(uid + 1)], check=True)
    try:
        with pytest.raises(Conflict, match=f"uid {uid} belongs to user 'fvtt-u{uid + 1}'"):
            provision_on_node(exec_config, NODE, node.payload(), storage=storage)
    finally:
        subprocess.run(["userdel", exec_user_name(uid + 1)], check=True)
        subprocess.run(["groupdel", exec_user_name(uid)], check=True)


# ZFS storage -------------------------------------------------------------------------------------------

def test_on_zfs_the_install_is_a_clone_made_again_and_switched(tmp_path: Path, zfs_base: str,
                                                                release_zips: dict[str, Path]) -> None:
    from tests.support.fleets import zfs_fleet_on
    from tests.support.zfs import listing, zfs

    fleet = zfs_fleet_on(tmp_path, zfs_base, disk_mb=100)
    h = next(fleet)
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.cli("release", "add", str(release_zips["legacy"]))
        node = Node(h, create_offline(h, "alice")["instance"])
        install = f"{zfs_base}/instances/alice/install"

        def origin() -> str:
            return zfs("get", "-H", "-o", "value", "origin", install).stdout.strip()

        zfs("destroy", install)
        assert node.ok(node.payload()) == f"{node.name}: installed release 13.345"
        assert origin() == f"{zfs_base}/releases/13.345@pristine" and (node.install / "main.js").is_file()

        datasets, files = listing(zfs_base), tree_state(node.data.parent)
        assert node.ok(node.payload()) == f"{node.name}: unchanged"
        assert listing(zfs_base) == datasets and tree_state(node.data.parent) == files

        assert node.ok(node.payload(release="12.331")) == f"{node.name}: replaced its install with release 12.331"
        assert origin() == f"{zfs_base}/releases/12.331@pristine"
        assert (node.install / "resources/app/main.js").is_file() and not (node.install / "main.js").exists()
    finally:
        next(fleet, None)
