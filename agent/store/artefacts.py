"""Artefact rows as lineage reads them: what the store already knows of a content hash.

The classifier's lineage (agent/classify/lineage.py) asks, for a file whose SHA-256 it
has not met lately, what the `artefacts` table holds — in a fleet store that includes
what other hosts' agents found. This is the one place that query meets the table: the
caller gets plain decoded values and builds its own `Known` from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Text, select, type_coerce
from sqlalchemy.exc import SQLAlchemyError

from agent.store.db import StoreError
from agent.store.models import Artefact


@dataclass(frozen=True, slots=True)
class StoredArtefact:
    """One `artefacts` row's classification, JSON decoded; lists are empty when the
    column held nothing usable (NULL, or text that is not a JSON list)."""

    content_type: str | None
    tags: list[dict[str, Any]]
    matches: list[dict[str, Any]]


def lookup(engine: Engine, sha256: str) -> StoredArtefact | None:
    """The artefact row for `sha256`, or None when the store has none.

    Raises StoreError when the store cannot answer (unreachable, no such table)."""
    # the JSON columns as the driver gives them, decoded here: a row holding text that is
    # not JSON reads as "no tags" rather than breaking every lookup of that hash
    q = select(
        Artefact.content_type, type_coerce(Artefact.tags, Text), type_coerce(Artefact.matches, Text)
    ).where(Artefact.sha256 == sha256)
    try:
        with engine.connect() as conn:
            row = conn.execute(q).first()
    except SQLAlchemyError as e:
        raise StoreError(f"artefact lookup of {sha256[:12]} failed: {e}") from e
    if row is None:
        return None
    content_type, tags, matches = (_json(v) for v in row)
    return StoredArtefact(
        content_type if isinstance(content_type, str) else None,
        _dicts(tags),
        _dicts(matches),
    )


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _json(value: Any) -> Any:
    """PostgreSQL's driver hands JSON columns back decoded; SQLite hands back their text."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value
