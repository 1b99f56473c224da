"""Datasets as statistics and data teams keep them: JSON arrays of records, ORC, Stata
.dta, SPSS .sav and SAS .sas7bdat.

Each is recognised by what its header proves (ORC's magic at both ends, Stata's XML-like
header or its old binary release byte, SPSS's `$FL2`, SAS's 32-byte magic) and read only
as far as the header: row and variable counts where the header has them. JSON arrays are
decoded element by element (`raw_decode`) over the bounded text sample, so a 4 GB array
costs the sample, and a nested element stops at Python's recursion limit as a ParseError.
"""

from __future__ import annotations

import json
import re
import struct

from agent.classify.base import Finding, Limits, ParseError, Source
from agent.classify.datasets import MAX_COLUMNS, columnar_finding, dataset_tag, without_pyarrow

MAX_RECORDS = 20_000  # JSON elements decoded before the count becomes an estimate
SAS_MAGIC = bytes.fromhex("000000000000000000000000c2ea8160b31411cfbd92080009c7318c181f1011")
_DECODER = json.JSONDecoder()
_STATA_TIME = re.compile(rb"[ \d]\d [A-Z][a-z]{2} \d{4} \d\d:\d\d")
_WS = " \t\r\n"


# --- JSON arrays of records -------------------------------------------------------------
def json_records(src: Source, text: str) -> Finding | None:
    """A JSON array of objects (records) that share keys, as a dataset; else None.

    Walks the array one element at a time over `text` (the bounded sample): the count
    is exact when the array closes inside it, else estimated from the bytes per record.
    """
    pos = len(text) - len(text.lstrip(_WS))
    if not text.startswith("[", pos):
        return None
    pos += 1
    first_keys: set[str] | None = None
    columns: list[str] = []
    count = 0
    closed = False
    start = pos
    while count < MAX_RECORDS:
        if count % 1024 == 0:
            src.deadline.check()
        while pos < len(text) and text[pos] in _WS:
            pos += 1
        if pos >= len(text):
            break
        if text[pos] == "]":
            closed = True
            break
        if count and text[pos] == ",":
            pos += 1
            while pos < len(text) and text[pos] in _WS:
                pos += 1
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            if count >= 2 and pos > len(text) - 65536:
                break  # an element cut by the sample bound
            return None
        if not isinstance(value, dict) or not value:
            return None
        keys = {str(k) for k in value}
        if first_keys is None:
            first_keys = keys
            columns = [str(k) for k in value][:MAX_COLUMNS]
        elif 2 * len(keys & first_keys) < min(len(keys), len(first_keys)):
            return None  # objects with nothing in common are a document, not a table
        count += 1
    if count < 2:
        return None
    rows, est = count, False
    if not closed:
        used = max(pos - start, 1)
        rows, est = max(count, int(count * src.size / used)), True
    tag = dataset_tag("json", columns, rows, "estimate" if est else "")
    return Finding("application/json", [tag], text=text)


# --- binary statistics formats -------------------------------------------------------------
def sniff_table(head: bytes, size: int, ext: str) -> str | None:
    """orc / stata / spss / sas when the header proves it, else None."""
    if head.startswith(b"ORC") and size > 16 and (ext == "orc" or head[3:4] in (b"\x08", b"\x0a")):
        return "orc"
    if head.startswith(b"<stata_dta><header><release>"):
        return "stata"
    old_stata = len(head) >= 10 and 104 <= head[0] <= 115 and head[1] in (1, 2)
    # four header bytes are weak alone: the name, or the save time Stata writes at
    # offset 91 ("27 May 2010 23:49"), must agree
    agree = ext == "dta" or _STATA_TIME.fullmatch(head[91:108]) is not None
    if old_stata and head[2] == 1 and head[3] == 0 and agree:
        return "stata"
    if head[:4] in (b"$FL2", b"$FL3") and len(head) >= 176:
        return "spss"
    if head.startswith(SAS_MAGIC):
        return "sas"
    return None


def parse_table(fmt: str, src: Source, limits: Limits) -> Finding:
    try:
        return {"orc": _orc, "stata": _stata, "spss": _spss, "sas": _sas}[fmt](src, limits)
    except struct.error as e:  # a header shorter than its fields
        raise ParseError(f"{fmt}: truncated header: {e}") from None


def _orc(src: Source, limits: Limits) -> Finding:
    with src.open() as f:
        f.seek(max(0, src.size - 1))
        ps_len = f.read(1)
        if not ps_len or ps_len[0] < 4 or ps_len[0] + 1 > src.size:
            raise ParseError("ORC: no postscript")
        f.seek(src.size - 1 - 3)
        if f.read(3) != b"ORC":
            raise ParseError("ORC: postscript magic missing")
        try:
            import pyarrow.orc as orc
        except ImportError:
            return without_pyarrow("application/x-orc", "orc")
        f.seek(0)
        try:
            reader = orc.ORCFile(f)
            names = [str(n) for n in reader.schema.names][:MAX_COLUMNS]
            rows = int(reader.nrows)
        except Exception as e:  # pyarrow raises its own error types on bad files
            raise ParseError(f"ORC footer: {type(e).__name__}: {e}") from None
    return columnar_finding("application/x-orc", "orc", names, rows)


def _stata(src: Source, limits: Limits) -> Finding:
    head = src.head
    if head.startswith(b"<stata_dta>"):
        try:
            release = int(head[28:31])
        except ValueError:
            raise ParseError("Stata: release is not a number") from None
        i = head.find(b"<byteorder>", 0, 256)
        k = head.find(b"<K>", 0, 256)
        if release not in (117, 118, 119, 120, 121) or i < 0 or k < 0:
            raise ParseError(f"Stata: release {release} or header fields missing")
        order = "<" if head[i + 11 : i + 14] == b"LSF" else ">"
        k_fmt, n_fmt = ("H", "I") if release == 117 else ("I" if release == 119 else "H", "Q")
        nvar = struct.unpack_from(order + k_fmt, head, k + 3)[0]
        n_at = k + 3 + struct.calcsize(k_fmt) + len(b"</K><N>")
        if head[n_at - 3 : n_at] != b"<N>":
            raise ParseError("Stata: <N> not after <K>")
        nobs = struct.unpack_from(order + n_fmt, head, n_at)[0]
    else:
        release = head[0]
        order = ">" if head[1] == 1 else "<"
        nvar, nobs = struct.unpack_from(order + "HI", head, 4)
    tag = dataset_tag("stata", None, nobs, f"{nvar} variables, release {release}")
    tag.details["variables"] = nvar
    return Finding("application/x-stata-dta", [tag])


def _spss(src: Source, limits: Limits) -> Finding:
    head = src.head
    layout = struct.unpack_from("<i", head, 64)[0]
    order = "<" if layout in (2, 3) else ">"
    if struct.unpack_from(order + "i", head, 64)[0] not in (2, 3):
        raise ParseError("SPSS: layout code is neither 2 nor 3")
    case_size, _compression, _weight, ncases = struct.unpack_from(order + "iiii", head, 68)
    rows = ncases if ncases >= 0 else None
    product = head[4:64].decode("latin-1", "replace").strip()
    extra = f"{case_size} values per case" if case_size > 0 else ""
    tag = dataset_tag("spss", None, rows, extra)
    tag.details["product"] = product[:60]
    return Finding("application/x-spss-sav", [tag])


def _sas(src: Source, limits: Limits) -> Finding:
    # the row count sits in page headers whose layout depends on 32/64-bit and
    # endianness flags: the magic is the evidence, the count is left unknown
    return Finding("application/x-sas-data", [dataset_tag("sas7bdat", None, None)])
