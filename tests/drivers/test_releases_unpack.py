"""safe_unpack: genuine zips come out whole and read-only; hostile ones are refused leaving nothing."""

from __future__ import annotations

import os
import posixpath
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.releases.policy import MIB
from foundry_fleet.releases.unpack import (
    ByteBudget,
    member_path,
    refuse_non_zip,
    safe_unpack,
    symlink_stays_inside,
)
from tests.support.releases import (
    assert_read_only_tree,
    file,
    folder,
    make_release_zip,
    patch_declared_size,
    small_limits,
    symlink,
    tree_listing,
    write_zip,
)


def refused(zip_path: Path, dest: Path, **limits: object) -> InvalidInput:
    """Unpack and expect a refusal that leaves `dest` absent (it did not exist before)."""
    with pytest.raises(InvalidInput) as caught:
        safe_unpack(zip_path, dest, small_limits(**limits))
    assert not dest.exists(), f"left behind: {tree_listing(dest)}"
    assert caught.value.hint, "every refusal says what to do next"
    return caught.value


# -- genuine zips ------------------------------------------------------------------------------------


def test_unpacks_a_release_read_only_and_counts_real_bytes(tmp_path: Path) -> None:
    zip_path = make_release_zip(tmp_path / "r.zip", "linux")
    dest = tmp_path / "out"
    written = safe_unpack(zip_path, dest, small_limits())

    on_disk = sum(
        os.lstat(dest / rel).st_size for rel in tree_listing(dest) if (dest / rel).is_file() and not (dest / rel).is_symlink()
    )
    assert written == on_disk
    assert (dest / "resources/app/main.mjs").read_text().startswith("// Foundry")
    assert_read_only_tree(dest)
    assert stat.S_IMODE(os.stat(dest / "foundryvtt").st_mode) == 0o555  # executable in the zip
    assert stat.S_IMODE(os.stat(dest / "resources/app/main.mjs").st_mode) == 0o444
    # A symlink that stays inside the tree is kept as a symlink.
    assert os.readlink(dest / "libffmpeg.so") == "libffmpeg.so.1"


def test_unpacks_into_an_existing_empty_folder_and_reports_progress(tmp_path: Path) -> None:
    zip_path = make_release_zip(tmp_path / "r.zip", "node")
    dest = tmp_path / "out"
    dest.mkdir()
    seen: list[tuple[str, int, int | None]] = []
    written = safe_unpack(zip_path, dest, small_limits(), progress=lambda *a: seen.append(a))
    assert seen and all(phase == "unpack" for phase, _, _ in seen)
    assert seen[-1] == ("unpack", written, written)
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)


def test_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    zip_path = make_release_zip(tmp_path / "r.zip")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="not empty"):
        safe_unpack(zip_path, dest, small_limits())
    assert (dest / "mine.txt").read_text() == "keep me"


def test_a_refusal_inside_an_existing_folder_empties_it_but_keeps_it(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "z.zip", [file("ok.txt", "x"), file("a/b.txt", "y"), file("../evil", "z")])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(InvalidInput):
        safe_unpack(zip_path, dest, small_limits())
    assert dest.is_dir() and tree_listing(dest) == []


# -- not a zip ---------------------------------------------------------------------------------------


def test_windows_installer_is_named_as_such(tmp_path: Path) -> None:
    exe = tmp_path / "FoundryVTT-13.345.exe"
    exe.write_bytes(b"MZ\x90\x00" + os.urandom(4000))
    err = refused(exe, tmp_path / "out")
    assert "Windows installer" in err.message
    assert "Node.js or Linux build" in err.message + (err.hint or "")


def test_macos_disk_image_with_koly_trailer_is_named_as_such(tmp_path: Path) -> None:
    dmg = tmp_path / "FoundryVTT-13.345.dmg"
    trailer = b"koly" + b"\x00" * 508
    dmg.write_bytes(os.urandom(5000).replace(b"PK", b"pk") + trailer)
    err = refused(dmg, tmp_path / "out")
    assert "macOS disk image" in err.message
    assert "Node.js or Linux build" in err.message


