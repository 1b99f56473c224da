"""The scheduled incident export (APScheduler job `incident_export`).

Every `jobs.export_interval` seconds, the chain records this host appended since the
last run are written to `jobs.export_dir` as one file in `jobs.export_format`
(`incidents-<host>-<first seq>-<last seq>.<ext>`). The file is written to a temporary
name, flushed to disk and renamed; only then does the cursor in the `job_state` table
move. A crash in between re-exports the same range under the same name, so a restart
resumes where it left off and never skips a record. Each file ends with a trailer
signed by the host key (export/trailer.py), so a file cut short or extended later fails
`incidents verify --file F --public-key K`.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from agent.incidents.anchor import load_or_create_key
from agent.incidents.export import FORMATS, write
from agent.incidents.export.trailer import write_signed
from agent.incidents.queries import chain_entries
from agent.store.jobstate import job_value, put_job_value

if TYPE_CHECKING:
    from agent.runtime import JobSpec, Runtime

log = logging.getLogger(__name__)
JOB_NAME = "incident_export"


def cursor(engine: Engine, host_id: str) -> int:
    value = job_value(engine, JOB_NAME, host_id)
    return int(value.get("last_seq", -1)) if isinstance(value, dict) else -1


def _save_cursor(engine: Engine, host_id: str, last_seq: int, path: str) -> None:
    put_job_value(engine, JOB_NAME, host_id, {"last_seq": last_seq, "file": path})


def export_new(
    engine: Engine,
    host_id: str,
    directory: Path,
    fmt: str,
    key: Ed25519PrivateKey | None = None,
) -> Path | None:
    """Export the records after the cursor (signed with `key`); returns the file written."""
    after = cursor(engine, host_id)
    entries = [e for e in chain_entries(engine, after_seq=after) if e.host_id == host_id]
    if not entries:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    first, last = entries[0].seq, entries[-1].seq
    name = f"incidents-{host_id}-{first:010d}-{last:010d}.{FORMATS[fmt].EXTENSION}"
    path = directory / name
    tmp = directory / f".{name}.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as out:
        if key is not None:
            write_signed(entries, fmt, out, key, datetime.now(UTC))
        else:
            write(entries, fmt, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    _save_cursor(engine, host_id, last, str(path))
    log.info("exported incident chain records %d..%d to %s", first, last, path)
    return path


def export_job(rt: Runtime) -> JobSpec | None:
    jobs = rt.settings.jobs
    if jobs.export_dir is None:
        return None
    directory = Path(jobs.export_dir)
    key = load_or_create_key(rt.settings.state_dir)

    def run() -> None:
        export_new(rt.engine, rt.host_id, directory, jobs.export_format, key)

    return JOB_NAME, jobs.export_interval, run
