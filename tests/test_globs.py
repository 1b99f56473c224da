"""`files.exclude` globs (agent/globs.py): one table, checked on the matcher itself and
on both walks that apply it over a real tree — the file sensor's watch tree and
`scan`'s walk — so the daemon and `scan` can never again disagree on a file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.walk import walk
from agent.globs import compile_excludes
from agent.sensors.files import _inotify as I
from agent.sensors.files.tree import WatchTree

DEFAULTS = ["**/.git/objects/**", "**/__pycache__/**", "**/*.swp", "**/*~"]

# (patterns, a file below the root, excluded?); `{root}` is the tree's absolute root
TABLE: list[tuple[list[str], str, bool]] = [
    # a pattern without "/" is a name at any depth (scan used to anchor it at "/")
    (["*.tmp"], "x.tmp", True),
    (["*.tmp"], "sub/deep/x.tmp", True),
    (["*.tmp"], "x.tmpl", False),
    (["*.tmp"], "cache.tmp/inside", True),  # a directory matching the name: all of it
    (["?.log"], "a.log", True),
    (["?.log"], "ab.log", False),
    # character classes (scan used to take "[" and "]" literally)
    (["{root}/[ab].txt"], "a.txt", True),
    (["{root}/[ab].txt"], "c.txt", False),
    (["{root}/[!ab].txt"], "c.txt", True),
    (["{root}/[!ab].txt"], "b.txt", False),
    (["[ab].txt"], "sub/b.txt", True),
    # "*" stays within one component, "**" crosses them, "**/" may match nothing
    (["{root}/*/x"], "a/x", True),
    (["{root}/*/x"], "a/b/x", False),
    (["{root}/**/x"], "x", True),
    (["{root}/**/x"], "a/b/x", True),
    # a trailing "/**": the directory and everything below, not a sibling sharing a prefix
    (["{root}/sub/**"], "sub/f", True),
    (["{root}/sub/**"], "sub/a/b/f", True),
    (["{root}/sub/**"], "subway/f", False),
    # the defaults
    (DEFAULTS, ".git/objects/ab/cdef", True),
    (DEFAULTS, ".git/config", False),
    (DEFAULTS, "foo.git/objects/x", False),
    (DEFAULTS, "a/__pycache__/m.pyc", True),
    (DEFAULTS, ".x.swp", True),
    (DEFAULTS, "a.swpx", False),
    (DEFAULTS, "notes~", True),
    ([], "anything", False),
]


def _case_id(case: tuple[list[str], str, bool]) -> str:
    patterns, rel, excluded = case
    return f"{'|'.join(patterns) or 'none'}:{rel}:{'out' if excluded else 'in'}"


def _tree(root: Path, rel: str) -> Path:
    """The file `rel` below `root`, with a sibling no pattern in the table excludes."""
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x")
    (root / "kept.dat").write_bytes(b"k")
    return target


def _sensor_walk(root: Path, patterns: list[str]) -> set[str]:
    """The files the file sensor's watch tree reports walking `root` (as when a
    directory appears or a rescan runs), watches placed on a real inotify instance."""
    found: set[str] = set()
    ino = I.Inotify()
    try:
        tree = WatchTree(ino, compile_excludes(patterns), lambda _c: None, _noop2, _noop1)
        tree.walk(str(root), lambda path, _st: found.add(path))
    finally:
        ino.close()
    return found


def _noop1(_a: str) -> None:
    pass


def _noop2(_a: str, _b: str) -> None:
    pass


@pytest.mark.parametrize("case", TABLE, ids=_case_id)
def test_the_daemon_and_scan_exclude_the_same_files(
    case: tuple[list[str], str, bool], tmp_path: Path
) -> None:
    patterns, rel, excluded = case
    root = tmp_path / "data"
    target = str(_tree(root, rel))
    patterns = [p.replace("{root}", str(root)) for p in patterns]
    matches = compile_excludes(patterns)
    # the walks skip an excluded directory whole: the file, or a directory above it
    above = [p for p in Path(target).parents if p.is_relative_to(root) and p != root]
    assert any(matches(str(p)) for p in [Path(target), *above]) is excluded
    by_sensor = _sensor_walk(root, patterns)
    by_scan = set(walk([str(root)], patterns))
    assert (target not in by_sensor) is excluded, by_sensor
    assert (target not in by_scan) is excluded, by_scan
    assert str(root / "kept.dat") in by_sensor & by_scan


@given(st.lists(st.text("ab/.", max_size=6).filter(lambda s: "/" not in s and s), max_size=4))
def test_exclude_by_name_matches_any_depth(parts: list[str]) -> None:
    ex = compile_excludes(["*.tmp"])
    path = "/" + "/".join([*parts, "x.tmp"])
    assert ex(path)
    assert not ex(path + "x")


@given(st.text(max_size=30))
def test_exclude_never_crashes(pattern: str) -> None:
    try:
        ex = compile_excludes([pattern])
    except re.error:
        return
    ex("/a/b")