def test_macos_disk_image_starting_with_a_zlib_stream_is_named_as_such(tmp_path: Path) -> None:
    dmg = tmp_path / "FoundryVTT.dmg"
    dmg.write_bytes(zlib.compress(b"apple partition map" * 100))
    assert "macOS disk image" in refused(dmg, tmp_path / "out").message


def test_arbitrary_bytes_are_not_a_zip(tmp_path: Path) -> None:
    junk = tmp_path / "release.zip"
    junk.write_bytes(b"<html>login page</html>")
    assert "not a zip" in refused(junk, tmp_path / "out").message


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "release.zip"
    empty.touch()
    assert "empty" in refused(empty, tmp_path / "out").message


def test_refuse_non_zip_accepts_a_real_zip(tmp_path: Path) -> None:
    refuse_non_zip(make_release_zip(tmp_path / "r.zip"))


# -- paths that escape -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../x", "outside the release folder"),
        ("a/../../x", "outside the release folder"),
        ("/etc/x", "absolute path"),
        ("..\\..\\x", "outside the release folder"),
        ("a\\..\\..\\x", "outside the release folder"),
        ("C:/Windows/x", "drive letter"),
        ("C:\\Windows\\x", "drive letter"),
        ("\\\\server\\share\\x", "absolute path"),
    ],
)
def test_entries_that_escape_are_refused(tmp_path: Path, name: str, words: str) -> None:
    zip_path = write_zip(tmp_path / "evil.zip", [file("main.js", "x"), file(name, "pwned")])
    err = refused(zip_path, tmp_path / "out")
    assert words in err.message
    assert not (tmp_path / "x").exists()


def test_symlink_pointing_out_is_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "evil.zip", [file("main.js", "x"), symlink("a/passwd", "../../etc/passwd")])
    err = refused(zip_path, tmp_path / "out")
    assert "points outside the release folder" in err.message


def test_absolute_symlink_is_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "evil.zip", [file("main.js", "x"), symlink("passwd", "/etc/passwd")])
    assert "absolute path" in refused(zip_path, tmp_path / "out").message


def test_symlink_chain_that_reads_inside_but_resolves_outside_is_refused(tmp_path: Path) -> None:
    # a/up -> ..  is the tree root (fine on its own); t -> a/up/.. reads as "a" but really is the
    # root's parent, because a/up is itself a link.
    zip_path = write_zip(
        tmp_path / "evil.zip", [file("main.js", "x"), symlink("a/up", ".."), symlink("t", "a/up/..")]
    )
    assert "through another symlink" in refused(zip_path, tmp_path / "out").message


def test_file_written_through_a_symlink_entry_is_refused(tmp_path: Path) -> None:
    # Classic two-step: a link to a folder, then a file "inside" the link.
    zip_path = write_zip(tmp_path / "evil.zip", [symlink("lnk", "sub"), folder("sub"), file("lnk/x.txt", "x")])
    assert "sits inside 'lnk'" in refused(zip_path, tmp_path / "out").message


@pytest.mark.parametrize(
    "entries",
    [
        [file("main.js", "a"), file("main.js", "b")],
        [file("a/b.txt", "a"), file("a//b.txt", "b")],
        [file("a/b.txt", "a"), file("a\\b.txt", "b")],
        [file("x/y.txt", "a"), file("x", "b")],
    ],
    ids=["same-name", "double-slash", "backslash", "file-over-folder"],
)
def test_duplicate_entries_are_refused(tmp_path: Path, entries: list) -> None:
    err = refused(write_zip(tmp_path / "dup.zip", entries), tmp_path / "out")
    assert "more than one entry" in err.message or "sits inside" in err.message


# -- bombs and floods --------------------------------------------------------------------------------


def test_bomb_refused_by_total_size(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "bomb.zip", [file("zeros.bin", b"\x00" * (50 * MIB))])
    assert zip_path.stat().st_size < MIB  # it really is a bomb: tiny on disk
    err = refused(zip_path, tmp_path / "out", max_unpacked_bytes=10 * MIB, max_ratio=1e9)
    assert "more than the limit" in err.message


