"""Small merges without a staging table: each column one text array, one INSERT.

The bulk path merges artefacts, lineage and file state by COPYing them into a temporary
table and moving them with `INSERT … SELECT … ON CONFLICT` (bulk.py). That costs the
backend ≈ 0.5 ms a merge whatever its size: the `CREATE TEMP TABLE IF NOT EXISTS`, a
COPY's set-up and the table emptied at commit. A fleet's steady state is small batches
(one per host per `forward_linger`, a few rows each), where that fixed cost was a
quarter of the transaction. Here the same spooled COPY lines are split into columns and
sent as text arrays to one `INSERT … SELECT … FROM unnest(…)` with the same conflict
clause: ≈ 0.17 ms for a few rows. Past `SMALL` rows the staging COPY is cheaper per row
(no splitting here, no array parsing there) and is kept.

The lines are the spool's COPY text (agent/store/spool_rows.py), so they are read back
as COPY reads them: `\\N` is NULL and backslash escapes are undone. Each value is cast
to its column's base type in the statement and the INSERT's assignment does the rest, so
a text too long for its `varchar(n)` fails as the COPY would, instead of being cut.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from psycopg import Cursor
from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer

from agent.store import spool_rows
from agent.store.tables import metadata

SMALL = 32  # rows: at most this many go as arrays (break-even near 30-50, measured)

# COPY text escapes: \b \f \n \r \t \v, \ and 1-3 octal digits, \x and 1-2 hex digits,
# and a backslash before any other character stands for that character
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_NAMED = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape(m: re.Match[str]) -> str:
    s = m.group(1)
    if s[0] == "x" and len(s) > 1:
        return chr(int(s[1:], 16))
    if s[0] in "01234567":
        return chr(int(s, 8))
    return _NAMED.get(s, s)


def copy_fields(line: str) -> list[str | None]:
    """One COPY text line (without its end) as its values: `\\N` None, escapes undone."""
    return [
        None if f == "\\N" else (_ESCAPE.sub(_unescape, f) if "\\" in f else f)
        for f in line.split("\t")
    ]


def is_small(data: str) -> bool:
    """Whether these COPY lines are few enough to go as arrays."""
    return 0 < data.count("\n") <= SMALL


def base_type(col: Any) -> str:
    """A column's PostgreSQL base type (no length): what a value is cast or copied as."""
    t = col.type
    if isinstance(t, JSON):
        return "json"
    if isinstance(t, DateTime):
        return "timestamptz"
    if isinstance(t, Boolean):
        return "bool"
    if isinstance(t, BigInteger):  # before Integer: BigInteger is one
        return "int8"
    if isinstance(t, Integer):
        return "int4"
    return "text"  # String and Text


def _cast(col: Any) -> str:
    """The cast of a text value (a `varchar(n)`'s length is checked by the assignment)."""
    t = base_type(col)
    return "" if t == "text" else f"::{t}"


@functools.cache
def _statement(table: str, columns: tuple[str, ...], on_conflict: str) -> str:
    cols = metadata.tables[table].c
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(f"v{i}{_cast(cols[c])}" for i, c in enumerate(columns))
    arrays = ", ".join("%s::text[]" for _ in columns)
    aliases = ", ".join(f"v{i}" for i in range(len(columns)))
    return (
        f'INSERT INTO "{table}" ({names}) SELECT {values} '
        f"FROM unnest({arrays}) AS u({aliases}) {on_conflict}"
    )


def merge(
    cur: Cursor[Any], table: str, columns: tuple[str, ...], data: str, on_conflict: str
) -> bool:
    """Insert these COPY lines of `table` with `on_conflict`, in one statement.

    False (nothing done) for a line whose fields do not match the columns: the staging
    COPY then reports it as the data error it is.
    """
    rows = [copy_fields(line) for line in spool_rows.lines(data)]
    if any(len(r) != len(columns) for r in rows):
        return False
    cur.execute(_statement(table, columns, on_conflict), [list(c) for c in zip(*rows)])
    return True


def delete_paths(cur: Cursor[Any], host_id: str, data: str) -> None:
    """Remove these paths (one COPY-escaped path a line) from the host's file state."""
    paths = [copy_fields(line)[0] for line in spool_rows.lines(data)]
    cur.execute(
        "DELETE FROM file_state WHERE host_id = %s AND path = ANY(%s::text[])", (host_id, paths)
    )
