"""The host-wide release cache: cache first, locked, and read-only once a release is in.

On disk, under `cache_dir`:

    zips/<sha256>.zip        every zip a release was unpacked from
    versions/<version>/      the unpacked, read-only tree (instances are hard-linked from it)
    versions/<version>.json  the ReleaseInfo manifest; written last, so a manifest means "complete"
    sources.json             redacted URL (scheme, host, path) -> version, for cache-first downloads
    tmp/<id>/ + <id>.lock    work in progress; a folder whose lock nobody holds is a crash's leftover
    locks/                   lock files: one per source, one per version, one for sources.json

foundryvtt.com rate-limits hosts that download too often, and its timed links expire within minutes,
so a link that names a release we already have never reaches the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from filelock import FileLock, Timeout

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict, ExternalFailure, InvalidInput, NotFound
from foundry_fleet.domain.release import ReleaseInfo, ReleaseLayout, format_version, parse_version
from foundry_fleet.domain.urls import redact_url
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.releases.layout import detect_layout, read_version
from foundry_fleet.releases.policy import DownloadPolicy, ProgressCallback, UnpackLimits
from foundry_fleet.releases.unpack import make_writable, refuse_non_zip, safe_unpack

if TYPE_CHECKING:  # a node's `nomad provision` reads the cache and never downloads: no HTTP client for it
    import httpx

log = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 1024 * 1024
# Foundry's own file names end in the version: FoundryVTT-13.345.zip, FoundryVTT-Node-13.345.zip.
_VERSION_IN_NAME = re.compile(r"(?:^|[-_])(\d{1,3})\.(\d{1,6})\.zip$", re.IGNORECASE)
# A tmp leftover lock file with no folder is only swept once it is this old: a fresh one may belong to
# an add that has taken its lock but not yet made its folder.
_STALE_LOCK_SECONDS = 3600.0


class TimedLinks(Protocol):
    """Where timed download links come from (a foundryvtt.com account); asked only on a cache miss."""

    def presigned_url(self, version: str) -> str: ...


class ReleaseCache:
    """Add, find, list and remove unpacked Foundry releases.

    Safe to use from several threads and processes at once: a per-source lock makes concurrent adds of
    one link download once, and a per-version lock guards unpacking into place and the manifest.
    """

    def __init__(
        self,
        cache_dir: Path,
        policy: DownloadPolicy,
        limits: UnpackLimits,
        transport: httpx.BaseTransport | None = None,
        lock_timeout: float = 3600.0,
    ) -> None:
        self.root = Path(cache_dir).resolve()
        self.policy = policy
        self.limits = limits
        self.transport = transport
        self.lock_timeout = lock_timeout  # a download of a large zip on a slow line takes a while

    @classmethod
    def from_config(cls, config: FleetConfig, transport: httpx.BaseTransport | None = None) -> ReleaseCache:
        return cls(
            config.paths.releases,
            DownloadPolicy.from_config(config.releases),
            UnpackLimits.from_config(config.releases),
            transport=transport,
        )

    # -- where things live -------------------------------------------------------------------------

    @property
    def zips_dir(self) -> Path:
        return self.root / "zips"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def sources_file(self) -> Path:
        return self.root / "sources.json"

    def _manifest(self, version: str) -> Path:
        return self.versions_dir / f"{version}.json"

    # -- reading -----------------------------------------------------------------------------------

    def get(self, version: str) -> ReleaseInfo | None:
        """The cached release `version` (e.g. "13.345"), or None when it is not (completely) cached."""
        info = self._read_manifest(_canonical(version))
        if info is None or not Path(info.path).is_dir():
            return None
        return info

    def list(self) -> list[ReleaseInfo]:
        """Every cached release, oldest first by (generation, build)."""
        if not self.versions_dir.is_dir():
            return []
        found: list[ReleaseInfo] = []
        for manifest in self.versions_dir.glob("*.json"):
            try:
                info = self.get(manifest.stem)
            except InvalidInput:
                continue  # not a manifest of ours
            if info is not None:
                found.append(info)
        return sorted(found, key=lambda info: (info.generation, info.build))

    # -- adding ------------------------------------------------------------------------------------

    def add(self, source: str, progress: ProgressCallback | None = None) -> ReleaseInfo:
        """Cache the release at `source`: a local zip path or an https:// link; returns it.

        A release already in the cache is returned without downloading or unpacking anything.
        """
        if "://" in source:
            return self._add_url(source, progress)
        return self._add_zip_file(Path(source), progress)

    def _add_url(self, url: str, progress: ProgressCallback | None) -> ReleaseInfo:
        shown = redact_url(url)
        if not shown.startswith("https://"):
            # Refused before the cache is even consulted, so a bad link fails the same way every time.
            problem = "only https:// downloads are allowed" if "://" in shown else "it is not a valid URL"
            raise InvalidInput(
                f"refusing to download {shown}: {problem}", "use the https:// link foundryvtt.com gives you"
            )
        cached = self._cached_for_url(shown)
        if cached is not None:
            log.info("release %s for %s is already cached", cached.version, shown)
            return cached
        self._prepare()
        with self._lock(f"source-{_short_hash(shown)}", shown):
            # Whoever held the lock before us may have just cached this very link.
            cached = self._cached_for_url(shown)
            if cached is not None:
                return cached
            from foundry_fleet.releases.fetch import download  # brings httpx: only a download needs it

            with self._work_dir() as work:
                zip_path = work / "release.zip"
                sha256, size = download(url, zip_path, self.policy, progress, self.transport)
                info = self._install(zip_path, sha256, size, shown, work, progress)
            self._remember_source(shown, info.version)
            return info

    def add_version(
        self, version: str, links: Callable[[], TimedLinks], progress: ProgressCallback | None = None
    ) -> ReleaseInfo:
        """Cache release `version` from a timed link that `links()` hands out; a cached version asks nothing.

        The version's account lock is held across the link and the download, so concurrent adds of one
        version log in once: the site rate-limits hosts that log in often.
        """
        version = _canonical(version)
        cached = self.get(version)
        if cached is not None:
            log.info("release %s is already cached", version)
            return cached
        self._prepare()
        with self._lock(f"account-{version}", f"release {version}"):
            cached = self.get(version)
            if cached is not None:
                return cached
            from foundry_fleet.releases.fetch import download  # brings httpx: only a download needs it

            url = links().presigned_url(version)
            shown = redact_url(url)
            with self._work_dir() as work:
                zip_path = work / "release.zip"
                sha256, size = download(url, zip_path, self.policy, progress, self.transport)
                info = self._install(zip_path, sha256, size, shown, work, progress)
            self._remember_source(shown, info.version)
        if info.version != version:
            raise ExternalFailure(f"asked for release {version}, but the zip held release {info.version} "
                                  f"(now cached as {info.version})", "check the version, then add it again")
        return info

    def _add_zip_file(self, path: Path, progress: ProgressCallback | None) -> ReleaseInfo:
        if not path.is_file():
            raise NotFound(f"release zip {path} does not exist", "check the path, or pass an https:// link")
        refuse_non_zip(path)  # fast, and before hashing a large installer for nothing
        sha256, _size = _hash_file(path)
        cached = self._cached_by_sha(sha256)
        if cached is not None:
            log.info("release %s (zip %s) is already cached", cached.version, sha256[:12])
            return cached
        self._prepare()
        with self._lock(f"source-{sha256[:32]}", str(path)):
            cached = self._cached_by_sha(sha256)
            if cached is not None:
                return cached
            with self._work_dir() as work:
                zip_path = work / "release.zip"
                copied_sha256, size = _copy_hashing(path, zip_path)
                if copied_sha256 != sha256:
                    raise ExternalFailure(
                        f"{path} changed while it was being added", "wait until the file is fully written, then retry"
                    )
                return self._install(zip_path, sha256, size, str(path.resolve()), work, progress)

    def _install(
        self,
        zip_path: Path,
        sha256: str,
        zip_bytes: int,
        source: str,
        work: Path,
        progress: ProgressCallback | None,
    ) -> ReleaseInfo:
        """Unpack in `work`, then move into place under the version's lock; the manifest goes last."""
        tree = work / "tree"
        unpacked_bytes = safe_unpack(zip_path, tree, self.limits, progress)
        layout, app_root, entry = detect_layout(tree)
        generation, build = read_version(app_root, layout)
        version = format_version(generation, build)
        with self._lock(f"version-{version}", f"release {version}"):
            existing = self._read_manifest(version)
            if existing is not None and Path(existing.path).is_dir():
                if existing.sha256 == sha256:
                    return existing
                raise Conflict(
                    f"release {version} is already cached from a different zip "
                    f"(cached sha256 {existing.sha256[:12]}, this zip {sha256[:12]})",
                    f"if you mean to replace it, remove the cached release {version} first; "
                    "otherwise use the cached one",
                )
            final = self.versions_dir / version
            self._discard_incomplete(version)
            # Moving a folder to another parent rewrites its "..", which needs write permission on it:
            # open the sealed top folder for the move, then seal it again.
            os.chmod(tree, 0o755)
            os.rename(tree, final)
            os.chmod(final, 0o555)
            stored_zip = self.zips_dir / f"{sha256}.zip"
            os.replace(zip_path, stored_zip)
            os.chmod(stored_zip, 0o444)
            info = ReleaseInfo(
                version=version,
                generation=generation,
                build=build,
                layout=layout,
                entry=entry,
                sha256=sha256,
                zip_bytes=zip_bytes,
                unpacked_bytes=unpacked_bytes,
                path=str(final / app_root.relative_to(tree)),
                source=source,
            )
            _write_json_atomically(self._manifest(version), _info_to_json(info))
        log.info("cached release %s (%s layout) from %s", version, layout.value, source)
        return info

    # -- removing ----------------------------------------------------------------------------------

    def remove(self, version: str) -> None:
        """Delete a cached release: manifest first (so it stops counting as cached), then tree and zip.

        Instances already installed from it keep working: their hard links keep the file contents.
        """
        version = _canonical(version)
        with self._lock(f"version-{version}", f"release {version}"):
            info = self._read_manifest(version)
            tree = self.versions_dir / version
            if info is None and not tree.exists():
                raise NotFound(f"release {version} is not in the cache", "list the cached releases to see what is there")
            self._manifest(version).unlink(missing_ok=True)
            self._discard_incomplete(version)
            if info is not None and self._cached_by_sha(info.sha256) is None:
                (self.zips_dir / f"{info.sha256}.zip").unlink(missing_ok=True)
        if self.sources_file.exists():
            with self._lock("sources", "the sources list"):
                sources = self._read_sources()
                kept = {url: v for url, v in sources.items() if v != version}
                if kept != sources:
                    _write_json_atomically(self.sources_file, kept)
        log.info("removed release %s from the cache", version)

    # -- cache lookups -----------------------------------------------------------------------------

    def _cached_for_url(self, shown: str) -> ReleaseInfo | None:
        known = self._read_sources().get(shown)
        if known is not None:
            with contextlib.suppress(InvalidInput):
                info = self.get(known)
                if info is not None:
                    return info
        match = _VERSION_IN_NAME.search(shown.rsplit("/", 1)[-1])
        if match is not None:
            return self.get(format_version(int(match.group(1)), int(match.group(2))))
        return None

    def _cached_by_sha(self, sha256: str) -> ReleaseInfo | None:
        return next((info for info in self.list() if info.sha256 == sha256), None)

    def _read_manifest(self, version: str) -> ReleaseInfo | None:
        try:
            raw = json.loads(self._manifest(version).read_text(encoding="utf-8"))
            return _info_from_json(raw)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring the unreadable manifest of release %s: %s", version, e)
            return None

    def _read_sources(self) -> dict[str, str]:
        try:
            data = json.loads(self.sources_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("ignoring the unreadable %s", self.sources_file)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _remember_source(self, shown: str, version: str) -> None:
        with self._lock("sources", "the sources list"):
            sources = self._read_sources()
            sources[shown] = version
            _write_json_atomically(self.sources_file, sources)

    # -- housekeeping ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        for folder in (self.zips_dir, self.versions_dir, self.tmp_dir, self.locks_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._sweep_tmp()

    def _sweep_tmp(self) -> None:
        """Remove work folders left by crashed adds: those whose lock nobody holds."""
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                try:
                    self._sweep_one(entry)
                except FileNotFoundError:
                    continue  # another sweep (or its owner) got there first

    def _sweep_one(self, entry: os.DirEntry[str]) -> None:
        is_lock = entry.name.endswith(".lock")
        if is_lock:
            has_folder = (self.tmp_dir / entry.name.removesuffix(".lock")).exists()
            young = time.time() - entry.stat(follow_symlinks=False).st_mtime < _STALE_LOCK_SECONDS
            if has_folder or young:
                return  # judged together with its folder, or an add that is just starting
        lock_path = self.tmp_dir / (entry.name if is_lock else f"{entry.name}.lock")
        lock = FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return  # an add in progress, in this process or another
        try:
            if not is_lock:
                log.info("removing %s, left over by an interrupted add", entry.path)
                _remove_path(Path(entry.path))
            lock_path.unlink(missing_ok=True)
        finally:
            lock.release()

    @contextlib.contextmanager
    def _work_dir(self) -> Iterator[Path]:
        """A private folder under tmp/, held by a lock so a concurrent sweep leaves it alone."""
        work_id = uuid.uuid4().hex
        lock_path = self.tmp_dir / f"{work_id}.lock"
        # The lock is taken before the folder exists, so a sweep that sees the folder sees it locked.
        with FileLock(lock_path):
            work = self.tmp_dir / work_id
            work.mkdir()
            try:
                yield work
            finally:
                _remove_path(work)
                lock_path.unlink(missing_ok=True)

    def _discard_incomplete(self, version: str) -> None:
        """Remove a tree (and half-written manifests) of `version` that no manifest vouches for."""
        tree = self.versions_dir / version
        if tree.exists() or tree.is_symlink():
            _remove_path(tree)
        for partial in self.versions_dir.glob(f".{version}.json.*.tmp"):
            partial.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self, name: str, what: str) -> Iterator[None]:
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.locks_dir / f"{name}.lock", timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise Conflict(
                f"another add or remove of {what} has held the release cache lock for {self.lock_timeout:.0f}s",
                "wait for it to finish, then try again",
            ) from None
        try:
            yield
        finally:
            lock.release()


def _canonical(version: str) -> str:
    """ "13.345" stays "13.345"; anything that is not a version is refused (it becomes a path)."""
    return format_version(*parse_version(version))


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: Path, dest: Path) -> tuple[str, int]:
    """Copy and hash in one pass, so the hash is of exactly the bytes kept."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as source, open(dest, "xb") as out:
        while chunk := source.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _remove_path(path: Path) -> None:
    """Remove a file or a (possibly read-only) tree; symlinks are removed, never followed."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    make_writable(path)
    shutil.rmtree(path)


def _info_to_json(info: ReleaseInfo) -> dict[str, Any]:
    data = dataclasses.asdict(info)
    data["layout"] = info.layout.value
    return data


def _info_from_json(data: dict[str, Any]) -> ReleaseInfo:
    names = {field.name for field in dataclasses.fields(ReleaseInfo)}
    values = {name: data[name] for name in names}
    values["layout"] = ReleaseLayout(values["layout"])
    return ReleaseInfo(**values)


def _write_json_atomically(path: Path, data: object) -> None:
    """Write to a hidden temporary file, fsync, then rename over `path`: readers see old or new, never half."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o644)
