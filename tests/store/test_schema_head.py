"""`run` skips Alembic when the store is already at the scripts' head: the cheap check
must agree with Alembic itself, and must say "not current" whenever in doubt."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from agent.store.db import (
    MIGRATIONS_DIR,
    alembic_config,
    head_revision,
    make_engine,
    schema_is_current,
    upgrade,
)


def test_head_revision_is_alembics_head() -> None:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revision() == scripts.get_current_head()


def test_schema_is_current_only_at_head(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    try:
        assert not schema_is_current(engine)  # empty: no version table
        upgrade(engine, "0001")
        assert not schema_is_current(engine)  # behind
        upgrade(engine)
        assert schema_is_current(engine)
    finally:
        engine.dispose()


def test_unreadable_scripts_mean_not_current(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    for src in (MIGRATIONS_DIR / "versions").glob("*.py"):
        (versions / src.name).write_text(src.read_text("utf-8"))
    assert head_revision(versions) == head_revision()
    # a second script on the same parent: two heads, no single answer
    (versions / "9999_branch.py").write_text('revision = "9999"\ndown_revision = "0001"\n')
    assert head_revision(versions) is None
    (versions / "9999_branch.py").write_text("no revision here\n")
    assert head_revision(versions) is None
    assert head_revision(tmp_path / "missing") is None
