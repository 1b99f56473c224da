"""The rescan plan (agent/sensors/files/rescan_plan.py): the steps that make what the
store knows equal what is on disk, and comparison files that never outlive their rescan
for long (a failed open removes its file at once; what a killed agent left is removed
when the file sensor starts)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.events import FileAction
from agent.sensors.files import rescan_plan as R
from agent.sensors.files.rescan_plan import UNSEEN, Comparison, OnDisk, StatKey, Step
from tests.conftest import REPO


def test_a_comparison_that_cannot_open_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_a: object, **_k: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(R.sqlite3, "connect", refuse)
    with pytest.raises(sqlite3.OperationalError):
        R.Comparison(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_comparison_whose_schema_fails_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.Error):
        R.Comparison(str(tmp_path), cache_kib="1; bogus")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_rescan_left_is_removed_at_the_next_start(tmp_path: Path) -> None:
    # a real process killed (SIGKILL: no close, no atexit) in the middle of a comparison
    code = textwrap.dedent(
        f"""
        import os, signal
        from agent.sensors.files.rescan_plan import Comparison, OnDisk
        c = Comparison({str(tmp_path)!r})
        for i in range(20000):
            c.add_disk(OnDisk(f"/r/{{i}}", (i, i, i), True))
            c.add_known(f"/r/{{i + 7}}", (i, i, i))
        steps = c.steps()
        next(steps)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left and all(n.startswith("rescan-") for n in left), left
    (tmp_path / "store.db").write_bytes(b"")  # the state directory's other files stay
    assert R.remove_leftovers(str(tmp_path)) == len(left)
    assert [p.name for p in tmp_path.iterdir()] == ["store.db"]


# --- rescan plan --------------------------------------------------------------------


def plan(
    disk: dict[str, OnDisk],
    known: dict[str, StatKey],
    overlay: dict[str, tuple[StatKey | None, bool]] | None = None,
) -> list[Step]:
    with Comparison() as c:
        for entry in disk.values():
            c.add_disk(entry)
        for k, v in known.items():
            c.add_known(k, v)
        for k, (state, fresh) in (overlay or {}).items():
            c.overlay(k, state, fresh)
        return list(c.steps())


def test_plan_reports_new_changed_and_gone() -> None:
    disk = {
        "/r/same": OnDisk("/r/same", (1, 10, 100), True),
        "/r/changed": OnDisk("/r/changed", (2, 20, 200), True),
        "/r/new": OnDisk("/r/new", (3, 30, 300), True),
        "/r/link": OnDisk("/r/link", (4, 4, 400), False),
        "/r/partly": OnDisk("/r/partly", (6, 6, 600), True),
    }
    known = {
        "/r/same": (1, 10, 100),
        "/r/changed": (2, 20, 199),
        "/r/gone": (5, 1, 1),
        "/r/partly": UNSEEN,
    }
    steps = plan(disk, known)
    assert [(s.action, s.path) for s in steps] == [  # in path order
        (FileAction.WRITTEN, "/r/changed"),
        (FileAction.CREATED, "/r/link"),
        (FileAction.WRITTEN, "/r/new"),
        (FileAction.WRITTEN, "/r/partly"),
        (FileAction.DELETED, "/r/gone"),
    ]
    assert steps[0].entry == disk["/r/changed"]


def test_plan_overlays_what_was_emitted_lately() -> None:
    disk = {p: OnDisk(p, (1, 1, 1), True) for p in ("/r/a", "/r/b", "/r/c")}
    known = {"/r/d": (4, 4, 4)}
    overlay = {
        "/r/a": ((1, 1, 1), False),  # on its way to the store: known already
        "/r/b": ((9, 9, 9), True),  # reported during the walk: newer than it, left alone
        "/r/d": (None, False),  # deleted lately: not gone again
        "/r/e": ((5, 5, 5), False),  # emitted, then removed before the walk
    }
    assert [(s.action, s.path) for s in plan(disk, known, overlay)] == [
        (FileAction.WRITTEN, "/r/c"),
        (FileAction.DELETED, "/r/e"),
    ]


def test_plan_keeps_non_utf8_paths_and_huge_inodes() -> None:
    raw = os.fsdecode(b"/r/caf\xe9")
    entry = OnDisk(raw, ((1 << 64) - 5, 3, 7), True)
    [step] = plan({raw: entry}, {})
    assert step.path == raw and step.entry == entry
    # what the store holds for it is the escaped text: equal state, nothing to report
    assert plan({raw: entry}, {"/r/caf\\xe9": entry.key}) == []


def test_comparison_file_is_removed(tmp_path: Path) -> None:
    with Comparison(str(tmp_path)) as c:
        c.add_disk(OnDisk("/x", (1, 1, 1), True))
        assert len(list(tmp_path.iterdir())) == 1
    assert list(tmp_path.iterdir()) == []


_names = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=5
)
_states = st.tuples(*[st.integers(0, (1 << 63) - 1)] * 3)


@given(st.dictionaries(_names, _states), st.dictionaries(_names, _states))
def test_plan_applied_makes_known_equal_disk(disk_keys: dict, known: dict) -> None:
    disk = {k: OnDisk(k, v, True) for k, v in disk_keys.items()}
    after: dict = dict(known)
    for s in plan(disk, known):
        if s.action == FileAction.DELETED:
            del after[s.path]
        else:
            after[s.path] = disk[s.path].key
    assert after == disk_keys
