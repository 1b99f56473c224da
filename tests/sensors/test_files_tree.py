"""The watch tree on a real inotify instance: records read after the disk moved on.

The kernel queues records; the tree reads them later. A directory move is reported
file by file from a walk of the new place, so a file that left between the move and
the walk is not found there — these tests queue both records before the tree reads
either, which is the race made certain.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.events import FileAction
from agent.sensors.files import _inotify as I
from agent.sensors.files.tree import Change, WatchTree
from tests.sensors.test_files_model import _replay


def _tree(root: Path) -> tuple[WatchTree, I.Inotify, list[Change]]:
    out: list[Change] = []
    ino = I.Inotify()
    tree = WatchTree(ino, lambda _p: False, out.append, lambda _k, _p: None, lambda _p: None)
    tree.walk(str(root), None)
    return tree, ino, out


def _read_all(tree: WatchTree, ino: I.Inotify) -> None:
    while events := ino.read():
        tree.handle(events)
    tree.flush(now=float("inf"))  # settle unpaired moves and deferred scan finds


def test_a_file_deleted_before_its_directory_move_is_read_leaves_no_stale_path(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "a" / "sub").mkdir(parents=True)
    (root / "a" / "sub" / "f").write_bytes(b"f")
    (root / "a" / "kept").write_bytes(b"k")
    tree, ino, out = _tree(root)
    try:
        os.rename(root / "a", root / "b")
        os.unlink(root / "b" / "sub" / "f")  # gone before the tree walks b
        _read_all(tree, ino)
    finally:
        ino.close()
    before = {str(root / "a" / "sub" / "f"), str(root / "a" / "kept")}
    assert _replay([Change(FileAction.WRITTEN, p, None, None) for p in before] + out) == {
        str(root / "b" / "kept")
    }
    assert [(c.action, c.path, c.dest_path) for c in out if Path(c.path).name == "f"] == [
        (FileAction.MOVED, str(root / "a" / "sub" / "f"), str(root / "b" / "sub" / "f")),
        (FileAction.DELETED, str(root / "b" / "sub" / "f"), None),
    ]


def test_a_file_made_after_the_move_is_not_given_an_old_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    tree, ino, out = _tree(root)
    try:
        os.rename(root / "a", root / "b")
        (root / "b" / "new").write_bytes(b"n")
        os.unlink(root / "b" / "new")
        _read_all(tree, ino)
    finally:
        ino.close()
    assert all(c.action != FileAction.MOVED for c in out), out
    assert _replay(out) == set()
