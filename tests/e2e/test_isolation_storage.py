"""A hostile tenant against everything that reads or writes its files as root: snapshots, restores (directory
and ZFS in place), the backups pages and their zips, and storage status. Each attack runs from inside a
running stand-in instance, as the tenant's own code would (`run_in_instance`)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from foundry_fleet.wiring.services import make_backups, open_services
from foundry_fleet.storage.trees import remove_tree
from foundry_fleet.storage.tenant_tree import MAX_DEPTH
from tests.support.fleets import make_fleet, zfs_fleet_on
from tests.support.harness import FleetHarness, wait_until
from tests.support.offline import create_offline
from tests.support.foundry_standin import run_in_instance

pytestmark = pytest.mark.e2e
OWNER = {"X-Fleet-User": "123456789012345678"}
LICENSE = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX"
HOST_SECRETS = ("/etc/shadow", "/etc/gshadow")


# helpers ----------------------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digests(tree: Path) -> dict[str, str]:
    """sha256 of every regular file under `tree`, by relative path; iterative and never following a link,
    so a snapshot of any depth can be checked."""
    out, stack = {}, [tree]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    rel = os.path.relpath(e.path, tree)
                    with open(e.path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
                        out[rel] = sha(f.read())
    return out


def tenant_python(port: int, code: str, *, background: bool = False, timeout: float = 60) -> dict[str, object]:
    """Run Python inside the instance, as its tenant."""
    result = run_in_instance(port, f"python3 - <<'PY'\n{code}\nPY\n", background=background, timeout=timeout)
    if not background:
        assert result["code"] == 0, result
    return result


SWAP_RACE = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
os.chdir({data!r} + "/Data")
targets = {targets!r}
for i in range(40):
    os.makedirs(f"race{{i}}", exist_ok=True)
    with open(f"race{{i}}/note.txt", "w") as f:
        f.write("mine")
    if not os.path.lexists(f"link{{i}}"):
        os.symlink(targets[i % len(targets)], f"link{{i}}")
names = [(f"race{{i}}".encode(), f"link{{i}}".encode()) for i in range(40)]
end = time.time() + {seconds}
while time.time() < end:
    for a, b in names:
        libc.renameat2(-100, a, -100, b, 2)  # RENAME_EXCHANGE: the folder and the link trade places
"""


def backups_client(h: FleetHarness) -> httpx.Client:
    sock = h.root / "run" / "backups.sock"
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://alice.localhost",
                        timeout=120, headers={**OWNER, "Host": "alice.localhost"})


def zip_digests(door: httpx.Client, snap: str) -> dict[str, str]:
    r = door.get(f"/backups/{snap}.zip")
    assert r.status_code == 200, r.text[:300]
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        return {n: sha(z.read(n)) for n in z.namelist()}


def host_file_state(path: Path) -> tuple[str, int, int, int]:
    st = os.lstat(path)
    return sha(path.read_bytes()), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def two_tenants(h: FleetHarness, release_zips: dict[str, Path], tmp_path: Path) -> tuple[dict, dict]:
    h.cli("release", "add", str(release_zips["node"]))
    h.up()
    license_file = tmp_path / "license"
    license_file.write_text(LICENSE + "\n")
    alice = h.cli("instance", "create", "alice", "--release", "13.345", "--json").json()["instance"]
    bob = h.cli("instance", "create", "bob", "--release", "13.345", "--license-file", str(license_file),
                "--json").json()["instance"]
    h.wait_state("alice", "running")
    h.wait_state("bob", "running")
    return alice, bob


def no_daemon_errors(h: FleetHarness) -> None:
    log = h.daemon_log()
    assert "Traceback" not in log and "Internal Server Error" not in log, log[-3000:]


@pytest.fixture
def zfs_fleet(tmp_path: Path, zfs_base: str) -> Iterator[FleetHarness]:
    yield from zfs_fleet_on(tmp_path, zfs_base, disk_mb=64)