def test_bomb_refused_by_compression_ratio(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "bomb.zip", [file("zeros.bin", b"\x00" * (50 * MIB))])
    err = refused(zip_path, tmp_path / "out", max_unpacked_bytes=100 * MIB)
    assert "zip bomb" in err.message and "expands" in err.message


def test_small_files_may_compress_well(tmp_path: Path) -> None:
    # A 100 kB run of spaces compresses ~1000:1, below the size where the ratio rule applies.
    zip_path = write_zip(tmp_path / "ok.zip", [file("padded.txt", b" " * 100_000)])
    assert safe_unpack(zip_path, tmp_path / "out", small_limits()) == 100_000


def test_entry_whose_header_understates_its_size_is_refused(tmp_path: Path) -> None:
    # 2 MB of zeros whose headers claim 1000 bytes: the headers pass every check, the bytes do not.
    zip_path = write_zip(tmp_path / "liar.zip", [file("main.js", "x"), file("zeros.bin", b"\x00" * (2 * MIB))])
    patch_declared_size(zip_path, "zeros.bin", 1000)
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.getinfo("zeros.bin").file_size == 1000
    dest = tmp_path / "out"
    err = refused(zip_path, dest, max_unpacked_bytes=64 * 1024, max_ratio=1e9)
    # zipfile stops reading at the declared size, so the lie surfaces as a corrupt entry, never as
    # more than 1000 bytes on disk.
    assert "damaged" in err.message


def test_byte_budget_counts_actual_bytes_and_refuses_the_crossing_chunk() -> None:
    budget = ByteBudget(limit=100)
    budget.charge(60, "a")
    budget.charge(40, "b")  # exactly at the limit is fine
    with pytest.raises(InvalidInput, match="went over while writing 'c'"):
        budget.charge(1, "c")
    assert budget.used == 101


def test_too_many_entries_is_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "flood.zip", [file(f"f{i}.txt", "x") for i in range(30)])
    err = refused(zip_path, tmp_path / "out", max_entries=20)
    assert "30 entries" in err.message and "limit of 20" in err.message


def test_encrypted_entries_are_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "enc.zip", [file("main.js", "x")])
    data = bytearray(zip_path.read_bytes())
    # Set the "encrypted" flag bit in the local and the central header.
    data[6] |= 0x1
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1
    zip_path.write_bytes(bytes(data))
    assert "encrypted" in refused(zip_path, tmp_path / "out").message


def test_corrupt_zip_is_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "bad.zip", [file("main.js", b"y" * 5000, 0o644)])
    data = bytearray(zip_path.read_bytes())
    data[60:80] = b"\xff" * 20  # scribble over the compressed data
    zip_path.write_bytes(bytes(data))
    assert "damaged" in refused(zip_path, tmp_path / "out").message


# -- properties --------------------------------------------------------------------------------------

_name_chars = st.sampled_from(list("ab./\\:C") + ["..", "x y", "é"])


@given(st.lists(_name_chars, min_size=1, max_size=12).map("".join))
def test_member_path_never_escapes(name: str) -> None:
    try:
        path = member_path(name)
    except InvalidInput:
        # Refused names really are absolute, drive-lettered or climbing.
        parts = name.replace("\\", "/").split("/")
        assert name.replace("\\", "/").startswith("/") or name[:2].endswith(":") or ".." in parts
        return
    if path is None:
        return
    assert not path.is_absolute()
    assert ".." not in path.parts and "" not in path.parts
    joined = posixpath.normpath(posixpath.join("/root", str(path)))
    assert joined.startswith("/root/")


_target_parts = st.sampled_from(["..", ".", "a", "b", ""])


@given(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4),
    st.lists(_target_parts, min_size=1, max_size=6).map("/".join),
)
def test_symlink_check_agrees_with_lexical_normalisation(link_parts: list[str], target: str) -> None:
    link = PurePosixPath(*link_parts)
    resolved = posixpath.normpath(posixpath.join(str(link.parent), target))
    outside = resolved == ".." or resolved.startswith("../")
    if not target.strip("/") or target.startswith("/"):
        assert not symlink_stays_inside(link, target)
    else:
        assert symlink_stays_inside(link, target) == (not outside)
