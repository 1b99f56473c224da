"""`store.artefacts.lookup`: what a real store (SQLite, and a scratch PostgreSQL
database) answers for a content hash, damaged rows included."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from agent.events import Artefact, CategoryMatch, FileAction, FileEvent, Tag
from agent.store import artefacts
from agent.store.db import StoreError, make_engine, upgrade
from agent.store.writer import write_batch


def store_weights(engine: Engine, sha: str, host: str = "host-1") -> None:
    """One stored artefact of `sha`: safetensors weights with one category match, written
    by the store writer as the daemon writes it."""
    art = Artefact(
        sha256=sha,
        size=10,
        content_type="application/vnd.safetensors",
        tags=(Tag("model_weights", "safetensors header", {"format": "safetensors"}),),
        matches=(CategoryMatch("pii", 3, "gdpr", 2, "medium", "terms"),),
    )
    write_batch(engine, host, [FileEvent(FileAction.WRITTEN, "/x", artefact=art)])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_lookup_returns_the_decoded_row(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    engine = make_engine(url or f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(engine)
    sha = "ab" * 32
    store_weights(engine, sha)
    row = artefacts.lookup(engine, sha)
    assert row is not None
    assert row.content_type == "application/vnd.safetensors"
    assert [t["kind"] for t in row.tags] == ["model_weights"]
    assert row.tags[0]["details"] == {"format": "safetensors"}
    assert [(m["category"], m["count"]) for m in row.matches] == [("pii", 3)]
    assert artefacts.lookup(engine, "cd" * 32) is None
    engine.dispose()


def test_a_row_with_text_that_is_not_json_reads_as_empty(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO artefacts (sha256, size, content_type, kinds, tags, matches, "
                "first_seen, last_seen) VALUES ('ee', 1, 'text/plain', '[]', '[not json', "
                "'{\"a\": 1}', '2026-01-01', '2026-01-01')"
            )
        )
    row = artefacts.lookup(engine, "ee")
    assert row is not None and row.content_type == "text/plain"
    assert row.tags == [] and row.matches == []  # a dict where a list belongs: empty too


def test_an_unreachable_store_raises_store_error(tmp_path: Path) -> None:
    bare = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables: never upgraded
    with pytest.raises(StoreError, match="artefact lookup"):
        artefacts.lookup(bare, "ab" * 32)
