"""The ZFS storage driver against real ZFS (zfs-fuse), on throw-away pools backed by files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import Conflict, ExternalFailure, InvalidInput
from foundry_fleet.domain.release import ReleaseInfo, ReleaseLayout
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import MIB, DownloadPolicy
from foundry_fleet.storage.zfs import ZfsStorage, release_version_of
from foundry_fleet.storage.zfs_cmd import ZfsCommandFailed, ZfsRunner, host_namespace_prefix
from foundry_fleet.storage.zfs_layout import ZfsLayout
from tests.support.releases import small_limits
from tests.support.foundry_standin import build_release_zip

pytest.register_assert_rewrite("tests.support.zfs")

from tests.support.zfs import listing, used_bytes, zfs  # noqa: E402 (after the rewrite registration)

QUOTA = 8 * MIB
FILLER_FILES, FILLER_BYTES = 4, MIB
MUTATING = {"create", "set", "rename", "destroy", "clone", "snapshot", "mount", "unmount", "inherit", "promote"}


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ReleaseInfo]:
    """Two releases in a real release cache: 13.345 (plain) and 13.346 (wrapped in a folder)."""
    d = tmp_path_factory.mktemp("zfs-releases")
    offline = DownloadPolicy(allowed_hosts=("foundryvtt.com",), max_download_bytes=10 * MIB)
    cache = ReleaseCache(d / "cache", offline, small_limits())
    found = {}
    for build, wrap in ((345, False), (346, True)):
        zip_path = build_release_zip(d / "zips", ReleaseLayout.NODE, 13, build, wrap=wrap,
                                     filler_files=FILLER_FILES, filler_bytes=FILLER_BYTES)
        info = cache.add(str(zip_path))
        found[info.version] = info
    return found


class Recorder:
    """Sees every zfs/zpool command the driver runs."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, argv: list[str]) -> None:
        self.commands.append(argv)

    def mutating(self) -> list[list[str]]:
        return [c for c in self.commands if len(c) > 1 and c[1] in MUTATING]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def storage(tmp_path: Path, zfs_base: str, recorder: Recorder) -> ZfsStorage:
    s = ZfsStorage(tmp_path / "fleet", zfs_base, runner=ZfsRunner(observer=recorder))
    s.ensure_layout()
    return s


def write_until_refused(path: Path, limit: int, chunk: int = 256 * 1024) -> tuple[int, OSError | None]:
    """Write incompressible bytes to `path` until refused or `limit` bytes; (bytes written, the error)."""
    written = 0
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        while written < limit:
            os.write(fd, os.urandom(chunk))
            os.fsync(fd)
            written += chunk
    except OSError as e:
        return written, e
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return written, None