@pytest.fixture
def dir_fleet(tmp_path: Path) -> Iterator[FleetHarness]:
    h = make_fleet(tmp_path)
    yield h
    h.tear_down()
    remove_tree(h.root)  # pytest's own clean-up of old temp dirs recurses, and a deep tree would break it


# attack 1: the swap race ---------------------------------------------------------------------------------


def test_a_tenant_swapping_folders_for_links_gets_nothing_of_another_tenant_or_the_host(
    dir_fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path
) -> None:
    h = dir_fleet
    alice, bob = two_tenants(h, release_zips, tmp_path)
    bob_config = Path(bob["data_dir"]) / "Config"
    forbidden = {sha((bob_config / n).read_bytes()): f"bob's {n}" for n in ("license.json", "admin.txt", "options.json")}
    forbidden |= {sha(Path(p).read_bytes()): p for p in HOST_SECRETS if Path(p).exists()}
    port = alice["port"]
    race = SWAP_RACE.format(data=alice["data_dir"], targets=[str(bob_config), "/etc"], seconds=40)
    racer = tenant_python(port, race, background=True)
    wait_until(lambda: (Path(alice["data_dir"]) / "Data" / "link39").exists() or
               (Path(alice["data_dir"]) / "Data" / "race39").is_symlink(), 20, "the race to start")

    snaps = []
    for i in range(3):
        done = h.cli("backup", "now", "alice", "--label", f"race{i}", "--json", check=False)
        assert done.code in (0, 7), done  # taken, or refused cleanly (a tree that changed under it)
        if done.code == 0:
            snaps.append(done.json()["name"])
    assert snaps, "no snapshot could be taken during the race"
    run_in_instance(port, f"kill {racer['pid']} 2>/dev/null; true")

    snapshots_dir = h.root / "snapshots" / "alice"
    with backups_client(h) as door:
        for snap in snaps:
            found = tree_digests(snapshots_dir / snap)
            assert any(p.startswith("Data/race") or p.startswith("Data/link") for p in found), sorted(found)[:20]
            leaked = {p: forbidden[d] for p, d in found.items() if d in forbidden}
            assert not leaked, f"snapshot {snap} holds {leaked}"
            zipped = zip_digests(door, snap)
            assert not {p for p, d in zipped.items() if d in forbidden}
            # Links stay links in the snapshot: never a folder of someone else's files.
            for entry in os.scandir(snapshots_dir / snap / "Data"):
                if entry.name.startswith(("race", "link")) and entry.is_dir(follow_symlinks=False):
                    assert set(os.listdir(entry.path)) <= {"note.txt"}, (entry.name, os.listdir(entry.path))

    out = h.cli("backup", "restore", "alice", snaps[-1], "--yes").out
    assert "kept as snapshot safety-" in out
    h.wait_state("alice", "running")
    port = h.instance("alice")["port"]
    # From inside: the host's secrets are not readable, and nothing in the tenant's data is one of them.
    probe = tenant_python(port, f"""
import hashlib, os
found = set()
for dirpath, dirs, files in os.walk({alice["data_dir"]!r}):
    for f in files:
        p = os.path.join(dirpath, f)
        if not os.path.islink(p):
            try:
                found.add(hashlib.sha256(open(p, "rb").read()).hexdigest())
            except OSError:
                pass
print("\\n".join(sorted(found)))
for p in {list(HOST_SECRETS)!r}:
    try:
        open(p).read()
        print("READ", p)
    except OSError:
        pass
""")
    seen = set(str(probe["stdout"]).split())
    assert "READ" not in seen and not seen & set(forbidden), probe
    assert h.cli("status", "--json").code == 0
    no_daemon_errors(h)


# attack 3 on directory storage ------------------------------------------------------------------------


