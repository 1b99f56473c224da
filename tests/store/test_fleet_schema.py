"""The central schema on PostgreSQL: concurrent first starts, and the fleet indexes."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect

from agent.store.db import current_revision, make_engine, upgrade
from agent.store.partitions import PARTITIONED

# the CLI's and analysts' queries: by time, by host, by rule, by hash
FLEET_INDEXES = {
    "file_events": {("time",), ("host_id", "time"), ("sha256",)},
    "flows": {("end_time",), ("host_id", "end_time"), ("dst_ip",)},
    "decisions": {("time",), ("host_id", "time"), ("rule_id",), ("subject_uid",)},
    "incidents": {("opened_at",), ("host_id", "status"), ("rule_id",)},
}


@pytest.mark.timeout(60)  # without the advisory lock, concurrent first upgrades hang
def test_agents_starting_together_migrate_a_fresh_database_once(pg_empty_url: str) -> None:
    errors: list[BaseException] = []
    engines = [make_engine(pg_empty_url) for _ in range(4)]

    def start(i: int) -> None:
        try:
            upgrade(engines[i])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert current_revision(engines[0]) is not None
    insp = inspect(engines[0])
    for table, wanted in FLEET_INDEXES.items():
        have = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
        assert wanted <= have, f"{table}: missing {wanted - have}"
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints(table)}
        # the idempotency key the forwarder relies on; with the partition key on PostgreSQL
        assert ("uid", PARTITIONED.get(table, "opened_at")) in uniques or ("uid",) in uniques
    for e in engines:
        e.dispose()