def mount_options(path: Path) -> list[str]:
    """The kernel's mount options for the mount at `path` (read-only mounts start with "ro")."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split(" ")
        if fields[1] == str(path):
            return fields[3].split(",")
    raise AssertionError(f"nothing is mounted at {path}")


def build_of(install: Path) -> int:
    return json.loads((install / "package.json").read_text())["release"]["build"]


def assert_read_only(directory: Path, existing_file: Path) -> None:
    attempts = {
        "create a file": lambda: (directory / "new-file").write_bytes(b"x"),
        "make a folder": lambda: (directory / "new-dir").mkdir(),
        "open a file for writing": lambda: os.close(os.open(existing_file, os.O_WRONLY)),
        "delete a file": lambda: existing_file.unlink(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError, match="Read-only file system") as e:
            attempt()
            pytest.fail(f"could {what} in {directory}")
        assert e.value.errno == errno.EROFS, e.value


# layout ------------------------------------------------------------------------------------------


def test_layout_is_idempotent_and_corrects_what_differs(
    storage: ZfsStorage, zfs_base: str, recorder: Recorder, releases: dict[str, ReleaseInfo]
) -> None:
    release = releases["13.345"]
    storage.create_instance("alpha", quota_bytes=QUOTA)
    storage.install_release("alpha", Path(release.path))
    storage.create_instance("beta")
    before = listing(zfs_base)
    assert f"{zfs_base}/instances/alpha/data\t{storage.root}/instances/alpha/data\tyes\t8M\tnone\t-" in before
    assert f"{zfs_base}/releases/13.345@pristine\t-\t-\t-\t-\t-" in before
    for name in ("Config", "Data", "Logs", "Backups", "Data/shared"):
        assert (storage.paths("alpha").data / name).is_dir()
    assert (storage.paths("alpha").data.stat().st_mode & 0o777) == 0o700
    assert (storage.shared_dir().stat().st_mode & 0o777) == 0o755

    # Twice more: only reads, and nothing differs.
    recorder.commands.clear()
    for _ in range(2):
        storage.ensure_layout()
        storage.create_instance("alpha", quota_bytes=QUOTA)
        storage.create_instance("beta")
    assert recorder.mutating() == []
    assert listing(zfs_base) == before

    # Mountpoints moved by hand, a release made writable and auto-mounted, the install mounted
    # read-write: all put back.
    (storage.paths("alpha").data / "Data" / "world.db").write_text("kept")
    zfs("set", f"mountpoint={storage.root}/elsewhere", f"{zfs_base}/instances/alpha/data")
    zfs("set", f"mountpoint={storage.root}/other-shared", f"{zfs_base}/shared")
    zfs("unmount", f"{zfs_base}/releases/13.345")
    zfs("set", "readonly=off", f"{zfs_base}/releases/13.345")
    zfs("set", "canmount=on", f"{zfs_base}/releases/13.345")
    zfs("mount", f"{zfs_base}/releases/13.345")
    zfs("unmount", f"{zfs_base}/instances/alpha/install")
    zfs("mount", f"{zfs_base}/instances/alpha/install")
    assert mount_options(storage.paths("alpha").install)[0] == "rw"
    storage.ensure_layout()
    assert listing(zfs_base) == before
    assert (storage.paths("alpha").data / "Data" / "world.db").read_text() == "kept"
    release_root = storage.root / "releases-zfs" / "13.345"
    for read_only in (release_root, storage.paths("alpha").install):
        assert mount_options(read_only)[0] == "ro"
        assert_read_only(read_only, read_only / release.entry)
    assert zfs("get", "-H", "-o", "value", "canmount", f"{zfs_base}/releases/13.345").stdout.strip() == "noauto"

    # And a second run after the repair changes nothing again.
    recorder.commands.clear()
    storage.ensure_layout()
    assert recorder.mutating() == []


def test_layout_under_a_nested_base_creates_the_base(tmp_path: Path, zfs_base: str) -> None:
    nested = f"{zfs_base}/deeper/fleet"
    s = ZfsStorage(tmp_path / "fleet", nested)
    s.ensure_layout()
    names = [line.split("\t")[0] for line in listing(zfs_base)]
    assert names == sorted([zfs_base, f"{zfs_base}/deeper", nested, f"{nested}/instances", f"{nested}/releases",
                            f"{nested}/shared"])
    assert s.shared_dir().is_dir() and os.path.ismount(s.shared_dir())


# quotas ------------------------------------------------------------------------------------------


def test_a_tenant_filling_its_quota_does_not_affect_another(storage: ZfsStorage) -> None:
    alpha = storage.create_instance("alpha", quota_bytes=QUOTA)
    beta = storage.create_instance("beta", quota_bytes=4 * QUOTA)

    written, error = write_until_refused(alpha.data / "Data" / "fill.bin", limit=3 * QUOTA)
    assert error is not None, "writing past the quota was allowed"
    assert error.errno in (errno.EDQUOT, errno.ENOSPC), error
    assert written <= QUOTA + MIB

    written, error = write_until_refused(beta.data / "Data" / "fill.bin", limit=2 * QUOTA)
    assert error is None and written == 2 * QUOTA

    status = storage.status()
    assert status["pool"]["health"] == "ONLINE"  # type: ignore[index]
    instances = status["instances"]  # type: ignore[assignment]
    assert instances["alpha"]["limit"] == instances["alpha"]["quota"] == QUOTA  # type: ignore[index]
    assert instances["beta"]["limit"] == 4 * QUOTA  # type: ignore[index]
    assert QUOTA - MIB <= instances["alpha"]["used"] <= QUOTA + MIB  # type: ignore[index,operator]
    assert storage.usage_bytes("alpha") == instances["alpha"]["used"]  # type: ignore[index]
    assert storage.usage_bytes("beta") >= 2 * QUOTA - MIB  # the last writes may not be counted yet

    # Lifting the quota lets the tenant write again.
    storage.set_quota("alpha", None)
    _, error = write_until_refused(alpha.data / "Data" / "more.bin", limit=MIB)
    assert error is None
    assert storage.status()["instances"]["alpha"]["limit"] is None  # type: ignore[index]


def test_bad_quotas_are_refused(storage: ZfsStorage) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InvalidInput):
            storage.create_instance("alpha", quota_bytes=bad)  # type: ignore[arg-type]


# installs ----------------------------------------------------------------------------------------


def test_installs_are_zero_copy_read_only_clones(
    storage: ZfsStorage, zfs_base: str, releases: dict[str, ReleaseInfo]
) -> None:
    release = releases["13.345"]
    for name in ("alpha", "beta"):
        storage.create_instance(name)
        assert storage.install_release(name, Path(release.path)) == storage.paths(name).install

    release_used = used_bytes(f"{zfs_base}/releases/13.345")
    assert release_used >= FILLER_FILES * FILLER_BYTES
    for name in ("alpha", "beta"):
        install = storage.paths(name).install
        assert used_bytes(f"{zfs_base}/instances/{name}/install") < release_used / 100
        assert storage.installed_release(name) == "13.345"
        assert os.path.ismount(install) and mount_options(install)[0] == "ro"
        filler = install / "public" / "filler" / "filler-0000.bin"
        assert filler.read_bytes() == (Path(release.path) / "public" / "filler" / "filler-0000.bin").read_bytes()
        assert_read_only(install, install / release.entry)
        assert_read_only(install / "public", filler)
    # One release dataset, shared by both clones.
    releases_listed = [line for line in listing(f"{zfs_base}/releases") if line.startswith(f"{zfs_base}/releases/")]
    assert [line.split("\t")[0] for line in releases_listed] == [
        f"{zfs_base}/releases/13.345", f"{zfs_base}/releases/13.345@pristine"
    ]
    assert storage.status()["releases"]["13.345"]["used"] == release_used  # type: ignore[index]


def test_install_swaps_to_another_release_and_back(
    storage: ZfsStorage, zfs_base: str, recorder: Recorder, releases: dict[str, ReleaseInfo]
) -> None:
    old, new = releases["13.345"], releases["13.346"]  # 13.346 is wrapped: its app root is one folder down
    storage.create_instance("alpha")
    storage.install_release("alpha", Path(old.path))
    (storage.paths("alpha").data / "Data" / "world.db").write_text("kept")

    install = storage.install_release("alpha", Path(new.path))
    assert storage.installed_release("alpha") == "13.346"
    assert build_of(install) == 346
    assert os.path.ismount(install)
    assert_read_only(install, install / new.entry)
    names = [line.split("\t")[0] for line in listing(f"{zfs_base}/instances/alpha")]
    assert names == [f"{zfs_base}/instances/alpha", f"{zfs_base}/instances/alpha/data",
                     f"{zfs_base}/instances/alpha/install"]
    assert (storage.paths("alpha").data / "Data" / "world.db").read_text() == "kept"

    # The same release again: nothing to do.
    recorder.commands.clear()
    storage.install_release("alpha", Path(new.path))
    assert recorder.mutating() == []

    storage.install_release("alpha", Path(old.path))
    assert storage.installed_release("alpha") == "13.345"
    assert build_of(storage.paths("alpha").install) == 345


def test_datasets_in_use_are_left_alone(storage: ZfsStorage, zfs_base: str, releases: dict[str, ReleaseInfo]) -> None:
    storage.create_instance("alpha")
    storage.install_release("alpha", Path(releases["13.345"].path))
    storage.zfs.busy_retry_seconds = 1.0
    with open(storage.paths("alpha").install / "main.js", "rb"):  # a running instance holds its files open
        with pytest.raises(ExternalFailure) as e:
            storage.install_release("alpha", Path(releases["13.346"].path))
    assert "in use" in e.value.message and "stop the instance" in (e.value.hint or "")
    assert storage.installed_release("alpha") == "13.345"
    assert os.path.ismount(storage.paths("alpha").install)
    assert not any("install.new" in line for line in listing(zfs_base))

    world = storage.paths("alpha").data / "Data" / "world.db"
    world.write_text("kept")
    with open(world, "rb"):
        with pytest.raises(ExternalFailure) as e:
            storage.archive_instance("alpha", "20260101-120000")
    assert "in use" in e.value.message and "nothing was changed" in e.value.message
    assert world.read_text() == "kept" and os.path.ismount(storage.paths("alpha").data)
    assert not any("/archive" in line for line in listing(zfs_base))


@pytest.mark.parametrize("crash_point", ["before-commit", "after-commit", "first-install"])
def test_an_interrupted_install_swap_is_repaired(
    storage: ZfsStorage, zfs_base: str, releases: dict[str, ReleaseInfo], crash_point: str
) -> None:
    storage.ensure_release("13.345", Path(releases["13.345"].path))
    storage.ensure_release("13.346", Path(releases["13.346"].path))
    inst = f"{zfs_base}/instances/alpha"
    storage.create_instance("alpha")
    if crash_point != "first-install":
        storage.install_release("alpha", Path(releases["13.345"].path))
    # Replay the swap's steps by hand up to the crash point.
    zfs("clone", "-o", "readonly=on", "-o", "mountpoint=none", f"{zfs_base}/releases/13.346@pristine",
        f"{inst}/install.new")
    if crash_point == "before-commit":
        zfs("unmount", f"{inst}/install")
        zfs("set", "mountpoint=none", f"{inst}/install")
        zfs("rename", f"{inst}/install", f"{inst}/install.old")
        expected = "13.345"  # never committed: the old install comes back
    elif crash_point == "after-commit":
        zfs("unmount", f"{inst}/install")
        zfs("set", "mountpoint=none", f"{inst}/install")
        zfs("rename", f"{inst}/install", f"{inst}/install.old")
        zfs("rename", f"{inst}/install.new", f"{inst}/install")
        expected = "13.346"
    else:
        expected = "13.346"  # the clone is complete: it becomes the install

    storage.ensure_layout()
    assert storage.installed_release("alpha") == expected
    names = [line.split("\t")[0] for line in listing(inst)]
    assert names == [inst, f"{inst}/data", f"{inst}/install"]
    install = storage.paths("alpha").install
    assert os.path.ismount(install)
    assert build_of(install) == int(expected.split(".")[1])
    assert_read_only(install, install / "package.json")


def test_a_release_left_half_filled_is_filled_again(
    storage: ZfsStorage, zfs_base: str, releases: dict[str, ReleaseInfo]
) -> None:
    release = releases["13.345"]
    half = storage.root / "releases-zfs" / "13.345"
    zfs("create", "-o", f"mountpoint={half}", f"{zfs_base}/releases/13.345")  # a crash before @pristine
    (half / "partial").write_text("x")
    assert storage.ensure_release("13.345", Path(release.path)) == f"{zfs_base}/releases/13.345"
    assert not (half / "partial").exists()
    assert (half / release.entry).is_file()
    zfs("get", "-H", "-o", "value", "type", f"{zfs_base}/releases/13.345@pristine")


def test_release_versions_come_from_the_cache_manifest_or_the_folder_name(
    tmp_path: Path, releases: dict[str, ReleaseInfo]
) -> None:
    for version, info in releases.items():
        assert release_version_of(Path(info.path)) == version
    (tmp_path / "13.400").mkdir()
    assert release_version_of(tmp_path / "13.400") == "13.400"
    (tmp_path / "somewhere").mkdir()
    with pytest.raises(InvalidInput):
        release_version_of(tmp_path / "somewhere")


# removal -----------------------------------------------------------------------------------------


def test_archive_keeps_the_data_and_destroy_removes_the_datasets(
    storage: ZfsStorage, zfs_base: str, releases: dict[str, ReleaseInfo]
) -> None:
    for name in ("alpha", "beta"):
        storage.create_instance(name, quota_bytes=QUOTA)
        storage.install_release(name, Path(releases["13.345"].path))
        (storage.paths(name).data / "Data" / "world.db").write_text(f"{name}'s world")

    kept = storage.archive_instance("alpha", "20260101-120000")
    assert kept == storage.root / "archive" / "alpha-20260101-120000"
    assert (kept / "data" / "Data" / "world.db").read_text() == "alpha's world"
    assert os.path.ismount(kept / "data")
    assert (kept.parent.stat().st_mode & 0o777) == 0o700
    assert not storage.paths("alpha").root.exists()
    names = [line.split("\t")[0] for line in listing(zfs_base)]
    assert f"{zfs_base}/archive/alpha-20260101-120000/data" in names
    assert not any(n.startswith(f"{zfs_base}/instances/alpha") for n in names)

    # The name is free again; the same stamp twice is a conflict.
    storage.create_instance("alpha")
    with pytest.raises(Conflict):
        storage.archive_instance("alpha", "20260101-120000")

    storage.destroy_instance("beta")
    names = [line.split("\t")[0] for line in listing(zfs_base)]
    assert not any(n.startswith(f"{zfs_base}/instances/beta") for n in names)
    assert not storage.paths("beta").root.exists()
    assert storage.usage_bytes("beta") == 0
    storage.destroy_instance("beta")  # nothing left: fine

    # The archived data survives a layout run, at its own mountpoint.
    storage.ensure_layout()
    assert (kept / "data" / "Data" / "world.db").read_text() == "alpha's world"


# errors ------------------------------------------------------------------------------------------


def test_a_missing_pool_is_a_clear_external_failure(tmp_path: Path, zfs_daemon: None) -> None:
    s = ZfsStorage(tmp_path / "fleet", "nosuchpool-ff/fleet")
    with pytest.raises(ExternalFailure) as e:
        s.ensure_layout()
    assert "nosuchpool-ff" in e.value.message
    assert "zpool list" in e.value.message and "no such pool" in e.value.message
    assert e.value.hint and "zpool create" in e.value.hint


def test_zfs_errors_carry_the_command_and_what_zfs_said(zfs_daemon: None) -> None:
    with pytest.raises(ZfsCommandFailed) as e:
        ZfsRunner().zfs("get", "used", "nosuchpool-ff/x")
    assert e.value.message.startswith("`zfs get used nosuchpool-ff/x` failed")
    assert "does not exist" in e.value.message and e.value.missing
    with pytest.raises(ExternalFailure) as e2:
        ZfsRunner(zfs_binary="/nonexistent/zfs").zfs("list")
    assert "not installed" in e2.value.message


def test_names_that_are_not_datasets_are_refused(tmp_path: Path) -> None:
    for bad in ("", "/", "pool/../x", "pool@snap", "pool//x", "pool/a b"):
        with pytest.raises(InvalidInput):
            ZfsStorage(tmp_path, bad)
    s = ZfsStorage(tmp_path, "pool/fleet")
    for bad in ("../x", "a/b", "A", "a@b", ""):
        with pytest.raises(InvalidInput):
            s.create_instance(bad)
    layout = ZfsLayout(tmp_path, "pool/fleet")
    install = layout.expected("pool/fleet/instances/a/install")
    assert install is not None and install.readonly is True and install.canmount == "noauto"
    assert layout.expected("pool/other") is None


def test_snapshots_are_listed_in_the_order_they_were_taken_even_within_one_second(storage: ZfsStorage) -> None:
    # ZFS creation times have whole seconds: names that sort the other way must still come out as taken
    # (a move restores, and replication sends, the newest snapshot as the list says it). Under load three
    # snapshots can straddle a second, so each round starts on a fresh second, and a round that still
    # straddles one is taken again; every round's order is checked either way.
    taken = ["zz-first", "mm-second", "aa-third"]
    within_one_second = False
    for round_ in range(5):
        instance = f"alice{round_}"
        data = storage.create_instance(instance).data
        time.sleep(1 - time.time() % 1)
        for i, name in enumerate(taken):
            (data / "world.db").write_text(f"version {i}")
            storage.snapshots.take(instance, data, name)
        listed = storage.snapshots.list(instance)
        assert [s.name for s in listed] == taken
        if len({int(s.created_at) for s in listed}) == 1:
            within_one_second = True
            break
    assert within_one_second, "in five rounds the three snapshots never fell within one second"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
                    reason="needs root, unshare and nsenter to run the fleet in a mount namespace of its own")
def test_in_a_mount_namespace_of_its_own_zfs_mounts_land_in_the_hosts(tmp_path: Path) -> None:
    """As under its systemd unit's sandbox: what the runner mounts (zfs mount, zfs create) must be the
    host's mount, seen by everyone, and still seen from inside the sandbox."""
    # A shared mount for the sandbox's to follow, as systemd makes every mount of a host.
    parent = tmp_path / "host"
    parent.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "fleet-test-host", str(parent)], check=True)
    subprocess.run(["mount", "--make-shared", str(parent)], check=True)
    target = parent / "mounted here"
    target.mkdir()
    # The host's namespace is PID 1's; where that cannot be read (a container's init), this test's.
    host = "/proc/1/ns/mnt" if os.access("/proc/1/ns/mnt", os.R_OK) else f"/proc/{os.getpid()}/ns/mnt"
    script = (
        "import os, sys; from pathlib import Path\n"
        "from foundry_fleet.storage import zfs_cmd\n"
        "from foundry_fleet.storage.zfs_cmd import ZfsRunner, host_namespace_prefix\n"
        f"zfs_cmd.HOST_MOUNT_NAMESPACE = {host!r}\n"
        f"assert host_namespace_prefix()[1:] == ('--mount={host}', '--'), host_namespace_prefix()\n"
        f"ZfsRunner().run(['mount', '-t', 'tmpfs', 'fleet-test', {str(target)!r}])\n"
        f"print(os.path.ismount({str(target)!r}))\n"
    )
    inside = subprocess.run(["unshare", "--mount", "--propagation", "slave", sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert inside.returncode == 0, inside.stderr
        assert inside.stdout.strip() == "True", "the sandbox does not see the mount it asked for"
        assert os.path.ismount(target), "the mount stayed in the sandbox's namespace"
    finally:
        subprocess.run(["umount", str(target)], check=False)
        subprocess.run(["umount", str(parent)], check=False)
    assert host_namespace_prefix() == ()  # this test's own process is in the host's namespace
