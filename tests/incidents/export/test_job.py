"""The scheduled export job: new records only, files that verify, resume after a restart."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import Engine

from agent.config import Settings
from agent.incidents.export import verify_file
from agent.incidents.export.job import cursor, export_job, export_new
from agent.incidents.log import IncidentLog
from tests.incidents.helpers import finding


def test_export_job_resumes_where_it_left_off(store: Engine, tmp_path: Path) -> None:
    log = IncidentLog(store, "host-a", "lab-ws-1")
    log.start()
    log.record(finding(1, key="a"))
    out = tmp_path / "exports"
    first = export_new(store, "host-a", out, "ecs")
    assert first is not None and first.name.endswith("-0000000000-0000000001.ecs.jsonl")
    assert export_new(store, "host-a", out, "ecs") is None  # nothing new
    assert cursor(store, "host-a") == 1

    log.record(finding(2, key="b"))
    log.record(finding(3, key="a"))  # an update of the first
    # a "restart": a new job object, same store
    rt = SimpleNamespace(
        settings=Settings(jobs={"export_dir": str(out), "export_format": "csv"}),
        engine=store,
        host_id="host-a",
    )
    spec = export_job(rt)  # type: ignore[arg-type]
    assert spec is not None and spec[0] == "incident_export"
    spec[2]()
    files = sorted(out.iterdir())
    assert [f.name for f in files][-1].endswith("-0000000002-0000000003.csv")
    assert not [f for f in files if f.name.startswith(".")]  # no temporary file left
    for f in files:
        with f.open(encoding="utf-8", newline="") as fp:
            _fmt, report = verify_file(fp)
        assert report.ok, (f, report.problems)
    assert cursor(store, "host-a") == 3


def test_export_job_is_off_without_a_directory() -> None:
    rt = SimpleNamespace(settings=Settings(), engine=None, host_id="h")
    assert export_job(rt) is None  # type: ignore[arg-type]
