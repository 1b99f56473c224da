"""The daemon's store path is SQLAlchemy Core: importing sqlalchemy.orm and the ORM
classes cost each start about 0.07 s of CPU that the daemon never used."""

from __future__ import annotations

import subprocess
import sys

from agent.store import models, tables

PROBE = """
import sys
import agent.daemon, agent.jobs, agent.incidents.service, agent.incidents.queries
import agent.store.filestate, agent.store.policy_versions, agent.store.retention
print("sqlalchemy.orm" in sys.modules, "agent.store.models" in sys.modules)
"""


def test_the_daemons_store_modules_do_not_import_the_orm() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_orm_classes_are_mapped_onto_the_core_tables() -> None:
    mapped = {m.class_.__table__.name: m.class_.__table__ for m in models.Base.registry.mappers}
    assert mapped == dict(tables.metadata.tables)
    assert all(mapped[name] is tables.metadata.tables[name] for name in mapped)
