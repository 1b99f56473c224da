"""store/policy_versions.py: each policy version is kept once, with its packs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from agent.store.db import make_engine, upgrade
from agent.store.models import PolicyVersion
from agent.store.policy_versions import record_policy_version

PACKS = [{"id": "site-lab", "version": "1", "regime": "SITE", "file": "lab.yaml", "sha256": "ab"}]


def test_a_version_is_recorded_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(engine)
    when = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    assert record_policy_version(engine, "v1", when, PACKS, 12)
    assert not record_policy_version(engine, "v1", when, [], 0)  # the first one stays
    assert record_policy_version(engine, "v2", when, [], 0)
    with engine.connect() as c:
        rows = c.execute(
            select(PolicyVersion.version, PolicyVersion.packs, PolicyVersion.rules_count)
        ).all()
    assert sorted((r.version, r.packs, r.rules_count) for r in rows) == [
        ("v1", PACKS, 12),
        ("v2", [], 0),
    ]
    engine.dispose()
