"""The node image's root filesystem: what ldd says is needed, symlinks kept on the way to it, and a tar
stream that is the same for the same inputs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import ExternalFailure, Unsupported
from foundry_fleet.runtime.podman.images import NodeImage, describe
from foundry_fleet.runtime.podman.node_rootfs import (
    Entry,
    NodeBinary,
    _identity_cache,
    _Tree,
    collect,
    inspect_node,
    pack,
    parse_ldd,
    shared_builtins,
    total_bytes,
)

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f4cc9f9c000)
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f4cc9c00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4cc9a1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f4cc9fb5000)
"""


def test_ldd_output_gives_the_libraries_and_the_loader() -> None:
    assert parse_ldd(LDD) == [
        "/lib/x86_64-linux-gnu/libdl.so.2",
        "/lib/x86_64-linux-gnu/libstdc++.so.6",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    assert parse_ldd("\tnot a dynamic executable\n") == []
    assert parse_ldd("\tstatically linked\n") == []


def test_a_library_ldd_cannot_find_is_named() -> None:
    with pytest.raises(Unsupported) as raised:
        parse_ldd(LDD + "\tlibatomic.so.1 => not found\n")
    assert "libatomic.so.1" in raised.value.message
    assert raised.value.hint


def test_symlinks_on_the_way_to_a_library_are_kept(tmp_path: Path) -> None:
    """A merged-usr /lib -> usr/lib and a versioned soname link both resolve inside the image as on the host."""
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/libx.so.1.2.3").write_bytes(b"\x7fELF")
    (tmp_path / "usr/lib/libx.so.1").symlink_to("libx.so.1.2.3")
    (tmp_path / "lib").symlink_to("usr/lib")
    tree = _Tree()
    tree.add_host_path(str(tmp_path / "lib/libx.so.1"))
    base = str(tmp_path).lstrip("/")
    got = {path[len(base) + 1:]: (e.kind, e.target) for path, e in tree.entries.items() if path.startswith(base + "/")}
    assert got == {
        "lib": ("symlink", "usr/lib"),
        "usr": ("dir", None),
        "usr/lib": ("dir", None),
        "usr/lib/libx.so.1": ("symlink", "libx.so.1.2.3"),
        "usr/lib/libx.so.1.2.3": ("file", None),
    }


def _entries(tmp_path: Path) -> list[Entry]:
    host = tmp_path / "node"
    host.write_bytes(os.urandom(3000))
    host.chmod(0o4775)  # setuid and group-writable on the host: neither reaches the image
    return sorted([
        Entry("usr", "dir", 0o755),
        Entry("usr/local", "dir", 0o755),
        Entry("usr/local/bin", "dir", 0o755),
        Entry("usr/local/bin/node", "file", 0o755, source=str(host), size=3000),
        Entry("usr/bin", "dir", 0o755),
        Entry("usr/bin/node", "symlink", 0o777, target="/usr/local/bin/node"),
        Entry("etc", "dir", 0o755),
        Entry("etc/passwd", "file", 0o644, data=b"root:x:0:0::/:/x\n", size=17),
        Entry("tmp", "dir", 0o1777),
    ], key=lambda e: e.path)


async def _stream(entries: list[Entry]) -> bytes:
    return b"".join([chunk async for chunk in pack(entries)])


def test_the_tar_stream_is_reproducible_and_owned_by_root(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    first = asyncio.run(_stream(entries))
    os.utime(tmp_path / "node", (1, 1))  # a touched file with the same content packs the same
    second = asyncio.run(_stream(entries))
    assert first == second
    assert len(first) == total_bytes(entries)
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [e.path for e in entries]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
        node = tar.getmember("usr/local/bin/node")
        assert node.mode == 0o755
        assert tar.extractfile(node).read() == (tmp_path / "node").read_bytes()  # type: ignore[union-attr]
        assert tar.getmember("usr/bin/node").linkname == "/usr/local/bin/node"
        assert tar.getmember("tmp").mode == 0o1777


def test_a_file_that_shrinks_while_packed_is_an_error(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    (tmp_path / "node").write_bytes(b"short")
    with pytest.raises(ExternalFailure, match="shrank while it was being packed"):
        asyncio.run(_stream(entries))


def test_describe_says_where_the_image_came_from() -> None:
    built = NodeImage("localhost/foundry-fleet/node:20.20.2-629548865300", "built", "20.20.2", "/usr/bin/node",
                      "the configured docker.io/library/node:20-slim could not be pulled (no such host)")
    assert describe(built) == (
        "localhost/foundry-fleet/node:20.20.2-629548865300 (built from /usr/bin/node (Node.js 20.20.2));"
        " the configured docker.io/library/node:20-slim could not be pulled (no such host)"
    )
    configured = NodeImage("docker.io/library/node:20-slim", "configured", "20.20.2", "/usr/bin/node")
    assert describe(configured) == "docker.io/library/node:20-slim (configured, present)"


def test_a_node_binary_is_hashed_once_until_it_changes(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.write_text("#!/bin/sh\necho v20.1.2\n")
    node.chmod(0o755)
    cache = tmp_path / "work" / "node-binaries.json"
    first = asyncio.run(inspect_node(str(node), cache))
    assert (first.version, first.major) == ("20.1.2", 20)
    assert first.sha256 == hashlib.sha256(node.read_bytes()).hexdigest()
    assert cache.stat().st_mode & 0o777 == 0o600
    # Another process: nothing in memory, the file answers (a planted digest shows it was not rehashed).
    stored = json.loads(cache.read_text())
    stored[str(node)]["sha256"] = "planted"
    cache.write_text(json.dumps(stored))
    _identity_cache.clear()
    assert asyncio.run(inspect_node(str(node), cache)).sha256 == "planted"
    node.write_text("#!/bin/sh\necho v20.1.3\n")  # replaced: size, mtime and ctime move
    changed = asyncio.run(inspect_node(str(node), cache))
    assert changed.version == "20.1.3"
    assert changed.sha256 == hashlib.sha256(node.read_bytes()).hexdigest()


def test_a_binary_that_is_not_node_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "node"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(Unsupported, match="did not print a Node.js version"):
        asyncio.run(inspect_node(str(fake)))


def test_the_builtins_a_distributions_node_keeps_outside_the_binary_go_into_the_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Debian's nodejs loads cjs-module-lexer, undici and acorn from files at start (and aborts without
    # them); its build names them in process.config. Seen on Debian bookworm's Node.js 18.
    lexer, undici = tmp_path / "share" / "lexer.js", tmp_path / "share" / "undici-fetch.js"
    lexer.parent.mkdir()
    lexer.write_text("module.exports = {}\n")
    undici.write_text("module.exports = {}\n")
    defines = ["NODE_OPENSSL_CONF_NAME=nodejs_conf", f"NODE_SHARED_BUILTIN_UNDICI_UNDICI_PATH={undici}",
               f"NODE_SHARED_BUILTIN_CJS_MODULE_LEXER_LEXER_PATH={lexer}"]
    assert shared_builtins(defines) == (str(lexer), str(undici))
    assert shared_builtins(None) == () and shared_builtins(["NODE_SHARED_BUILTIN_X_PATH=relative"]) == ()
    node = tmp_path / "node"
    node.write_text(f"#!/bin/sh\n[ \"$1\" = -p ] && echo '{json.dumps(defines)}' || echo v18.19.0\n")
    node.chmod(0o755)
    found = asyncio.run(inspect_node(str(node), tmp_path / "cache.json"))
    assert found.builtins == (str(lexer), str(undici))
    # The image's tag follows the builtins too: an image made without them is not reused.
    assert found.sha256 != hashlib.sha256(node.read_bytes()).hexdigest()
    _identity_cache.clear()
    assert asyncio.run(inspect_node(str(node), tmp_path / "cache.json")) == found  # from the cache file

    async def no_libraries(binary: str) -> list[str]:  # a shell script has none
        return []
    monkeypatch.setattr("foundry_fleet.runtime.podman.node_rootfs.libraries_of", no_libraries)
    paths = {e.path for e in asyncio.run(collect(found)) if e.kind == "file"}
    assert {str(lexer).lstrip("/"), str(undici).lstrip("/")} <= paths


def test_an_official_node_build_has_no_builtins_outside_the_binary(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.write_text("#!/bin/sh\n[ \"$1\" = -p ] && echo '[]' || echo v20.1.2\n")
    node.chmod(0o755)
    found = asyncio.run(inspect_node(str(node)))
    assert found.builtins == () and found.sha256 == hashlib.sha256(node.read_bytes()).hexdigest()
    assert NodeBinary(found.path, found.version, found.major, found.sha256) == found
