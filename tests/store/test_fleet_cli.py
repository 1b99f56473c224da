"""Fleet view: the CLI against a PostgreSQL store holding rows from several hosts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from agent.events import FileAction, FileEvent, Flow
from agent.incidents.log import IncidentLog
from agent.store.db import make_engine, register_host, upgrade
from agent.store.writer import write_batch
from tests.conftest import cli, write_config

HOSTS = {"h-a": ("lab-a", 3), "h-b": ("lab-b", 5), "h-c": ("lab-c", 7)}


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path, agent_config: dict[str, Any]) -> Any:
    engine: Engine = make_engine(pg_url)
    upgrade(engine)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for host_id, (name, n) in HOSTS.items():
        register_host(engine, host_id, name)
        events: list[FileEvent | Flow] = [
            FileEvent(action=FileAction.WRITTEN, path=f"/{name}/f{i}") for i in range(n)
        ]
        events.append(Flow("tcp", "10.0.0.2", 5000, "203.0.113.7", 443, now, now, 1234))
        write_batch(engine, host_id, events)
        IncidentLog(engine, host_id, name).start()  # each host's incident chain (genesis)
    engine.dispose()
    doc = dict(agent_config)
    doc["database"] = {"url": pg_url}
    yield write_config(tmp_path / "cli.yaml", doc)


def test_events_list_by_host_name_and_id(fleet: Path) -> None:
    for host_id, (name, n) in HOSTS.items():
        for key in (name, host_id):
            out = cli("events", "list", "--host", key, "--json", "--limit", "100", config=fleet)
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            assert len(rows) == n + 1
            assert {r["host_id"] for r in rows} == {host_id}
            assert {r["path"] for r in rows if r["kind"] == "file"} == {
                f"/{name}/f{i}" for i in range(n)
            }
    everything = cli("events", "list", "--json", "--limit", "100", config=fleet).stdout
    assert len(everything.splitlines()) == sum(n + 1 for _, n in HOSTS.values())


def test_status_shows_per_host_counts(fleet: Path) -> None:
    doc = json.loads(cli("status", "--hosts", "--json", config=fleet).stdout)
    assert doc["store_reachable"] is True
    assert doc["counts"]["hosts"] == 3
    got = {h["hostname"]: (h["file_events"], h["flows"]) for h in doc["hosts"]}
    assert got == {name: (n, 1) for name, n in HOSTS.values()}

    one = json.loads(cli("status", "--host", "lab-b", "--json", config=fleet).stdout)
    assert [h["host_id"] for h in one["hosts"]] == ["h-b"]
    assert one["counts"]["file_events"] == 5

    text = cli("status", "--hosts", config=fleet).stdout
    for name, n in HOSTS.values():
        assert any(line.split()[:2] == [name, str(n)] for line in text.splitlines()), text

    missing = cli("status", "--host", "no-such-host", config=fleet, check=False)
    assert missing.returncode == 2
    assert "no such host" in missing.stderr


def test_incident_export_by_host(fleet: Path) -> None:
    out = cli("incidents", "export", "--format", "jsonl", "--host", "lab-c", config=fleet)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines, out.stderr
    assert "egress_agent_export_trailer" in lines[-1]  # the signed trailer ends the export
    assert {line["host_id"] for line in lines[:-1]} == {"h-c"}
