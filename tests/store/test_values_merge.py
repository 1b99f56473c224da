"""Small merges as arrays (agent/store/values_merge.py) leave what the staging COPY leaves.

The spool's COPY lines are read back in Python for a small merge, so the reading must
be COPY's own: every escape the spool writes, NULLs, JSON columns, texts with tabs,
newlines, backslashes and the section separator. Checked against PostgreSQL itself:
the same batch merged both ways, each in a transaction rolled back, must leave the same
rows. The forwarder's cost for a small batch is checked too (fewer statements, no
staging table created).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from agent.events import Artefact, CategoryMatch, Event, FileAction, FileEvent, Tag
from agent.store import spool_rows, values_merge
from agent.store.bulk import _MERGE, Mark, copy_rows, merge_staged
from agent.store.db import make_engine, register_host, upgrade

HOST = "host-values"
# texts with what COPY escapes (tab, newline, CR, backslash, U+001F), a NUL-free
# control set, non-ASCII; no lone surrogates (the spool keeps those as JSON instead)
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
) | st.sampled_from(["\\N", "\\", "a\tb", "x\ny", "\x1f", "\\x41", "\\101", "é\r"])


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    from tests.conftest import _require_pg, _scratch_database  # one database for the module

    _require_pg()
    gen = _scratch_database(template=None)
    url = next(gen)
    eng = make_engine(url)
    upgrade(eng)
    register_host(eng, HOST, "values")
    yield eng
    eng.dispose()
    with pytest.raises(StopIteration):
        next(gen)


@given(st.lists(TEXT, min_size=1, max_size=6))
def test_copy_fields_reads_back_what_the_spool_writes(values: list[str]) -> None:
    line = "\t".join(["\\N", *(v.translate(spool_rows._ESCAPE) for v in values)])
    assert values_merge.copy_fields(line) == [None, *values]


def _events(paths: list[str], tags: list[str]) -> list[Event]:
    out: list[Event] = []
    for i, p in enumerate(paths):
        artefact = None
        if i % 2 == 0:
            artefact = Artefact(
                f"{i:064x}",
                i,
                tags[i % len(tags)],
                (Tag(tags[i % len(tags)], tags[-1]),),
                (CategoryMatch("ai.model", 2, "cn-catalogue", 2, tags[0]),),
                parents=(f"{i + 1:064x}",),
            )
        out.append(
            FileEvent(
                action=FileAction.WRITTEN,
                path=p,
                size=None if i % 3 == 0 else i,
                mtime_ns=i * 1000,
                artefact=artefact,
            )
        )
    return out


def _merged(engine: Engine, table: str, columns: tuple[str, ...], data: str, small: bool) -> Any:
    """The table's rows after merging `data` one way, in a transaction rolled back."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            if small:
                assert values_merge.merge(cur, table, columns, data, _MERGE[table])
            else:
                merge_staged(cur, table, columns, data)
            order = ", ".join(f'"{col}"::text' for col in columns)
            cur.execute(f'SELECT {order} FROM "{table}" ORDER BY 1, 2')
            rows = cur.fetchall()
        c.rollback()
    return rows


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    paths=st.lists(TEXT.map(lambda t: "/" + t), min_size=1, max_size=8, unique=True),
    tags=st.lists(TEXT, min_size=1, max_size=3),
)
def test_a_small_merge_leaves_what_the_staged_merge_leaves(
    engine: Engine, paths: list[str], tags: list[str]
) -> None:
    texts = [spool_rows.encode(HOST, e) for e in _events(paths, tags)]
    rows = spool_rows.batch([t for t in texts if t is not None], spool_rows.layout(), 1)
    merges = [
        ("file_state", rows.file_state_upserts),
        ("artefacts", rows.texts["artefacts"]),
        ("lineage", rows.texts["lineage"]),
    ]
    for table, data in merges:
        if not data:
            continue
        columns = rows.columns[table]
        assert values_merge.is_small(data)
        staged = _merged(engine, table, columns, data, small=False)
        assert _merged(engine, table, columns, data, small=True) == staged


def test_a_small_batch_forwards_without_a_staging_table(engine: Engine) -> None:
    # one connection, so that its own temporary schema tells what it created
    engine = make_engine(
        engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0
    )
    paths = [f"/small/{c}" for c in string.ascii_lowercase[:5]]
    rows = spool_rows.batch(
        [spool_rows.encode(HOST, e) or "" for e in _events(paths, ["model_weights"])],
        spool_rows.layout(),
        1,
    )
    copy_rows(engine, HOST, rows, Mark("spool-small", 5))
    gone = [FileEvent(action=FileAction.DELETED, path=p) for p in paths[:2]]
    rows = spool_rows.batch(
        [spool_rows.encode(HOST, e) or "" for e in gone], spool_rows.layout(), 6
    )
    copy_rows(engine, HOST, rows, Mark("spool-small", 7))
    with engine.connect() as c:
        state = c.execute(
            text("SELECT path FROM file_state WHERE path LIKE '/small/%' ORDER BY path")
        ).scalars()
        assert list(state) == paths[2:]
        staging = c.execute(
            text("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()")
        ).scalar_one()
    engine.dispose()
    assert staging == 0
