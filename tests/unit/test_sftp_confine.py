import os
from pathlib import Path

import pytest

from foundry_fleet.sftp.confine import Confinement, Outside


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Confinement, Path]:
    root = tmp_path / "alice" / "Data"
    (root / "worlds").mkdir(parents=True)
    (tmp_path / "bob" / "Data").mkdir(parents=True)
    (tmp_path / "bob" / "Data" / "secret").write_text("bob's")
    return Confinement(root), tmp_path


def test_dotdot_and_absolute_paths_stay_at_the_root(tree: tuple[Confinement, Path]) -> None:
    c, tmp = tree
    root = str(tmp / "alice" / "Data")
    assert c.resolve("/") == root
    assert c.resolve("..") == root
    assert c.resolve("../../bob/Data/secret") == os.path.join(root, "bob", "Data", "secret")
    assert c.resolve("/etc/passwd") == os.path.join(root, "etc", "passwd")
    assert c.resolve("worlds/../../..") == root
    assert c.client_path(c.resolve("worlds")) == "/worlds"
    assert c.client_path(root) == "/"


def test_links_out_of_the_tree_are_refused_and_links_inside_followed(tree: tuple[Confinement, Path]) -> None:
    c, tmp = tree
    root = tmp / "alice" / "Data"
    (root / "out").symlink_to(tmp / "bob" / "Data")
    (root / "dangling").symlink_to("/nonexistent/file")
    (root / "inside").symlink_to("worlds")
    for path in ("out", "out/secret", "/out/../out/secret", "dangling"):
        with pytest.raises(Outside):
            c.resolve(path)
    assert c.resolve("inside") == str(root / "worlds")
    # The link itself may be named (removed), never what it points to.
    assert c.entry("out") == str(root / "out")
    with pytest.raises(Outside):
        c.entry("out/secret")


def test_a_root_that_is_itself_a_link_is_resolved_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    c = Confinement(tmp_path / "link")
    assert c.resolve("a") == str(tmp_path / "real" / "a")


def test_a_prefix_sibling_is_not_inside(tmp_path: Path) -> None:
    (tmp_path / "Data").mkdir()
    (tmp_path / "Data2").mkdir()
    (tmp_path / "Data" / "x").symlink_to(tmp_path / "Data2")
    with pytest.raises(Outside):
        Confinement(tmp_path / "Data").resolve("x")
