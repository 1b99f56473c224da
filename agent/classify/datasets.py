"""Dataset parsers: Parquet, Arrow/Feather, JSON Lines, NumPy, HDF5, TFRecord, SQLite.

Each returns a `dataset` tag with format, columns (names, where cheap) and a row count
or estimate. Columnar formats are read through their footers only (pyarrow, when it is
installed); text formats from a bounded sample, with the row count extrapolated from
the file size. HDF5 is opened with h5py and also recognises Keras weight files (which
become `model_weights`). Optional libraries are imported lazily: without them the
signature-level tag remains and the Finding says what was skipped.
"""

from __future__ import annotations

import ast
import json
import os
import sqlite3
import struct
import tempfile
from typing import Any

from agent.classify.base import (
    Deadline,
    Finding,
    LimitExceeded,
    Limits,
    ParseError,
    Source,
    first_lines,
    human_count,
)
from agent.events import Tag

MAX_COLUMNS = 200
SAMPLE_BYTES = 1 << 20


def dataset_tag(fmt: str, columns: list[str] | None, rows: int | None, extra: str = "") -> Tag:
    parts = [fmt]
    if columns is not None:
        parts.append(f"{len(columns)} columns")
    if rows is not None:
        parts.append(f"{'~' if extra == 'estimate' else ''}{human_count(rows)} rows")
    if extra and extra != "estimate":
        parts.append(extra)
    return Tag(
        "dataset",
        ", ".join(parts),
        {"format": fmt, "columns": (columns or [])[:MAX_COLUMNS], "rows": rows},
    )


def columnar_finding(mime: str, fmt: str, names: list[str], rows: int | None) -> Finding:
    """A columnar file whose schema was read: its column names are the text to match."""
    return Finding(mime, [dataset_tag(fmt, names, rows)], text=" ".join(names))


def without_pyarrow(mime: str, fmt: str) -> Finding:
    """A columnar file when pyarrow (optional) is not installed: tagged, and marked skipped."""
    tag = dataset_tag(fmt, None, None, "pyarrow not installed")
    return Finding(mime, [tag], skipped="missing_library")


