"""On SQLite the writer hands positional tuples to the driver itself; what it stores must
be byte for byte what SQLAlchemy's own `conn.execute` path stores."""

from __future__ import annotations

import json
from datetime import datetime, tzinfo
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime, Engine, text
from sqlalchemy.dialects import sqlite

from agent.store import upserts as U
from agent.store import writer as W
from agent.store.db import make_engine, register_host, upgrade
from tests.store.test_writer import _sample

TABLES = ("file_events", "flows", "decisions", "artefacts", "lineage", "file_state")


def _store(tmp_path: Path, name: str) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / name}")
    upgrade(engine)
    register_host(engine, "h1", "host")
    return engine


def _dump(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1, 2"))]
            for t in TABLES
        }


def test_fast_path_stores_what_sqlalchemy_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Frozen(datetime):  # artefacts' first and last seen are the batch's time
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Frozen:  # type: ignore[override]
            return cls(2026, 12, 6, 12, 0, 0, 123456, tzinfo=tz)

    monkeypatch.setattr(W, "datetime", Frozen)
    events = _sample()
    fast = _store(tmp_path, "fast.db")
    W.write_batch(fast, "h1", events)
    W.write_batch(fast, "h1", events)  # idempotent on this path too

    # the same batch through conn.execute (the path every other dialect takes)
    def through_sqlalchemy(conn, engine, table, rows, conflict=(), update=()):  # type: ignore[no-untyped-def]
        if rows:
            sql = U.upsert_sql(engine, table, tuple(rows[0]), conflict, update)
            conn.execute(sql, list(rows))

    slow = _store(tmp_path, "slow.db")
    monkeypatch.setattr(W, "upsert", through_sqlalchemy)
    W.write_batch(slow, "h1", events)
    got, want = _dump(fast), _dump(slow)
    assert all(want[t] for t in ("file_events", "flows", "decisions", "artefacts"))
    for t in TABLES:
        if t == "file_state":  # updated_at is the time of the write
            got[t] = [r[:-1] for r in got[t]]
            want[t] = [r[:-1] for r in want[t]]
        assert got[t] == want[t], t
    fast.dispose()
    slow.dispose()


def test_remembered_json_text_is_the_encoders_text() -> None:
    calls: list[object] = []

    def encode(value: object) -> str:
        calls.append(value)
        return json.dumps(value)

    remembered = U.remembering(encode, limit=2)
    values: list[object] = [["a", "b"], ["a", "b"], None, None, [], {"k": 1}, {"k": 1}, [1], ["c"]]
    assert [remembered(v) for v in values] == [json.dumps(v) for v in values]
    # lists of strings and None are encoded once (up to the limit); anything else each time
    assert calls == [["a", "b"], None, [], {"k": 1}, {"k": 1}, [1], ["c"]]
    assert remembered(["c"]) == '["c"]' and calls[-1] == ["c"]  # past the limit: not kept


def test_rows_are_bound_column_by_column_in_key_order() -> None:
    rows: list[dict[str, object]] = [{"a": 1, "b": [1], "c": "x"}, {"a": 2, "b": None, "c": "y"}]
    procs: tuple[U.Processor, ...] = (None, json.dumps, str.upper)
    assert U.bound_rows(rows, ("a", "b", "c"), procs) == [(1, "[1]", "X"), (2, "null", "Y")]
    assert U.bound_rows(rows, ("c",), (None,)) == [("x",), ("y",)]


@settings(max_examples=300)
@given(
    st.one_of(
        st.datetimes(),
        st.datetimes(timezones=st.timezones()),
        st.dates(),
        st.none(),
    )
)
def test_sqlite_datetime_text_is_sqlalchemys(value: object) -> None:
    dialect = sqlite.dialect()
    process = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    assert U.sqlite_datetime(process, value) == process(value)