def test_restoring_a_data_folder_that_is_a_link_makes_nothing_outside_the_tenant(
    dir_fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path
) -> None:
    h = dir_fleet
    alice, _bob = two_tenants(h, release_zips, tmp_path)
    outside = tmp_path / "host-folder"
    outside.mkdir(mode=0o755)
    good = h.cli("backup", "now", "alice", "--label", "good", "--json").json()["name"]
    tenant_python(alice["port"], f"""
import os
os.chdir({alice["data_dir"]!r})
os.rename("Data", "Data.real")
os.symlink({str(outside)!r}, "Data")
""")
    linked = h.cli("backup", "now", "alice", "--label", "linked", "--json").json()["name"]
    assert (h.root / "snapshots" / "alice" / linked / "Data").is_symlink()
    restored = h.cli("backup", "restore", "alice", linked, "--yes", check=False)
    assert "Traceback" not in restored.err
    assert os.listdir(outside) == [] and os.stat(outside).st_uid == 0 and stat.S_IMODE(os.stat(outside).st_mode) == 0o755
    # The tenant's own link came back as it was; its instance refuses to start on it until it is a folder,
    # and a good snapshot brings it back.
    h.cli("backup", "restore", "alice", good, "--yes")
    h.wait_state("alice", "running")
    assert os.listdir(outside) == []
    no_daemon_errors(h)


# deep trees and strange names --------------------------------------------------------------------------

DEEP = """
import os
os.chdir({data!r} + "/Data")
os.mkfifo("a-fifo")
with open("line\\nbreak.txt", "w") as f:
    f.write("newline")
with open(b"not-utf8-\\xff.txt", "w") as f:
    f.write("latin")
fd = os.open(".", os.O_RDONLY)
for i in range({depth}):
    os.mkdir("d", dir_fd=fd)
    child = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = child
leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
os.write(leaf, b"at the bottom")
os.close(leaf)
"""


def test_a_deep_tree_fifo_and_strange_names_break_nothing(
    dir_fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path
) -> None:
    h = dir_fleet
    alice, bob = two_tenants(h, release_zips, tmp_path)
    tenant_python(alice["port"], DEEP.format(data=alice["data_dir"], depth=1100))
    snap = h.cli("backup", "now", "alice", "--label", "deep", "--json", timeout=300).json()["name"]
    tree = h.root / "snapshots" / "alice" / snap
    got = tree_digests(tree)
    deep_leaf = "Data/" + "d/" * 1100 + "leaf.txt"
    assert got[deep_leaf] == sha(b"at the bottom")
    assert got["Data/line\nbreak.txt"] == sha(b"newline")
    assert os.fsdecode(b"Data/not-utf8-\xff.txt") in got
    assert not os.path.lexists(tree / "Data" / "a-fifo")  # not data

    status = h.cli("storage", "status", "--json").json()
    assert status["instances"]["alice"]["used"] > 1100 * 4096  # the folders, the data and the snapshot
    assert status["instances"]["bob"]["used"] > 0
    assert h.cli("backup", "now", "bob", "--json").code == 0  # the other tenant is unaffected

    with backups_client(h) as door:
        page = door.get(f"/backups/{snap}/Data/")
        assert page.status_code == 200 and "line\nbreak.txt" in page.text and "not-utf8-\ufffd.txt" in page.text
        assert door.get(f"/backups/{snap}/Data/not-utf8-%FF.txt").text == "latin"
        assert door.get(f"/backups/{snap}/Data/line%0Abreak.txt").text == "newline"
        assert door.get(f"/backups/{snap}/{deep_leaf}").text == "at the bottom"
        assert door.get(f"/backups/{snap}/Data/a-fifo").status_code == 404
        zipped = zip_digests(door, snap)
        assert zipped[deep_leaf] == sha(b"at the bottom") and "Data/not-utf8-\ufffd.txt" in zipped

    h.cli("backup", "restore", "alice", snap, "--yes", timeout=300)
    h.wait_state("alice", "running")
    data = Path(alice["data_dir"])
    assert tree_digests(data)[deep_leaf] == sha(b"at the bottom")
    assert os.stat(data / deep_leaf).st_uid == alice["uid"]
    assert (data / "Data" / "shared").is_dir() and os.stat(data / "Data" / "shared").st_uid == 0
    no_daemon_errors(h)


# content dedup -------------------------------------------------------------------------------------------


