"""Fixtures shared by the classify stage's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Settings
from agent.runtime import Runtime
from agent.store.db import make_engine, upgrade


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime over a fresh SQLite store, magika off (the stage tests are about the
    stage, not content types) and a long event timeout (no test here is about deferral)."""
    s = Settings(
        agent={"state_dir": str(tmp_path / "state")},
        classify={"use_magika": False, "event_timeout": 30},
    )
    s.state_dir.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{tmp_path / 'state' / 'agent.db'}")
    upgrade(engine)
    runtime = Runtime(s, engine, "host-1", "host")
    yield runtime
    runtime.run_stop_hooks()
    engine.dispose()
