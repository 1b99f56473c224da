"""The `policy_versions` table: each policy version an agent put in force, once.

The policy holder (agent/policy/holder.py) records a version when a load or reload
changes the policy in force, so an incident's `policy_version` can be traced back to the
packs (id, version, file, sha256) it was decided by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from agent.store.tables import policy_versions

__all__ = ["record_policy_version"]


def record_policy_version(
    engine: Engine,
    version: str,
    loaded_at: datetime,
    packs: Sequence[Mapping[str, Any]],
    rules_count: int,
) -> bool:
    """Insert `version` unless the store has it; True when this call inserted it.

    Another agent on a fleet store recording the same version at the same moment is not
    an error (its insert won). Other store errors go to the caller.
    """
    table = policy_versions
    row = {
        "version": version,
        "loaded_at": loaded_at,
        "packs": [dict(p) for p in packs],
        "rules_count": rules_count,
    }
    try:
        with engine.begin() as conn:
            found = conn.execute(select(table.c.version).where(table.c.version == version)).first()
            if found is not None:
                return False
            conn.execute(insert(table).values(**row))
    except IntegrityError:
        return False  # another agent on the fleet store recorded the same version first
    return True