def test_a_touched_file_is_not_copied_again_and_a_changed_one_is(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path)
    h.cli("release", "add", str(release_zips["node"]))
    create_offline(h, "alice")
    backups = make_backups(open_services(h.settings()))
    data = backups.storage.paths("alice").data
    big = data / "Data" / "scene.webp"
    big.write_bytes(os.urandom(32 << 20))
    first = backups.take("alice", "one")
    os.utime(big, ns=(1_000_000_000, 1_000_000_000))  # only the time changes
    second = backups.take("alice", "two")
    assert first.bytes_new >= 32 << 20
    assert second.bytes_new < 64 * 1024, second
    one, two = (backups.snapshots.path("alice", s.name) / "Data" / "scene.webp" for s in (first, second))
    assert one.stat().st_ino == two.stat().st_ino != big.stat().st_ino  # shared, and never the live file
    used = backups.storage.usage_bytes("alice")
    assert 64 << 20 <= used < 66 << 20, used  # the live file and one copy, not three

    with big.open("r+b") as f:  # same size, other content: copied
        f.seek(10 << 20)
        f.write(b"changed")
    third = backups.take("alice", "three")
    assert third.bytes_new >= 32 << 20
    assert (backups.snapshots.path("alice", third.name) / "Data" / "scene.webp").read_bytes() == big.read_bytes()
    assert two.read_bytes() != big.read_bytes()  # the earlier snapshot kept its content


def test_a_sparse_file_costs_a_snapshot_what_it_stores_not_what_it_claims(tmp_path: Path,
                                                                          release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path)
    h.cli("release", "add", str(release_zips["node"]))
    create_offline(h, "alice")
    backups = make_backups(open_services(h.settings()))
    sparse = backups.storage.paths("alice").data / "Data" / "huge.bin"
    with sparse.open("wb") as f:
        f.seek(64 << 30)  # claims 64 GiB
        f.write(b"tail")
    first = backups.take("alice", "one")
    copy = backups.snapshots.path("alice", first.name) / "Data" / "huge.bin"
    assert first.bytes_new < 1 << 20 and copy.stat().st_size == (64 << 30) + 4
    with copy.open("rb") as f:
        f.seek(64 << 30)
        assert f.read() == b"tail"
    os.utime(sparse, ns=(1_000_000_000, 1_000_000_000))
    second = backups.take("alice", "two")  # compared by what it stores: quick, and linked
    assert second.bytes_new < 1 << 20
    assert (backups.snapshots.path("alice", second.name) / "Data" / "huge.bin").stat().st_ino == copy.stat().st_ino


# ZFS: the restore marker, a linked Data, and a fake .zfs --------------------------------------------------