# --- NumPy ---------------------------------------------------------------------------
def parse_npy(src: Source, limits: Limits) -> Finding:
    head = src.head
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        raise ParseError("not .npy")
    major = head[6]
    if major == 1:
        (hlen,), start = struct.unpack_from("<H", head, 8), 10
    elif major in (2, 3):
        if len(head) < 12:
            raise ParseError(".npy truncated")
        (hlen,), start = struct.unpack_from("<I", head, 8), 12
    else:
        raise ParseError(f".npy version {major}")
    if hlen > 65536 or start + hlen > len(head):
        raise ParseError(".npy header truncated or too long")
    try:
        meta = ast.literal_eval(head[start : start + hlen].decode("latin-1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise ParseError(f".npy header: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("shape"), tuple):
        raise ParseError(".npy header has no shape")
    shape = meta["shape"]
    if len(shape) > limits.max_dims:
        raise LimitExceeded("absurd_count", f".npy shape of {len(shape)} dims")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ParseError(".npy shape is not integers")
    rows = shape[0] if shape else 1
    cols = [str(d) for d in shape[1:2]] if len(shape) > 1 else None
    descr = str(meta.get("descr", "?"))[:40]
    tag = dataset_tag("npy", None, rows, f"shape {tuple(shape)}, dtype {descr}")
    tag.details.update(shape=list(shape), dtype=descr)
    if cols is not None:
        tag.details["columns"] = [f"c{i}" for i in range(min(shape[1], MAX_COLUMNS))]
    return Finding("application/x-npy", [tag])


# --- CSV / TSV / JSON Lines ------------------------------------------------------------
def _sample(src: Source) -> bytes:
    with src.open() as f:
        return f.read(SAMPLE_BYTES)


def _estimate_rows(sample: bytes, size: int) -> tuple[int, bool]:
    lines = sample.count(b"\n")
    if len(sample) >= size:
        return lines + (0 if sample.endswith(b"\n") else 1), False
    return int(lines * size / max(len(sample), 1)), True


def is_jsonl(text: str) -> bool:
    lines = [ln for ln in first_lines(text, 5) if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        return all(isinstance(json.loads(ln), dict) for ln in lines[:-1])
    except (ValueError, RecursionError):  # a line nested 100,000 deep is not a record
        return False


def parse_jsonl(src: Source, limits: Limits, text: str) -> Finding:
    try:
        first = json.loads(first_lines(text, 1)[0])
    except RecursionError:
        raise ParseError("JSON Lines record nested too deep") from None
    columns = [str(k) for k in first][:MAX_COLUMNS] if isinstance(first, dict) else []
    rows, est = _estimate_rows(_sample(src), src.size)
    tag = dataset_tag("jsonl", columns, rows, "estimate" if est else "")
    return Finding("application/jsonl", [tag], text=text)


# --- TFRecord ------------------------------------------------------------------------
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def is_tfrecord(head: bytes) -> bool:
    if len(head) < 12:
        return False
    return struct.unpack_from("<I", head, 8)[0] == masked_crc(head[:8])


def parse_tfrecord(src: Source, limits: Limits) -> Finding:
    rows = 0
    pos = 0
    partial = False
    with src.open() as f:
        while pos < src.size:
            hdr = f.read(12)
            if len(hdr) < 12:
                partial = True
                break
            (length,) = struct.unpack_from("<Q", hdr)
            if struct.unpack_from("<I", hdr, 8)[0] != masked_crc(hdr[:8]):
                raise ParseError(f"TFRecord length CRC mismatch at {pos}")
            pos += 12 + length + 4
            if pos > src.size:  # the last record is cut short (or lies about its length)
                partial = True
                break
            f.seek(pos)
            rows += 1
            if rows >= 1_000_000:
                partial = True
                break
    if rows == 0:
        raise ParseError("TFRecord without records")
    tag = dataset_tag("tfrecord", None, rows, "estimate" if partial else "")
    return Finding("application/x-tfrecord", [tag])


# --- Parquet / Arrow (pyarrow) ----------------------------------------------------------
def parse_parquet(src: Source, limits: Limits) -> Finding:
    if src.size < 12:
        raise ParseError("Parquet too short")
    with src.open() as f:
        f.seek(src.size - 8)
        tail = f.read(8)
        if tail[4:] != b"PAR1":
            raise ParseError("Parquet footer magic missing")
        (footer,) = struct.unpack_from("<I", tail)
        if footer + 12 > src.size:
            raise ParseError("Parquet footer longer than the file")
        if footer > 64 << 20:
            raise LimitExceeded("header_too_large", f"Parquet footer of {footer} bytes")
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return without_pyarrow("application/vnd.apache.parquet", "parquet")
        f.seek(0)
        try:
            meta = pq.ParquetFile(f).metadata
            names = [meta.schema.column(i).name for i in range(min(meta.num_columns, 1000))]
            rows = int(meta.num_rows)
        except Exception as e:  # pyarrow raises its own error types on bad files
            raise ParseError(f"Parquet footer: {e}") from None
    return columnar_finding("application/vnd.apache.parquet", "parquet", names, rows)


def parse_arrow(src: Source, limits: Limits, path: str | None = None) -> Finding:
    """Arrow IPC file (Feather v2): schema and row count from the record batch headers.

    A real file is memory-mapped, so counting rows touches only batch metadata pages.
    """
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
    except ImportError:
        return without_pyarrow("application/vnd.apache.arrow.file", "arrow")
    try:
        if path is not None:
            with pa.memory_map(path, "r") as mm:
                names, rows = _arrow_counts(ipc.open_file(mm), src.deadline)
        else:
            with src.open() as f:
                names, rows = _arrow_counts(ipc.open_file(pa.PythonFile(f, mode="r")), src.deadline)
    except Exception as e:  # pyarrow raises its own error types on bad files
        raise ParseError(f"Arrow IPC: {e}") from None
    return columnar_finding("application/vnd.apache.arrow.file", "arrow", names, rows)


def _arrow_counts(reader: Any, deadline: Deadline) -> tuple[list[str], int | None]:
    names = [str(n) for n in reader.schema.names][:1000]
    batches = reader.num_record_batches
    if batches > 10_000:
        return names, None
    rows = 0
    for i in range(batches):
        deadline.check()
        rows += reader.get_batch(i).num_rows
    return names, rows


# --- SQLite --------------------------------------------------------------------------
def parse_sqlite(src: Source, limits: Limits, path: str | None) -> Finding:
    """Tables and their columns; row counts only for small databases (count is O(n))."""
    tmp: str | None = None
    if path is None:
        if not src.complete:
            raise ParseError("SQLite member larger than the inline limit")
        fd, tmp = tempfile.mkstemp(suffix=".sqlite")
        with os.fdopen(fd, "wb") as out, src.open() as f:
            out.write(f.read())
        path = tmp
    try:
        uri = "file:" + _quote(path) + "?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, timeout=0.1)
        # SQLite interrupts the statement in progress once the deadline has passed
        conn.set_progress_handler(lambda: int(src.deadline.expired), 10_000)
        try:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' LIMIT 200"
                ).fetchall()
            ]
            columns: list[str] = []
            rows = 0
            for t in tables:
                qt = '"' + t.replace('"', '""') + '"'
                columns += [f"{t}.{c[1]}" for c in conn.execute(f"PRAGMA table_info({qt})")]
                if src.size <= 64 << 20:
                    rows += int(conn.execute(f"SELECT count(*) FROM {qt}").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ParseError(f"SQLite: {e}") from None
    finally:
        if tmp:
            os.unlink(tmp)
    tag = dataset_tag("sqlite", columns, rows if src.size <= 64 << 20 else None)
    tag.details["tables"] = len(tables)
    return Finding("application/vnd.sqlite3", [tag], text=" ".join(columns))


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(os.fsencode(os.path.abspath(path)), safe="/")


# --- HDF5 (and Keras .h5) ------------------------------------------------------------
def is_hdf5(head: bytes) -> bool:
    sig = b"\x89HDF\r\n\x1a\n"
    if sig not in head:  # one C scan answers for nearly every file (3 µs of 8 slices)
        return False
    return any(head[o : o + 8] == sig for o in (0, 512, 1024, 2048, 4096, 8192, 16384, 32768))


def check_hdf5_superblock(head: bytes) -> None:
    """Refuse what libhdf5 should never see: an unknown superblock or address sizes.

    libhdf5 is C code running in the agent's process; the cheap checks here keep random
    and truncated files away from it.
    """
    sig = b"\x89HDF\r\n\x1a\n"
    base = next((o for o in (0, 512, 1024, 2048, 4096, 8192, 16384, 32768)
                 if head[o : o + 8] == sig), None)  # fmt: skip
    if base is None or len(head) < base + 16:
        raise ParseError("HDF5: no superblock")
    version = head[base + 8]
    if version > 3:
        raise ParseError(f"HDF5: superblock version {version}")
    sizes = head[base + 13 : base + 15] if version < 2 else head[base + 9 : base + 11]
    if any(b not in (2, 4, 8) for b in sizes):
        raise ParseError("HDF5: impossible offset or length size")


def parse_hdf5(src: Source, limits: Limits) -> Finding:
    check_hdf5_superblock(src.head)
    try:
        import h5py
    except ImportError:
        tag = dataset_tag("hdf5", None, None, "h5py not installed")
        return Finding("application/x-hdf5", [tag], skipped="missing_library")
    datasets: list[tuple[str, tuple[int, ...], str]] = []
    try:
        with src.open() as f, h5py.File(f, "r") as h5:
            attrs = {str(k) for k in h5.attrs}
            # Keras 2 full models carry attributes; Keras 3 weight files a "layers" group
            keras = bool(attrs & {"keras_version", "model_config", "backend"}) or (
                "model_weights" in h5 or "layers" in h5
            )

            def visit(name: str, obj: Any) -> Any:
                src.deadline.check()
                if isinstance(obj, h5py.Dataset):
                    datasets.append((name, tuple(int(d) for d in obj.shape), str(obj.dtype)))
                return True if len(datasets) >= 100_000 else None

            h5.visititems(visit)
    except Exception as e:  # h5py raises OSError, KeyError, ValueError on damaged files
        raise ParseError(f"HDF5: {e}") from None
    names = [d[0] for d in datasets]
    if keras:
        params = sum(_prod(d[1]) for d in datasets)
        dtypes: dict[str, int] = {}
        for _n, shape, dt in datasets:
            dtypes[dt] = dtypes.get(dt, 0) + _prod(shape)
        dtype = max(dtypes, key=lambda k: dtypes[k]) if dtypes else None
        from agent.classify.weights import weights_tag

        tag = weights_tag("keras_h5", len(datasets), params, _short_dtype(dtype))
        return Finding("application/x-hdf5", [tag], text=" ".join(names[:2000]))
    rows = max((d[1][0] for d in datasets if d[1]), default=None)
    tag = dataset_tag("hdf5", names[:MAX_COLUMNS], rows)
    tag.details["datasets"] = len(datasets)
    return Finding("application/x-hdf5", [tag], text=" ".join(names[:2000]))


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _short_dtype(dt: str | None) -> str | None:
    if dt is None:
        return None
    return {"float32": "f32", "float16": "f16", "float64": "f64", "bfloat16": "bf16"}.get(dt, dt)
