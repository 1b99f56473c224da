"""The models and the migrations must describe the same schema, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from agent.store.db import alembic_config, current_revision, make_engine, upgrade
from agent.store.models import Base
from agent.store.partitions import PARTITIONED, compare_filter, partition_name


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        include = compare_filter(engine.dialect.name)
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include}
        )
        return list(compare_metadata(ctx, Base.metadata))


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    assert current_revision(engine) is not None
    assert _diff(engine) == []
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_postgresql_migrations_match_models(pg_empty_url: str) -> None:
    engine = make_engine(pg_empty_url)
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


def _downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _partitioned(engine: Engine) -> set[str]:
    with engine.connect() as c:
        return set(
            c.execute(
                text(
                    "SELECT c.relname FROM pg_partitioned_table p "
                    "JOIN pg_class c ON c.oid = p.partrelid"
                )
            ).scalars()
        )


def test_postgresql_event_tables_are_partitioned_by_day(pg_empty_url: str) -> None:
    engine = make_engine(pg_empty_url)
    upgrade(engine)
    assert _partitioned(engine) == set(PARTITIONED)
    insp = inspect(engine)
    today = datetime.now(UTC).date()
    names = set(insp.get_table_names())
    for table, col in PARTITIONED.items():
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints(table)}
        assert uniques == {("uid", col)}
        assert f"{table}_default" in names
        assert {partition_name(table, today + timedelta(days=i)) for i in range(8)} <= names
    engine.dispose()


# the 0004 schema's rows, at times spread over partitions: long ago (default), days back,
# today, and far ahead (default)
_DAYS = (-500, -3, -1, 0, 30)


def _fill_0004(engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as c:
        for i, d in enumerate(_DAYS):
            t = now + timedelta(days=d)
            c.execute(
                text(
                    "INSERT INTO file_events (uid, host_id, time, action, path, channel, "
                    "origin, sensor, kinds) VALUES (:u, 'h', :t, 'written', :p, 'local', "
                    "'watch', 'files', '[\"code\"]')"
                ),
                {"u": f"fe{i}", "t": t, "p": f"/p/{i}"},
            )
            c.execute(
                text(
                    "INSERT INTO flows (uid, host_id, start_time, end_time, protocol, src_ip, "
                    "src_port, dst_ip, dst_port, bytes_out, bytes_in, byte_source, "
                    "dest_class, close_reason) VALUES (:u, 'h', :t, :t, 'tcp', '10.0.0.1', 1, "
                    "'192.0.2.1', 443, 5, 6, 'socket', 'foreign', 'fin')"
                ),
                {"u": f"fl{i}", "t": t},
            )
            c.execute(
                text(
                    "INSERT INTO decisions (uid, host_id, time, subject_kind, subject_uid, "
                    "pack, rule_id, severity, action, policy_version, reason, categories) "
                    "VALUES (:u, 'h', :t, 'file_event', :s, 'p', 'r', 'high', 'alert', 'v', "
                    "'why', '[]')"
                ),
                {"u": f"fe{i}:0", "s": f"fe{i}", "t": t},
            )


def _rows(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as c:
        return {
            t: sorted(map(tuple, c.execute(text(f"SELECT * FROM {t}")).all()), key=repr)
            for t in PARTITIONED
        }


def test_upgrade_converts_an_existing_postgresql_store_and_back(pg_empty_url: str) -> None:
    engine = make_engine(pg_empty_url)
    upgrade(engine, "0004")
    _fill_0004(engine)
    before = _rows(engine)
    upgrade(engine, "0005")
    assert current_revision(engine) == "0005"
    assert _partitioned(engine) == set(PARTITIONED)
    assert _rows(engine) == before  # every row, every column, the same ids
    now = datetime.now(UTC).date()
    with engine.begin() as c:
        # rows went to their day's partition; the far past and far future to the default
        where = c.execute(
            text("SELECT tableoid::regclass::text, uid FROM file_events ORDER BY uid")
        ).all()
        assert dict((u, p) for p, u in where) == {
            "fe0": "file_events_default",
            "fe1": partition_name("file_events", now - timedelta(days=3)),
            "fe2": partition_name("file_events", now - timedelta(days=1)),
            "fe3": partition_name("file_events", now),
            "fe4": "file_events_default",
        }
        # the id sequence goes on; the (uid, time) key still refuses a re-sent row
        t = c.execute(text("SELECT time FROM file_events WHERE uid = 'fe3'")).scalar_one()
        ins = text(
            "INSERT INTO file_events (uid, host_id, time, action, path, channel, origin, "
            "sensor) VALUES (:u, 'h', :t, 'written', '/x', 'local', 'watch', 'files') "
            "ON CONFLICT DO NOTHING RETURNING id"
        )
        assert c.execute(ins, {"u": "fe3", "t": t}).first() is None
        new_id = c.execute(ins, {"u": "new", "t": t}).scalar_one()
        assert new_id > max(r[0] for r in before["file_events"])
    _downgrade(engine, "0004")
    assert _partitioned(engine) == set()
    after = _rows(engine)
    assert {t: len(r) for t, r in after.items()} == {
        t: len(_DAYS) + (t == "file_events") for t in PARTITIONED
    }
    uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("flows")}
    assert uniques == {("uid",)}
    upgrade(engine)  # and up again, with the row added in between
    assert _partitioned(engine) == set(PARTITIONED)
    assert _rows(engine) == after
    assert _diff(engine) == []
    engine.dispose()


def test_sqlite_upgrade_keeps_plain_tables_and_rows(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine, "0004")
    _fill_0004(engine)
    before = _rows(engine)
    upgrade(engine)
    assert _rows(engine) == before
    assert "forward_marks" in inspect(engine).get_table_names()
    assert _diff(engine) == []
    _downgrade(engine, "0004")
    assert "forward_marks" not in inspect(engine).get_table_names()
    assert _rows(engine) == before
