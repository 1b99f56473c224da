"""Rescan comparison files never outlive their rescan for long: a failed open removes its
file at once, and what a killed agent left is removed when the file sensor starts."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.sensors.files import rescan_plan as R
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
