"""Spooled events as COPY-ready table rows: the forwarder's path with no per-event work.

With a central PostgreSQL the writer spools each event (agent/store/spool.py) and the
forwarder moves it on. As JSON (agent/store/codec.py) every event was encoded by the
writer, decoded again by the forwarder, turned into row dicts and formatted for COPY:
about three quarters of the forwarder's CPU, and more than PostgreSQL spent storing the
rows. Here the writer turns each event into its table rows once (agent/store/rows.py,
the same rows every other path stores) in PostgreSQL's COPY text format, so forwarding
a batch is joining the spooled texts per table and sending them (agent/store/bulk.py,
`copy_rows`).

One spooled text holds an event's lines for each table, the tables in `TABLES` order
separated by `SECTION`. Artefact lines start with their sha256 and file-state lines with
their path, so a batch folds repeats (the last wins, as `batch_rows` does) by that first
field without parsing; a file-state line that is only a path says the path is gone.
The column lists are kept with the spool (`layout`), so a spooled row is read with the
columns it was written with even after an upgrade adds some.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, Table

from agent.events import Event, FileEvent
from agent.store import rows as R
from agent.store.models import Artefact, DecisionRow, FileEventRow, FileState, FlowRow, Lineage

TABLES = ("file_events", "flows", "decisions", "artefacts", "lineage", "file_state")
EVENT_TABLES = TABLES[:3]
SECTION = "\x1f"  # never in a line: `_text` escapes it like a tab
_MODELS: dict[str, Any] = {
    "file_events": FileEventRow,
    "flows": FlowRow,
    "decisions": DecisionRow,
    "artefacts": Artefact,
    "lineage": Lineage,
    "file_state": FileState,
}
# COPY text escapes: backslash and the delimiters; U+001F is escaped too (COPY reads
# `\x1f` back as the character) so that it can separate an event's sections
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", SECTION: "\\x1f"})


def _columns(name: str) -> tuple[str, ...]:
    table = cast(Table, _MODELS[name].__table__)
    cols = tuple(c.name for c in table.columns if c.name != "id")
    if name == "file_state":  # the fold key first, as artefacts' sha256 is
        cols = ("path", *(c for c in cols if c != "path"))
    return cols


def layout() -> dict[str, tuple[str, ...]]:
    """This version's column list per table, in the order its lines hold the values."""
    return {name: _columns(name) for name in TABLES}


def _specs() -> dict[str, tuple[tuple[str, bool], ...]]:
    """Per table: (column, whether it is JSON) in line order."""
    out = {}
    for name, cols in layout().items():
        table = cast(Table, _MODELS[name].__table__)
        out[name] = tuple((c, isinstance(table.c[c].type, JSON)) for c in cols)
    return out


_SPECS = _specs()


def _line(name: str, row: dict[str, Any]) -> str:
    """One row as a COPY text line. Plain loops on purpose: this runs per value."""
    values = []
    for col, is_json in _SPECS[name]:
        v = row[col]
        if is_json:
            # JSON columns always hold JSON, None as `null` (what the binary path writes);
            # json.dumps escapes control characters, so only backslashes need doubling
            v = "null" if v is None else json.dumps(v)
            values.append(v.replace("\\", "\\\\") if "\\" in v else v)
            continue
        t = type(v)
        if t is str:
            # isprintable is False for tab, newline, CR and U+001F (and a few more, which
            # translate leaves as they are): two quick scans spare most texts the copy
            values.append(v.translate(_ESCAPE) if "\\" in v or not v.isprintable() else v)
        elif v is None:
            values.append("\\N")
        elif t is int:
            values.append(str(v))
        elif t is bool:
            values.append("t" if v else "f")
        elif t is datetime:
            values.append(v.isoformat())
        else:  # an enum or other str subclass, a float
            values.append(str(v).translate(_ESCAPE))
    return "\t".join(values) + "\n"


def encode(host_id: str, event: Event, seen: datetime | None = None) -> str | None:
    """One event's rows as spooled text; None when a text cannot be stored as UTF-8.

    `seen` stamps artefacts and lineage (the writer's time, as `batch_rows` uses its
    own). None is rare — a lone surrogate in a field `storable_text` does not escape —
    and that event is spooled as JSON instead, which keeps it exactly.
    """
    seen = seen or datetime.now(UTC)
    sections = ["", "", "", "", "", ""]
    if isinstance(event, FileEvent):
        sections[0] = _line("file_events", R.file_event_row(event, host_id))
        a = event.artefact
        if a is not None:
            art = R.artefact_row(a, seen)
            if art is not None:
                sections[3] = _line("artefacts", art)
            sections[4] = "".join(_line("lineage", ln) for ln in R.lineage_rows(a, seen))
        upserts, deletes = R.file_state_changes([event])
        ops = [d.translate(_ESCAPE) + "\n" for d in sorted(deletes)]
        ops += [_line("file_state", {"host_id": host_id, **u}) for u in upserts.values()]
        sections[5] = "".join(ops)
    else:
        sections[1] = _line("flows", R.flow_row(event, host_id))
    sections[2] = "".join(_line("decisions", d) for d in R.decision_rows(event, host_id))
    text = SECTION.join(sections)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


@dataclass(frozen=True, slots=True)
class RowsBatch:
    """A run of spooled rows ready for COPY: one text per table, repeats folded."""

    columns: dict[str, tuple[str, ...]]
    texts: dict[str, str]  # file_events, flows, decisions, artefacts, lineage
    file_state_upserts: str
    file_state_deletes: str  # one (COPY-escaped) path per line
    first_seq: int
    events: int

    def counts(self) -> dict[str, int]:
        n = {t: self.texts[t].count("\n") for t in ("file_events", "flows", "decisions")}
        return {**n, "artefacts": self.texts["artefacts"].count("\n")}


def batch(texts: Sequence[str], columns: dict[str, tuple[str, ...]], first_seq: int) -> RowsBatch:
    """Join a run's spooled texts per table; artefacts and file state folded, last wins.

    A text is one event's sections or several events' joined by `SECTION` (one spool
    record of a batch): joined again here, the two are the same."""
    # one join and one split for the whole run, then every sixth part is one table's
    parts = SECTION.join(texts).split(SECTION)
    width = len(TABLES)
    joined = {name: "".join(parts[i::width]) for i, name in enumerate(TABLES[:5])}
    artefacts = {line[: line.index("\t")]: line for line in lines(joined["artefacts"])}
    joined["artefacts"] = "".join(line + "\n" for line in artefacts.values())
    state = {line.split("\t", 1)[0]: line for line in lines("".join(parts[5::width]))}
    upserts = "".join(line + "\n" for line in state.values() if "\t" in line)
    deletes = "".join(line + "\n" for line in state.values() if "\t" not in line)
    # a spooled text may hold several events' sections (agent/store/spool.py joins them)
    return RowsBatch(columns, joined, upserts, deletes, first_seq, len(parts) // width)


def lines(text: str) -> list[str]:
    """The lines of a section without their ends (not str.splitlines: it also splits at
    characters COPY text leaves as they are, such as U+001C and U+2028)."""
    return text[:-1].split("\n") if text else []
