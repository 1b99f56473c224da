"""The models and the migrations must describe the same schema, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from agent.store.db import current_revision, make_engine, upgrade
from agent.store.models import Base


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    assert current_revision(engine) is not None
    assert _diff(engine) == []
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_postgresql_migrations_match_models(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    assert _diff(engine) == []
    engine.dispose()


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    first = current_revision(engine)
    upgrade(engine)
    assert current_revision(engine) == first


def test_diff_detects_drift(tmp_path: Path) -> None:
    """The check above can fail: a table the models lack shows as a difference."""
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE stray (id INTEGER PRIMARY KEY)")
    assert any("stray" in repr(d) for d in _diff(engine))
