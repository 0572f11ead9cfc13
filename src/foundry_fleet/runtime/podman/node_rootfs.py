"""A minimal root filesystem for a host node binary, packed as a reproducible tar stream.

The image holds the node binary at /usr/local/bin/node (and /usr/bin/node pointing at it), the files
of the builtins its build keeps outside the binary (Debian's nodejs loads cjs-module-lexer, undici and
acorn from /usr/share/nodejs, and aborts at start without them), every library `ldd` names and the dynamic loader at the paths the binary looks them up by (symlinks, also
directory symlinks such as a merged-usr /lib, kept as symlinks), the rest of the C and C++ runtime
native addons link (found beside libc), and a small /etc: passwd and group
with root and nobody, nsswitch.conf, the host's CA bundle (Node's https to foundryvtt.com), no shell.
The stream is the same for the same inputs: sorted entries, mtime 0, owner 0:0, no user names, so an
unchanged node gives the same layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from foundry_fleet.domain.errors import ExternalFailure, Unsupported
from foundry_fleet.files.atomic import write_atomic

NODE_IN_IMAGE = "/usr/local/bin/node"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE

_PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = "root:x:0:\nnogroup:x:65534:\n"
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\n"
# Mount points the runtime binds over (podman adds /etc/hosts, resolv.conf and hostname itself).
_EMPTY_DIRS = ("dev", "proc", "sys", "etc", "usr/local/bin", "usr/bin", "foundry", "data", "root")
# Beside libc, not in node's own ldd list: glibc dlopens the nss modules for name lookups, and the
# native addons of a Node application (Foundry's sharp, classic-level) link the rest of the C and C++
# runtime. Taken from libc's directory when there; each is small.
_EXTRA_LIBRARIES = (
    "libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2", "librt.so.1", "libm.so.6",
    "libpthread.so.0", "libdl.so.2", "libutil.so.1", "libgcc_s.so.1", "libstdc++.so.6",
)


@dataclass(frozen=True)
class NodeBinary:
    """A host node binary, identified by its content."""

    path: str  # resolved, absolute
    version: str  # "20.20.2"
    major: int
    sha256: str  # hex; of the binary, and of its externalized builtins where it has any
    builtins: tuple[str, ...] = ()  # files its externalized builtins are loaded from (see shared_builtins)


@dataclass(frozen=True)
class Entry:
    """One member of the root filesystem, at `path` (relative, no leading slash)."""

    path: str
    kind: Literal["dir", "file", "symlink"]
    mode: int
    source: str | None = None  # host file to copy (kind "file", unless data is set)
    data: bytes | None = None  # literal content (kind "file")
    target: str | None = None  # kind "symlink"
    size: int = 0


_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
_identity_cache: dict[tuple[str, int, int, int, int, int], NodeBinary] = {}


async def inspect_node(path: str, cache_file: Path | None = None) -> NodeBinary:
    """Version and digest of the node binary at `path`, cached on the file's identity (device, inode,
    size, mtime and ctime: any replacement or write changes one) in memory and, when given, in
    `cache_file`, so a daemon's first start after a restart does not hash ~100 MB again."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise Unsupported(f"the node binary {path} cannot be read: {e.strerror}",
                          'set [node] binaries."<generation>" = "/path/to/node" in fleet.toml') from None
    key = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if (hit := _identity_cache.get(key)) is not None:
        return hit
    stored = _read_cache(cache_file)
    record = stored.get(real)
    if isinstance(record, dict) and record.get("identity") == list(key[1:]):
        try:
            found = NodeBinary(real, str(record["version"]), int(record["major"]), str(record["sha256"]),
                               tuple(str(b) for b in record.get("builtins", [])))
        except (KeyError, TypeError, ValueError):
            found = None
        if found is not None:
            _identity_cache[key] = found
            return found
    version = await _node_version(real)
    builtins = await _shared_builtins_of(real)
    digest = await asyncio.to_thread(_digest, real, builtins)
    found = NodeBinary(path=real, version=version, major=int(version.split(".")[0]), sha256=digest, builtins=builtins)
    _identity_cache[key] = found
    if cache_file is not None:
        stored[real] = {"identity": list(key[1:]), "version": found.version, "major": found.major,
                        "sha256": found.sha256, "builtins": list(found.builtins)}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache_file, json.dumps(stored, indent=1, sort_keys=True) + "\n", mode=0o600)
        except OSError:
            pass  # only a cache: the next process hashes again
    return found


