"""Fixtures shared by the store's tests: open incident rows written straight into a
scratch PostgreSQL store, for the retention paths that must spare what a case cites."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from agent.store.models import IncidentRow

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
        now = datetime.now(UTC)
        with engine.begin() as c:
            c.execute(
                insert(IncidentRow).values(
                    uid=uid,
                    host_id=host,
                    kind="exfiltration",
                    rule_id="r1",
                    pack="pack",
                    severity="high",
                    status="open",
                    title="t",
                    dedup_key=f"k{made}",
                    opened_at=now,
                    updated_at=now,
                    evidence=evidence,
                    policy_version="v1",
                )
            )
        return uid

    return insert_row
