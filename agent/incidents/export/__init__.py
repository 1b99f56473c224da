"""Incident exports: one module per format, the record selection, and file verification.

Every format renders one chain record per line (CSV: per row) as a pure function of the
record, and carries the chain fields plus the hashed payload. So an export file
verifies on its own: each line's hash is recomputed from its payload, consecutive
records must link, and each line must be exactly what the agent renders for that
payload — an edit to any visible field shows. Filters (`--since`, `--until`,
`--severity`) keep the chain whole: records they leave out between the first and last
one kept are written as *stubs* (seq, prev_hash and hash only).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from types import ModuleType
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import UserFacingError
from agent.incidents.chain import ChainEntry, Problem, VerifyReport, verify_entries
from agent.incidents.export import cef, ecs, jsonl, ocsf, trailer
from agent.incidents.export import csv as csv_format
from agent.incidents.model import parse_iso
from agent.incidents.queries import at_least

FORMATS: dict[str, ModuleType] = {
    "jsonl": jsonl,
    "ecs": ecs,
    "ocsf": ocsf,
    "csv": csv_format,
    "cef": cef,
}


class ExportFileError(UserFacingError):
    """An export file that cannot be read as any known format."""


def select(
    entries: Iterable[ChainEntry],
    since: datetime | None = None,
    until: datetime | None = None,
    min_severity: str | None = None,
) -> Iterator[ChainEntry]:
    """The records to export, in order, with stubs for those filtered out in between."""
    if since is None and until is None and min_severity is None:
        yield from entries
        return
    wanted = set(at_least(min_severity)) if min_severity else None
    by_host: dict[str, list[tuple[ChainEntry, bool]]] = {}
    for e in entries:
        t = parse_iso(e.time)
        keep = (since is None or t >= since) and (until is None or t < until)
        if keep and wanted is not None and e.incident_uid:
            keep = (e.document.get("incident") or {}).get("severity") in wanted
        by_host.setdefault(e.host_id, []).append((e, keep))
    for records in by_host.values():
        kept = [i for i, (_e, k) in enumerate(records) if k]
        if not kept:
            continue
        for e, keep in records[kept[0] : kept[-1] + 1]:
            yield e if keep else stub(e)


def stub(e: ChainEntry) -> ChainEntry:
    return ChainEntry(e.seq, e.host_id, e.record_type, e.time, None, None, e.prev_hash, e.hash)


def write(entries: Iterable[ChainEntry], fmt: str, out: IO[str]) -> int:
    """Write `entries` in format `fmt`; returns the number of records written."""
    mod = FORMATS[fmt]
    n = 0
    if mod.HEADER:
        out.write(mod.HEADER)
    newline = "\r\n" if fmt == "csv" else "\n"
    for e in entries:
        out.write(mod.render(e) + newline)
        n += 1
    return n


def detect(first_line: str) -> str:
    line = first_line.lstrip("\ufeff")
    if line.startswith("CEF:"):
        return "cef"
    if line.startswith('"seq"'):
        return "csv"
    if line.startswith("{"):
        if '"@timestamp"' in line and '"egress"' in line:
            return "ecs"
        if '"class_uid"' in line:
            return "ocsf"
        return "jsonl"
    raise ExportFileError("not an incident export (jsonl, ecs, ocsf, csv or cef)")


def read_file(fp: IO[str], fmt: str | None = None) -> Iterator[ChainEntry]:
    """The chain records of an export file (not verified: see `verify_file`)."""
    lines = trailer.split(fp.readlines()).body
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        return
    mod = FORMATS[fmt or detect(first)]
    for entry, _observed in mod.read(lines):
        yield entry


def verify_file(
    fp: IO[str],
    fmt: str | None = None,
    public_key: Ed25519PublicKey | None = None,
    require_signature: bool = False,
) -> tuple[str, VerifyReport]:
    """Verify an export read from `fp`; returns (format, report).

    With `public_key`, the trailer's signature must verify with it; with
    `require_signature`, a file without a trailer (cut at its end, or unsigned) fails.
    """
    parts = trailer.split(fp.readlines())
    lines = parts.body
    if not any(ln.strip() for ln in lines) and parts.trailer is not None:
        report = VerifyReport()
        trailer.check(report, parts, None, public_key, require_signature)
        return fmt or str(parts.trailer.get("format") or "jsonl"), report
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        raise ExportFileError("the file is empty")
    fmt = fmt or detect(first)
    mod = FORMATS[fmt]
    # a line format's line must be its render exactly; CSV compares the cells as written
    expected = getattr(mod, "expected", mod.render)
    mismatched: dict[tuple[str, int], str] = {}

    last: list[ChainEntry] = []

    def entries() -> Iterator[ChainEntry]:
        try:
            for entry, observed in mod.read(lines):
                last[:] = [entry]
                if entry.payload is not None and observed != expected(entry):
                    mismatched[(entry.host_id, entry.seq)] = (
                        "the line differs from what its hashed payload renders to: "
                        "a field was edited"
                    )
                yield entry
        except (ValueError, KeyError, TypeError) as e:
            raise ExportFileError(
                f"cannot read the file as {fmt}: {type(e).__name__}: {e}"
            ) from None

    report = verify_entries(entries(), None, anchored=True)
    seen = {(p.host_id, p.seq) for p in report.problems}
    for (host, seq), why in mismatched.items():
        if (host, seq) not in seen:
            report.problems.append(Problem(host, seq, why))
    trailer.check(report, parts, last[0] if last else None, public_key, require_signature)
    return fmt, report


def describe(report: VerifyReport) -> dict[str, Any]:
    first = report.first
    return {
        "ok": report.ok,
        "records": report.records,
        "incidents": report.incidents,
        "hosts": report.hosts,
        "problems": len(report.problems),
        "first_broken": None
        if first is None
        else {"host_id": first.host_id, "seq": first.seq, "why": first.why},
        "unsealed_records": report.unsealed,
        "anchors": report.anchors,
        "signature": report.signature or None,
        "notes": report.notes,
    }
