"""ReleaseCache: cache first, locked, read-only, and nothing left behind when a zip is refused."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict, ExternalFailure, FleetError, InvalidInput, NotFound, Unsupported
from foundry_fleet.domain.release import ReleaseInfo, ReleaseLayout
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import MIB, DownloadPolicy
from tests.support.releases import (
    LocalHTTPS,
    Route,
    assert_cache_clean,
    assert_read_only_tree,
    file,
    local_policy,
    make_release_zip,
    small_limits,
    symlink,
    write_zip,
)

SECRET = "verify=S3CR3T&expires=1"
OFFLINE = DownloadPolicy(allowed_hosts=("foundryvtt.com", "*.foundryvtt.com"), max_download_bytes=10 * MIB)


@pytest.fixture
def cache(tmp_path: Path) -> ReleaseCache:
    return ReleaseCache(tmp_path / "cache", OFFLINE, small_limits())


def web_cache(tmp_path: Path, server: LocalHTTPS, **policy: object) -> ReleaseCache:
    return ReleaseCache(tmp_path / "cache", local_policy(server, **policy), small_limits())


def assert_entry_runs(info: ReleaseInfo) -> None:
    entry = Path(info.path) / info.entry
    assert entry.is_file(), entry
    assert entry.read_text().startswith("// Foundry server entry")


# -- adding local zips -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "expected", "generation", "build"),
    [
        ("node", ReleaseLayout.NODE, 13, 345),
        ("linux", ReleaseLayout.LINUX, 13, 346),
        ("legacy", ReleaseLayout.LEGACY_NODE, 12, 331),
    ],
)
def test_add_each_layout(
    cache: ReleaseCache, tmp_path: Path, layout: str, expected: ReleaseLayout, generation: int, build: int
) -> None:
    zip_path = make_release_zip(tmp_path / f"{layout}.zip", layout, generation, build)
    info = cache.add(str(zip_path))
    version = f"{generation}.{build}"
    assert (info.version, info.generation, info.build, info.layout) == (version, generation, build, expected)
    assert info.path == str(cache.root / "versions" / version)
    assert info.entry == expected.entry
    assert_entry_runs(info)
    assert info.source == str(zip_path.resolve())
    assert info.zip_bytes == zip_path.stat().st_size
    assert info.unpacked_bytes > 0
    assert (cache.root / "zips" / f"{info.sha256}.zip").read_bytes() == zip_path.read_bytes()
    assert_read_only_tree(cache.root / "versions" / version)
    assert stat.S_IMODE((cache.root / "zips" / f"{info.sha256}.zip").stat().st_mode) == 0o444
    manifest = json.loads((cache.root / "versions" / f"{version}.json").read_text())
    assert manifest["layout"] == expected.value and manifest["sha256"] == info.sha256
    assert cache.get(version) == info
    assert cache.list() == [info]
    assert list((cache.root / "tmp").iterdir()) == []


def test_a_wrapped_zip_points_at_the_folder_inside(cache: ReleaseCache, tmp_path: Path) -> None:
    info = cache.add(str(make_release_zip(tmp_path / "w.zip", wrapper="FoundryVTT-13.345")))
    assert info.path == str(cache.root / "versions" / "13.345" / "FoundryVTT-13.345")
    assert info.entry == "main.js"
    assert_entry_runs(info)


def test_the_same_zip_again_is_a_cache_hit(cache: ReleaseCache, tmp_path: Path) -> None:
    first = cache.add(str(make_release_zip(tmp_path / "a.zip")))
    manifest = cache.root / "versions" / "13.345.json"
    before = manifest.stat().st_mtime_ns
    copy = tmp_path / "elsewhere" / "renamed.zip"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "a.zip").read_bytes())
    assert cache.add(str(copy)) == first  # same bytes, different name: recognised by sha256
    assert manifest.stat().st_mtime_ns == before


def test_list_is_sorted_by_generation_then_build(cache: ReleaseCache, tmp_path: Path) -> None:
    for layout, generation, build in [("node", 13, 345), ("legacy", 12, 331), ("node", 13, 9), ("legacy", 11, 315)]:
        cache.add(str(make_release_zip(tmp_path / f"{generation}-{build}.zip", layout, generation, build)))
    assert [i.version for i in cache.list()] == ["11.315", "12.331", "13.9", "13.345"]


def test_a_different_zip_with_a_cached_version_is_a_conflict(cache: ReleaseCache, tmp_path: Path) -> None:
    first = cache.add(str(make_release_zip(tmp_path / "a.zip")))
    other = make_release_zip(tmp_path / "b.zip", extra=[file("tampered.js", "x")])
    with pytest.raises(Conflict) as caught:
        cache.add(str(other))
    import hashlib

    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    assert first.sha256[:12] in caught.value.message and other_sha[:12] in caught.value.message
    assert "remove the cached release 13.345" in (caught.value.hint or "")
    assert cache.list() == [first]
    assert_cache_clean(cache.root, allowed_versions=("13.345",))


def test_missing_zip_is_not_found(cache: ReleaseCache, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        cache.add(str(tmp_path / "nope.zip"))


def test_get_refuses_things_that_are_not_versions(cache: ReleaseCache) -> None:
    assert cache.get("13.345") is None
    with pytest.raises(InvalidInput, match="not a Foundry version"):
        cache.get("../../etc")


def test_progress_reports_unpacking(cache: ReleaseCache, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int | None]] = []
    cache.add(str(make_release_zip(tmp_path / "a.zip")), progress=lambda *a: seen.append(a))
    assert {phase for phase, _, _ in seen} == {"unpack"}


# -- refusals leave nothing behind -------------------------------------------------------------------


def _evil(tmp_path: Path, name: str) -> Path:
    fake = tmp_path / name
    base = [file("main.js", "// Foundry server entry"), file("package.json", json.dumps({"release": {"generation": 13, "build": 1}}))]
    if name == "traversal.zip":
        return write_zip(fake, base + [file("../x", "pwned")])
    if name == "absolute.zip":
        return write_zip(fake, base + [file("/etc/x", "pwned")])
    if name == "symlink-out.zip":
        return write_zip(fake, base + [symlink("data/passwd", "../../etc/passwd")])
    if name == "symlink-absolute.zip":
        return write_zip(fake, base + [symlink("passwd", "/etc/passwd")])
    if name == "bomb.zip":
        return write_zip(fake, base + [file("zeros.bin", b"\x00" * (50 * MIB))])
    if name == "flood.zip":
        return write_zip(fake, base + [file(f"f/{i}", "") for i in range(1001)])
    if name == "installer.exe":
        fake.write_bytes(b"MZ" + os.urandom(2048))
        return fake
    if name == "image.dmg":
        fake.write_bytes(os.urandom(4096).replace(b"PK", b"pk") + b"koly" + b"\x00" * 508)
        return fake
    if name == "no-entry.zip":
        return write_zip(fake, [file("README.txt", "hello"), file("package.json", "{}")])
    if name == "no-generation.zip":
        return write_zip(fake, [file("main.js", "x"), file("package.json", json.dumps({"release": {"build": 1}}))])
    if name == "generation-99.zip":
        return make_release_zip(fake, "node", 99, 1)
    raise ValueError(name)


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("traversal.zip", InvalidInput, "outside the release folder"),
        ("absolute.zip", InvalidInput, "absolute path"),
        ("symlink-out.zip", InvalidInput, "points outside the release folder"),
        ("symlink-absolute.zip", InvalidInput, "absolute path '/etc/passwd'"),
        ("bomb.zip", InvalidInput, "unpacks to 50.0 MB, more than the limit of 20.0 MB"),
        ("flood.zip", InvalidInput, "more than the limit of 1000"),
        ("installer.exe", InvalidInput, "Windows installer"),
        ("image.dmg", InvalidInput, "macOS disk image"),
        ("no-entry.zip", InvalidInput, "no Foundry server entry point found (looked for main.js, resources/app/main.mjs, resources/app/main.js)"),
        ("no-generation.zip", InvalidInput, "package.json has no release.generation"),
        ("generation-99.zip", Unsupported, "generation 99 is not known"),
    ],
)
def test_refused_zips_leave_nothing_in_the_cache(
    cache: ReleaseCache, tmp_path: Path, name: str, error: type[FleetError], words: str
) -> None:
    bad = _evil(tmp_path, name)
    with pytest.raises(error) as caught:
        cache.add(str(bad))
    assert words in caught.value.message
    assert caught.value.hint
    assert_cache_clean(cache.root)
    assert cache.list() == []
    assert not (tmp_path / "x").exists() and not Path("/etc/x").exists()


def test_a_refused_zip_does_not_disturb_cached_releases(cache: ReleaseCache, tmp_path: Path) -> None:
    good = cache.add(str(make_release_zip(tmp_path / "good.zip")))
    with pytest.raises(InvalidInput):
        cache.add(str(_evil(tmp_path, "traversal.zip")))
    assert cache.list() == [good]
    assert_cache_clean(cache.root, allowed_versions=("13.345",))


# -- housekeeping ------------------------------------------------------------------------------------


def test_remove_deletes_the_read_only_tree_zip_manifest_and_sources(
    https_server: LocalHTTPS, tmp_path: Path
) -> None:
    cache = web_cache(tmp_path, https_server)
    https_server.routes["/dl"] = Route(body=make_release_zip(tmp_path / "a.zip").read_bytes())
    info = cache.add(https_server.url("/dl?" + SECRET))
    assert json.loads(cache.sources_file.read_text()) == {https_server.url("/dl"): "13.345"}

    cache.remove("13.345")
    assert cache.get("13.345") is None and cache.list() == []
    assert_cache_clean(cache.root)
    assert not Path(info.path).exists()
    with pytest.raises(NotFound, match="13.345 is not in the cache"):
        cache.remove("13.345")
    # Gone for real: the same link downloads again.
    cache.add(https_server.url("/dl?" + SECRET))
    assert https_server.count("/dl") == 2


def test_stale_leftovers_are_swept_on_add_but_work_in_progress_is_not(cache: ReleaseCache, tmp_path: Path) -> None:
    tmp = cache.root / "tmp"
    crashed = tmp / "deadbeef"
    (crashed / "tree" / "sub").mkdir(parents=True)
    (crashed / "tree" / "sub" / "f").write_text("x")
    os.chmod(crashed / "tree" / "sub", 0o555)  # read-only, like a half-sealed unpack
    busy = tmp / "cafebabe"
    busy.mkdir()
    # A half-moved release: its tree is there but no manifest vouches for it.
    half = cache.root / "versions" / "13.345"
    (half / "junk").mkdir(parents=True)
    orphan_lock, young_lock = tmp / "0ld.lock", tmp / "n3w.lock"  # locks whose folder never came
    orphan_lock.touch()
    young_lock.touch()
    two_hours_ago = time.time() - 7200
    os.utime(orphan_lock, (two_hours_ago, two_hours_ago))
    with FileLock(tmp / "cafebabe.lock"):  # another add, still running
        info = cache.add(str(make_release_zip(tmp_path / "a.zip")))
        assert not crashed.exists()
        assert busy.is_dir()
    assert not orphan_lock.exists()
    assert young_lock.exists()  # may be an add that has its lock but not yet its folder
    assert not (Path(info.path) / "junk").exists()
    assert_entry_runs(info)


def test_a_manifest_without_its_tree_does_not_count(cache: ReleaseCache, tmp_path: Path) -> None:
    info = cache.add(str(make_release_zip(tmp_path / "a.zip")))
    cache.remove("13.345")
    (cache.root / "versions").mkdir(exist_ok=True)
    (cache.root / "versions" / "13.345.json").write_text(json.dumps({**info.__dict__, "layout": info.layout.value}))
    assert cache.get("13.345") is None
    again = cache.add(str(tmp_path / "a.zip"))
    assert_entry_runs(again)


def test_from_config_uses_the_fleet_paths(tmp_path: Path) -> None:
    config = FleetConfig.model_validate({"fleet": {"root": str(tmp_path / "fleet")}})
    cache = ReleaseCache.from_config(config)
    assert cache.root == (tmp_path / "fleet" / "releases").resolve()
    assert cache.policy.allowed_hosts == ("foundryvtt.com", "*.foundryvtt.com")


# -- adding from links -------------------------------------------------------------------------------


def test_add_from_a_link_downloads_once_then_hits_the_cache(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/releases/13.345/download"] = Route(body=make_release_zip(tmp_path / "a.zip").read_bytes())
    cache = web_cache(tmp_path, https_server)
    seen: list[str] = []
    info = cache.add(https_server.url("/releases/13.345/download?" + SECRET), progress=lambda p, *_: seen.append(p))
    assert info.source == https_server.url("/releases/13.345/download")
    assert "?" not in info.source and "S3CR3T" not in (cache.root / "versions" / "13.345.json").read_text()
    assert seen[0] == "download" and seen[-1] == "unpack"
    assert https_server.count() == 1
    # A fresh timed link for the same file: same path, new signature. No request at all.
    again = cache.add(https_server.url("/releases/13.345/download?verify=OTHER&expires=2"))
    assert again == info
    assert https_server.count() == 1
    assert_entry_runs(info)


def test_a_link_naming_a_cached_version_makes_no_request(https_server: LocalHTTPS, tmp_path: Path) -> None:
    cache = web_cache(tmp_path, https_server)
    local = cache.add(str(make_release_zip(tmp_path / "FoundryVTT-13.345.zip")))
    for name in ("FoundryVTT-Node-13.345.zip", "FoundryVTT-13.345.zip"):
        assert cache.add(https_server.url(f"/releases/{name}?{SECRET}")) == local
    assert https_server.count() == 0


def test_a_link_to_a_zip_already_cached_under_another_name_is_recorded(https_server: LocalHTTPS, tmp_path: Path) -> None:
    cache = web_cache(tmp_path, https_server)
    zip_path = make_release_zip(tmp_path / "a.zip")
    local = cache.add(str(zip_path))
    https_server.routes["/get"] = Route(body=zip_path.read_bytes())
    assert cache.add(https_server.url("/get?" + SECRET)) == local
    assert cache.add(https_server.url("/get?" + SECRET)) == local
    assert https_server.count("/get") == 1
    assert_cache_clean(cache.root, allowed_versions=("13.345",))


def test_concurrent_adds_of_one_link_download_once(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/slow"] = Route(body=make_release_zip(tmp_path / "a.zip").read_bytes(), delay=0.5)
    results: list[ReleaseInfo] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def add(query: str) -> None:
        cache = web_cache(tmp_path, https_server)  # one cache object per thread, like two processes
        start.wait()
        try:
            results.append(cache.add(https_server.url("/slow?" + query)))
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=add, args=(q,)) for q in ("verify=A", "verify=B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 2 and results[0] == results[1]
    assert https_server.count("/slow") == 1


def test_refused_links_leave_nothing_and_keep_secrets(https_server: LocalHTTPS, tmp_path: Path) -> None:
    cache = web_cache(tmp_path, https_server, max_download_bytes=MIB)
    https_server.routes["/big"] = Route(body=b"x" * (2 * MIB), send_length=False)
    https_server.routes["/exe"] = Route(body=b"MZ" + os.urandom(1000))
    https_server.routes["/gone"] = Route(status=410)
    for path, error in [("/big", InvalidInput), ("/exe", InvalidInput), ("/gone", ExternalFailure)]:
        with pytest.raises(error) as caught:
            cache.add(https_server.url(f"{path}?{SECRET}"))
        for text in (caught.value.message, caught.value.hint or "", str(caught.value)):
            assert "S3CR3T" not in text
        assert_cache_clean(cache.root)
    with pytest.raises(InvalidInput, match="only https://"):
        cache.add(f"http://127.0.0.1:{https_server.port}/x.zip?{SECRET}")
    assert https_server.count() == 3


def test_zip_on_disk_matches_what_was_served(https_server: LocalHTTPS, tmp_path: Path) -> None:
    body = make_release_zip(tmp_path / "a.zip", "linux").read_bytes()
    https_server.routes["/linux.zip"] = Route(body=body)
    info = web_cache(tmp_path, https_server).add(https_server.url("/linux.zip"))
    stored = tmp_path / "cache" / "zips" / f"{info.sha256}.zip"
    assert stored.read_bytes() == body
    with zipfile.ZipFile(stored) as zf:
        assert "resources/app/main.mjs" in zf.namelist()
    assert info.layout is ReleaseLayout.LINUX
    assert os.readlink(Path(info.path) / "libffmpeg.so") == "libffmpeg.so.1"