def _read_cache(cache_file: Path | None) -> dict[str, object]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def _node_version(path: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            path, "--version", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        raise Unsupported(f"the node binary {path} cannot be run: {e.strerror}",
                          'set [node] binaries."<generation>" = "/path/to/node" in fleet.toml') from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ExternalFailure(f"{path} --version did not answer in 20 s") from None
    m = _VERSION.match(out.decode(errors="replace").strip())
    if proc.returncode != 0 or not m:
        raise Unsupported(f"{path} --version did not print a Node.js version ({out[:60]!r})",
                          'set [node] binaries."<generation>" = "/path/to/node" in fleet.toml')
    return ".".join(m.groups())


_SHARED_BUILTIN = re.compile(r"^NODE_SHARED_BUILTIN_\w+_PATH=(/\S+)$")


def shared_builtins(defines: object) -> tuple[str, ...]:
    """The files a node build loads builtins from at start, from the defines it was built with
    (`process.config.target_defaults.defines`: `NODE_SHARED_BUILTIN_<NAME>_PATH=<file>`), sorted."""
    if not isinstance(defines, list):
        return ()
    found = {m.group(1) for d in defines if isinstance(d, str) and (m := _SHARED_BUILTIN.match(d))}
    return tuple(sorted(found))


async def _shared_builtins_of(path: str) -> tuple[str, ...]:
    """`shared_builtins` of the node at `path`; none when it does not say (an official build keeps all
    its builtins inside the binary)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            path, "-p", "JSON.stringify(process.config.target_defaults.defines || [])",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return ()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ()
    try:
        return shared_builtins(json.loads(out))
    except ValueError:
        return ()


def _digest(binary: str, builtins: tuple[str, ...]) -> str:
    """The binary's sha256, or with builtins beside it, one over the binary and each builtin file."""
    digest = _sha256(binary)
    if not builtins:
        return digest
    h = hashlib.sha256(digest.encode())
    for path in builtins:
        h.update(f"\0{path}\0{_sha256(path)}".encode())
    return h.hexdigest()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# -- what goes in -------------------------------------------------------------------------------------

_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(\S+)?\s*(?:\(0x[0-9a-f]+\))?\s*$")


def parse_ldd(output: str) -> list[str]:
    """Absolute library paths from `ldd` output; a library ldd could not find is an error naming it."""
    found: list[str] = []
    missing: list[str] = []
    for line in output.splitlines():
        line = line.strip()
        if not line or "statically linked" in line or "not a dynamic executable" in line:
            continue
        if "=> not found" in line:
            missing.append(line.split()[0])
            continue
        m = _LDD_LINE.match(line)
        path = m.group(2) if m else None
        if path and path.startswith("/"):
            found.append(path)
        # linux-vdso.so.1 and similar have no file: the kernel maps them.
    if missing:
        raise Unsupported(f"node needs libraries the host does not have: {', '.join(missing)}",
                          "install them (the node binary must run on the host) or configure a node image")
    return found


async def libraries_of(binary: str) -> list[str]:
    """The shared libraries and loader `binary` needs, by asking ldd."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "ldd", binary, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except FileNotFoundError:
        raise Unsupported("ldd was not found: it is needed to build the node image from the host's node",
                          "install it (apt libc-bin) or configure a node image in [podman]") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ExternalFailure(f"ldd {binary} did not answer in 30 s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0 and "not a dynamic executable" not in text + err.decode(errors="replace"):
        raise ExternalFailure(f"ldd {binary} failed: {err.decode(errors='replace').strip()[:200]}")
    return parse_ldd(text)


class _Tree:
    """Entries keyed by path; adding a host path adds every directory and symlink on the way to it."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        self.entries.setdefault(entry.path, entry)

    def add_dirs(self, path: str, mode: int = 0o755) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.add(Entry("/".join(parts[:i]), "dir", mode))

    def add_host_path(self, host_path: str, depth: int = 0) -> None:
        """Copy `host_path` at its own path, keeping the symlinks on the way so the same name resolves."""
        if depth > 40:
            raise ExternalFailure(f"too many levels of symlinks resolving {host_path}")
        parts = [p for p in host_path.split("/") if p]
        current = ""
        for i, part in enumerate(parts):
            here = f"{current}/{part}"
            rel = here.lstrip("/")
            try:
                st = os.lstat(here)
            except OSError as e:
                raise ExternalFailure(f"{host_path} (needed by node) cannot be read: {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(here)
                self.add(Entry(rel, "symlink", 0o777, target=target))
                resolved = os.path.normpath(os.path.join(current or "/", target))
                self.add_host_path(resolved, depth + 1)
                current = os.path.realpath(here)
            elif stat.S_ISDIR(st.st_mode):
                self.add(Entry(rel, "dir", 0o755))
                current = here
            elif stat.S_ISREG(st.st_mode) and i == len(parts) - 1:
                self.add(Entry(rel, "file", _file_mode(st.st_mode), source=here, size=st.st_size))
            else:
                raise ExternalFailure(f"{here} (on the way to {host_path}) is not a file, directory or symlink")


def _file_mode(host_mode: int) -> int:
    """Executable bits kept, nothing writable but by the owner, no setuid/setgid."""
    return 0o755 if host_mode & 0o111 else 0o644


async def collect(binary: NodeBinary) -> list[Entry]:
    """Every entry of the image's root filesystem, sorted, parents before children."""
    tree = _Tree()
    for d in _EMPTY_DIRS:
        tree.add_dirs(d)
    tree.add(Entry("tmp", "dir", 0o1777))
    size = os.stat(binary.path).st_size
    tree.add(Entry(NODE_IN_IMAGE.lstrip("/"), "file", 0o755, source=binary.path, size=size))
    tree.add(Entry("usr/bin/node", "symlink", 0o777, target=NODE_IN_IMAGE))
    for builtin in binary.builtins:
        tree.add_host_path(builtin)
    libraries = await libraries_of(binary.path)
    for lib in libraries:
        tree.add_host_path(lib)
    for lib in libraries:
        if os.path.basename(lib).startswith("libc.so"):
            for extra in _EXTRA_LIBRARIES:
                candidate = os.path.join(os.path.dirname(lib), extra)
                if os.path.exists(candidate):
                    tree.add_host_path(candidate)
    for name, text in (("etc/passwd", _PASSWD), ("etc/group", _GROUP), ("etc/nsswitch.conf", _NSSWITCH)):
        data = text.encode()
        tree.add(Entry(name, "file", 0o644, data=data, size=len(data)))
    if os.path.isfile(CA_BUNDLE):
        tree.add_dirs(os.path.dirname(CA_BUNDLE))
        data = Path(CA_BUNDLE).read_bytes()  # copied as content: on the host it is often a symlink
        tree.add(Entry(CA_BUNDLE.lstrip("/"), "file", 0o644, data=data, size=len(data)))
    return sorted(tree.entries.values(), key=lambda e: e.path)


def ca_bundle_present() -> bool:
    return os.path.isfile(CA_BUNDLE)


# -- the tar stream -----------------------------------------------------------------------------------


def total_bytes(entries: list[Entry]) -> int:
    """Length of the stream `pack` yields for these entries."""
    headers = sum(len(_header(e)) for e in entries)
    data = sum(_padded(e.size) for e in entries if e.kind == "file")
    return headers + data + 2 * _BLOCK


def _padded(n: int) -> int:
    return (n + _BLOCK - 1) // _BLOCK * _BLOCK


def _header(e: Entry) -> bytes:
    info = tarfile.TarInfo(e.path + ("/" if e.kind == "dir" else ""))
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = e.mode
    if e.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif e.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = e.target or ""
    else:
        info.type = tarfile.REGTYPE
        info.size = e.size
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


async def pack(entries: list[Entry], sent: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    """The tar stream of `entries`; `sent(n)` hears the running byte count. A host file that changed
    size while being packed is an error (the header already said its size)."""
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if sent is not None:
            sent(done)

    for e in entries:
        head = _header(e)
        yield head
        step(len(head))
        if e.kind != "file":
            continue
        if e.data is not None:
            body = e.data + b"\0" * (_padded(e.size) - e.size)
            yield body
            step(len(body))
            continue
        assert e.source is not None
        f = await asyncio.to_thread(open, e.source, "rb")
        try:
            left = e.size
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, left))
                if not chunk:
                    raise ExternalFailure(f"{e.source} shrank while it was being packed",
                                          "run it again once the host's node or libraries have finished changing")
                left -= len(chunk)
                yield chunk
                step(len(chunk))
        finally:
            f.close()
        pad = _padded(e.size) - e.size
        if pad:
            yield b"\0" * pad
            step(pad)
    yield b"\0" * (2 * _BLOCK)
    step(2 * _BLOCK)
