"""Fixtures shared by the store's tests: open incident rows written straight into a
scratch PostgreSQL store, for the retention paths that must spare what a case cites."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.conftest import insert_incident

OpenIncident = Callable[[Engine, str, dict[str, Any]], str]


@pytest.fixture
def open_incident() -> OpenIncident:
    """`open_incident(engine, host, evidence) -> uid`: one open incident row of `host`
    citing `evidence` (`{"events": [uid…]}`, `{"decisions": ["uid:0"…]}`), inserted as
    is — no incident log, no chain — so a test controls exactly what is cited."""
    made = 0

    def insert_row(engine: Engine, host: str, evidence: dict[str, Any]) -> str:
        nonlocal made
        made += 1
        uid = f"inc-{host[:4]}-{made}"
        insert_incident(
            engine, host, "open", evidence, uid=uid, dedup_key=f"k{made}", at=datetime.now(UTC)
        )
        return uid

    return insert_row