def test_zfs_restore_markers_and_links_in_the_data_touch_no_host_file(
    zfs_fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path
) -> None:
    h = zfs_fleet
    alice, bob = two_tenants(h, release_zips, tmp_path)
    data = Path(alice["data_dir"])
    victim = tmp_path / "host-file"
    victim.write_text("the host's own file\n")
    os.chmod(victim, 0o640)
    secret = tmp_path / "root-only"
    secret.write_text("TOP-SECRET-7d1e\n")
    os.chmod(secret, 0o600)
    outside = tmp_path / "host-folder"
    outside.mkdir(mode=0o755)
    before = host_file_state(victim)

    tenant_python(alice["port"], f"""
import os
os.chdir({str(data)!r})
os.symlink({str(victim)!r}, ".fleet-restore.new")
with open("Data/world.db", "w") as f:
    f.write("campaign")
""")
    snap = h.cli("backup", "now", "alice", "--label", "planted", "--json").json()["name"]
    h.cli("backup", "restore", "alice", snap, "--yes")
    h.wait_state("alice", "running")
    assert host_file_state(victim) == before
    assert (data / "Data" / "world.db").read_text() == "campaign"
    assert not os.path.lexists(data / ".fleet-restore.new")  # fleet names are never restored
    h.cli("backup", "restore", "alice", snap, "--yes")  # and it does not fire again
    h.wait_state("alice", "running")
    assert host_file_state(victim) == before

    # A fake `.zfs/snapshot/<name>` in the data never stands in for the real snapshot.
    tenant_python(h.instance("alice")["port"], f"""
import os
os.makedirs({str(data)!r} + "/.zfs/snapshot")
os.symlink("/etc", {str(data)!r} + "/.zfs/snapshot/{snap}")
""")
    with backups_client(h) as door:
        assert door.get(f"/backups/{snap}/Data/world.db").text == "campaign"
        assert door.get(f"/backups/{snap}/passwd").status_code == 404

    # A linked Data: a restore makes and chowns nothing outside.
    tenant_python(h.instance("alice")["port"], f"""
import os
os.chdir({str(data)!r})
os.rename("Data", "Data.real")
os.symlink({str(outside)!r}, "Data")
""")
    linked = h.cli("backup", "now", "alice", "--label", "linked", "--json").json()["name"]
    h.cli("backup", "restore", "alice", linked, "--yes", check=False)
    assert os.listdir(outside) == [] and os.stat(outside).st_uid == 0
    h.cli("backup", "restore", "alice", snap, "--yes")
    h.wait_state("alice", "running")

    # `.fleet-restore` linked to a root-only file: the next start reads nothing through it, every instance starts.
    tenant_python(h.instance("alice")["port"], f"import os; os.symlink({str(secret)!r}, {str(data)!r} + '/.fleet-restore')")
    h.stop_daemons()
    h.up()
    h.wait_state("alice", "running")
    h.wait_state("bob", "running")
    assert not os.path.lexists(data / ".fleet-restore")
    assert secret.read_text() == "TOP-SECRET-7d1e\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    said = h.cli("events", "--json").out + "".join(h.daemon_log(i) for i in range(len(h.daemons)))
    assert "TOP-SECRET" not in said
    assert host_file_state(victim) == before

    # A restore an older fleet left half done (its marker file, root's, in the data) is still finished.
    h.stop_daemons()
    (data / "Data" / "world.db").write_text("half restored")
    (data / ".fleet-restore").write_text(snap + "\n")
    os.chmod(data / ".fleet-restore", 0o600)
    h.up()
    h.wait_state("alice", "running")
    assert (data / "Data" / "world.db").read_text() == "campaign"
    assert not os.path.lexists(data / ".fleet-restore")
    no_daemon_errors(h)


def test_a_zfs_restore_that_fails_half_way_puts_the_previous_data_back(
    zfs_fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    """A restore on ZFS empties the data before it copies the snapshot back: when the copy fails (here, a
    snapshot deeper than any walk follows), the data from before comes back from the safety snapshot
    and the instance runs on it, not on what was half restored."""
    h = zfs_fleet
    h.cli("release", "add", str(release_zips["node"]))
    h.up()
    alice = h.cli("instance", "create", "alice", "--release", "13.345", "--json").json()["instance"]
    data = Path(alice["data_dir"])
    tenant_python(alice["port"], f"""
import os
os.chdir({str(data)!r} + "/Data")
for _ in range({MAX_DEPTH + 10}):
    os.mkdir("d")
    os.chdir("d")
""", timeout=120)
    deep = h.cli("backup", "now", "alice", "--label", "deep", "--json").json()["name"]
    assert run_in_instance(alice["port"], "rm -rf Data/d && echo kept > Data/world.txt")["code"] == 0

    failed = h.cli("backup", "restore", "alice", deep, "--yes", check=False)
    assert failed.code != 0 and "deep" in failed.err, failed.err
    h.wait_state("alice", "running")
    assert (data / "Data" / "world.txt").read_text() == "kept\n"
    assert not (data / "Data" / "d").exists()
    events = [e for e in h.cli("events", "--instance", "alice", "--json").json() if e["action"] == "backup.restore"]
    assert any(e["outcome"] == "failed" and "put back from safety-" in e["message"] for e in events), events
    no_daemon_errors(h)
