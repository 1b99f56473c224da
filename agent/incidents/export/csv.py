"""CSV for spreadsheets and legal: RFC 4180, safe against formula injection (OWASP).

Every cell is quoted; a cell that a spreadsheet would run as a formula — starting with
`=`, `+`, `-`, `@`, tab, carriage return or NUL — gets a leading `'` (CWE-1236), and so
does a cell that already starts with `'`, which keeps the escaping reversible. The last
columns are the chain fields and the hashed payload, so the file verifies on its own.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from agent.incidents.chain import ChainEntry
from agent.incidents.export._view import view

NAME = "csv"
EXTENSION = "csv"
DANGEROUS = ("=", "+", "-", "@", "\t", "\r", "\0", "'")
COLUMNS = (
    "seq",
    "host_id",
    "hostname",
    "record_type",
    "time",
    "incident_uid",
    "kind",
    "status",
    "severity",
    "rule_id",
    "pack",
    "regime",
    "legal_ref",
    "item",
    "in_force",
    "control_state",
    "confidence",
    "title",
    "file_path",
    "file_sha256",
    "file_size",
    "original_path",
    "destination",
    "destination_ip",
    "destination_port",
    "country",
    "service",
    "service_category",
    "community_id",
    "bytes_out",
    "process",
    "pid",
    "user",
    "acted_by",
    "note",
    "prev_hash",
    "hash",
    "payload",
)


def safe_cell(value: object) -> str:
    """The cell text a spreadsheet shows as text, never evaluates."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(DANGEROUS) else text


def unsafe_cell(text: str) -> str:
    """The inverse of `safe_cell`."""
    return text[1:] if text.startswith("'") else text


def _write(cells: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerow(
        [safe_cell(c) for c in cells]
    )
    return buf.getvalue()


HEADER = _write(COLUMNS)


def cells(entry: ChainEntry) -> list[object]:
    v = view(entry)
    inc, f, fl, p, d = v.incident, v.file, v.flow, v.process, v.decision
    return [
        entry.seq,
        entry.host_id,
        v.hostname,
        entry.record_type,
        entry.time,
        entry.incident_uid,
        inc.get("kind"),
        inc.get("status"),
        inc.get("severity"),
        inc.get("rule_id"),
        inc.get("pack"),
        d.get("regime"),
        d.get("legal_ref"),
        d.get("item"),
        d.get("in_force"),
        d.get("control_state"),
        d.get("confidence"),
        inc.get("title"),
        v.path,
        f.get("sha256"),
        f.get("size"),
        v.original.get("path"),
        fl.get("sni") or fl.get("name"),
        fl.get("dst_ip"),
        fl.get("dst_port"),
        fl.get("country"),
        fl.get("service"),
        fl.get("service_category"),
        fl.get("community_id"),
        inc.get("bytes_out"),
        p.get("exe"),
        p.get("pid"),
        p.get("user"),
        inc.get("acted_by"),
        inc.get("note"),
        entry.prev_hash,
        entry.hash,
        entry.payload if entry.payload is not None else "",
    ]


def render(entry: ChainEntry) -> str:
    return _write(str(c) if c is not None else "" for c in cells(entry)).rstrip("\r\n")


def expected(entry: ChainEntry) -> list[str]:
    """The cells, as written, of the row for `entry`."""
    return [safe_cell("" if c is None else c) for c in cells(entry)]


def read(lines: Iterable[str]) -> Iterator[tuple[ChainEntry, list[str]]]:
    """(entry, the row's cells as written) for each data row; the header is skipped."""
    rows = csv.reader(lines)
    header = next(rows, None)
    if header is None:
        return
    names = [unsafe_cell(h) for h in header]
    for raw in rows:
        if not raw:
            continue
        row = dict(zip(names, (unsafe_cell(c) for c in raw)))
        payload = row.get("payload") or None
        entry = ChainEntry(
            seq=int(row["seq"]),
            host_id=row["host_id"],
            record_type=row["record_type"],
            time=row["time"],
            incident_uid=row["incident_uid"] or None,
            payload=payload,
            prev_hash=row["prev_hash"],
            hash=row["hash"],
        )
        yield entry, raw
