"""Delimited text tables as they are found: CSV, TSV, semicolon and pipe tables,
whitespace-separated numbers, a single numeric column, ARFF and Matrix Market.

The layout is judged on the first 60 lines of the bounded text sample: comment lines
(`#`, `%`, `//`) and up to two title rows are skipped, quoted delimiters count once
(csv's rules, only for lines with quotes), and the header's width must be repeated by
the rows. Prose with a steady count of commas is refused by its cells (long, wordy).
Row counts are extrapolated from the 1 MiB sample (`datasets._estimate_rows`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

from agent.classify.base import Finding, Limits, ParseError, Source, first_lines
from agent.classify.datasets import MAX_COLUMNS, _estimate_rows, _sample, dataset_tag

SNIFF_LINES = 60  # lines of the sample the delimiter and layout are judged on
_COMMENT = ("#", "%", "//", ";;")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN|inf|-inf|NA")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a delimited table starts in its text: lines skipped before the header
    (comments, a title row), the header's fields, and the data rows' field count."""

    delimiter: str
    skip: int
    header: list[str]
    fields: int


MAX_LINE = 1 << 16  # characters of one line looked at: a 4 MB line is no table row


def _split(line: str, delim: str) -> list[str] | None:
    line = line[:MAX_LINE]
    if delim == " ":
        return line.split()
    if '"' not in line:
        return line.split(delim)  # what csv.reader gives a line without quotes, faster
    try:
        return next(csv.reader([line], delimiter=delim))
    except (csv.Error, StopIteration):
        return None


def _layout(text: str, delim: str, min_rows: int = 2) -> Layout | None:
    """The table layout for `delim`: at least `min_rows` rows
    of one field count ≥ 2 after at most two lines of another count (a title such as
    sklearn's `569,30,malignant,benign`) and any comment lines; for whitespace, every
    data field a number. Quoted delimiters count as one field (csv's own rules)."""
    raw = first_lines(text, SNIFF_LINES)
    complete = len(raw) < SNIFF_LINES or len(text) <= sum(len(x) + 1 for x in raw)
    if not complete and len(raw) > 2:
        raw = raw[:-1]  # the last line may be cut by the sample bound
    if delim == " ":  # a whitespace table's last line is numbers: most text stops here
        last = next((ln for ln in reversed(raw) if ln.strip()), "")
        if not all(_NUMBER.fullmatch(x) for x in last.split()):
            return None
    rows: list[tuple[int, list[str]]] = []
    for i, line in enumerate(raw):
        if not line.strip() or line.lstrip().startswith(_COMMENT):
            continue
        fields = _split(line, delim)
        if fields is None:
            return None
        rows.append((i, fields))
    for title in range(min(3, len(rows))):
        body = rows[title:]
        counts = [len(f) for _, f in body]
        n = counts[0] if counts else 0  # the header's width
        if n < 2 or len(body) < 2:
            continue
        # one line of another width (a ragged or cut end) is not a disagreement
        agree = sum(1 for c in counts if c == n)
        if agree < len(counts) - 1 or agree < 2:
            continue
        data = [f for _, f in body[1:]]
        if all(not f[0].strip() for f in data):
            return None  # lines indented by a tab: an empty first field is no column
        if delim == " " and not all(_NUMBER.fullmatch(x) for f in data for x in f):
            return None
        cells = [x for _, f in body[:20] for x in f]
        wordy = sum(1 for x in cells if x.count(" ") >= 2)
        if sum(len(x) for x in cells) > 40 * len(cells) or 2 * wordy > len(cells):
            return None  # fields of sentences: prose with a steady count of commas
        if len(body) < min_rows:
            return None
        return Layout(delim, body[0][0], body[0][1], n)
    return None


def sniff_layout(text: str, ext: str) -> Layout | None:
    """The layout of a delimited (CSV, TSV, semicolon, pipe, whitespace) table, or None."""
    lines = [ln for ln in first_lines(text, 20) if ln.strip()]
    if len(lines) < 2 and ext not in ("csv", "tsv"):
        return None
    order = (",", ";", "\t", "|") if ext == "csv" else ("\t", ",", ";", "|")
    min_rows = 2 if ext in ("csv", "tsv", "dat") else 3
    for delim in order:
        if delim not in text[:65536]:
            continue
        found = _layout(text, delim, min_rows)
        if found is not None:
            return found
    if ext in ("csv", "tsv") and len(lines) == 1:  # a header-only table
        delim = "\t" if ext == "tsv" or "\t" in lines[0] else ","
        header = _split(lines[0], delim) or []
        return Layout(delim, 0, header, len(header)) if len(header) >= 2 else None
    return _layout(text, " ", min_rows) or _numeric_column(text)


def _numeric_column(text: str) -> Layout | None:
    """One number per line over at least ten lines (a target vector, a time series)."""
    raw = [ln.strip() for ln in first_lines(text, SNIFF_LINES)]
    lines = [ln for ln in raw[:-1] or raw if ln and not ln.startswith(_COMMENT)]
    if len(lines) < 10 or not all(_NUMBER.fullmatch(ln) for ln in lines[1:]):
        return None
    header = lines[0] if not _NUMBER.fullmatch(lines[0]) else "c0"
    return Layout(" ", 0, [header], 1)


def is_matrix_market(text: str) -> bool:
    """A Matrix Market exchange file (sparse or dense numeric matrix)."""
    return text[:14].lower() == "%%matrixmarket"


_ARFF_LINE = re.compile(r"^[ \t]*@(relation|attribute|data)\b[ \t]*(\S*)", re.I | re.M)


def parse_arff(text: str) -> Finding | None:
    """Weka ARFF: `%` comments, `@RELATION`, one `@ATTRIBUTE` per column, `@DATA`.
    Looked for in the first 64 KiB; the rows are counted after `@DATA` in the sample."""
    sample = text[:65536]
    columns: list[str] = []
    relation = data_at = None
    for m in _ARFF_LINE.finditer(sample):
        word = m.group(1).lower()
        if word == "relation" and relation is None and not columns:
            relation = m.group(2)
        elif word == "attribute" and relation is not None and len(columns) < 10_000:
            columns.append(m.group(2).strip("'\""))
        elif word == "data" and relation is not None:
            data_at = m.end()
            break
    if relation is None or data_at is None or not columns:
        return None
    rows = sum(1 for ln in text[data_at:].splitlines() if ln.strip() and ln[:1] != "%")
    return Finding("text/x-arff", [dataset_tag("arff", columns[:MAX_COLUMNS], rows)], text=text)


def sniff_delimited(text: str, ext: str) -> str | None:
    """The delimiter of a delimited table sample (" " for whitespace), or None."""
    found = sniff_layout(text, ext)
    return found.delimiter if found is not None else None


def parse_delimited(src: Source, limits: Limits, text: str, delim: str) -> Finding:
    layout = _layout(text, delim) if delim != "" else None
    if layout is None:
        layout = sniff_layout(text, src.ext)
    if layout is None or layout.delimiter != delim:
        raise ParseError("not a delimited table")
    rows, est = _estimate_rows(_sample(src), src.size)
    fmt = {"\t": "tsv", " ": "whitespace_table"}.get(delim, "csv")
    header = [h.strip() for h in layout.header[:MAX_COLUMNS]]
    extra = "estimate" if est else ""
    tag = dataset_tag(fmt, header, max(rows - 1 - layout.skip, 0), extra)
    if layout.skip:
        tag.details["skipped_lines"] = layout.skip
    ctype = {"tsv": "text/tab-separated-values", "csv": "text/csv"}.get(fmt, "text/plain")
    return Finding(ctype, [tag], text=text)
