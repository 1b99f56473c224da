"""Where each event record's fields go: store rows, evidence documents, the event listing.

The dataclasses in agent/events.py are the one description of a record. Each view of a
record — a `flows` row, a flow in an incident's evidence, a flow in `events list` — is a
`Projection` of those fields: every field goes through under its own name unless this
module renames it, leaves it out, escapes it (text from outside the agent) or nests or
spreads it (the process behind an event). So a field added to `Flow` reaches the row, the
evidence (and with it every export) and the listing with no edit here; the store needs
its column and migration (tests/store/test_schema_map.py says which field lacks one).

What is left out is left out on purpose, and says why. Evidence is signed by the
incident chain: a key once signed keeps its name and meaning, and the fields left out
of it stay out (tests/store/test_schema_map.py lists them), while a new field joins it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from agent.events import CategoryMatch, Decision, FileEvent, Flow, ProcessInfo

_MATCH_FIELDS = tuple(f.name for f in dataclasses.fields(CategoryMatch))

Convert = Callable[[Any], Any]


def storable_text(s: str | None) -> str | None:
    """Text from outside the agent as a store or document takes it.

    Paths arrive as `os.fsdecode()`d strings; bytes that are not UTF-8 are kept readable
    and lossless for people as `\\xNN` escapes, because no database text column takes lone
    surrogates; NUL (which PostgreSQL text refuses) becomes `\\x00`.
    """
    if s is None:
        return None
    if s.isascii():  # nearly every path and command line: no encoding, nothing escaped
        return s.replace("\x00", "\\x00") if "\x00" in s else s
    try:
        s.encode("utf-8")
        return s.replace("\x00", "\\x00")
    except UnicodeEncodeError:
        try:  # file names: os.fsdecode's escapes (U+DC80..U+DCFF) back to their bytes
            raw = s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # any other lone surrogate: as \uXXXX text
            raw = s.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


# Text that comes from outside the agent (file names, command lines, names from the
# network), per record: escaped by `storable_text` in every view.
OUTSIDE_TEXT: Mapping[type, frozenset[str]] = {
    ProcessInfo: frozenset({"exe", "cmdline"}),
    FileEvent: frozenset({"path", "dest_path"}),
    Flow: frozenset({"dest_org", "service"}),
}


def _optional(tp: Any) -> Any:
    """`X` for `X | None`, else the type itself."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _converter(tp: Any, fn: Convert) -> Convert:
    """`fn`, or `fn` that passes None through when `tp` may be None."""
    if _optional(tp) is tp:
        return fn
    return lambda v: None if v is None else fn(v)


def column_value(tp: Any) -> Convert | None:
    """How a value of annotation `tp` is written to a column: enums as their text,
    tuples as JSON lists; everything else as it is (None: no conversion, the fast path)."""
    inner = _optional(tp)
    if isinstance(inner, type) and issubclass(inner, Enum):
        return _converter(tp, str)
    if inner is tuple or typing.get_origin(inner) is tuple:
        return _converter(tp, list)
    return None


def document_value(tp: Any) -> Convert | None:
    """How a value of annotation `tp` goes into a JSON document: as `column_value`, times
    as ISO 8601 text, and text as a builtin `str` (a `str` field may hold an enum member)."""
    inner = _optional(tp)
    if inner is datetime:
        return _converter(tp, datetime.isoformat)
    if inner is str:
        return _converter(tp, str)
    return column_value(tp)


class Projection:
    """One record's fields as a flat dict, derived from its dataclass fields.

    `rename` gives a field another key, `omit` leaves fields out, `convert` overrides how
    a field's value is converted (default: `value_of` its annotation, and `storable_text`
    for OUTSIDE_TEXT), `nest` turns a record-valued field into that projection's dict,
    `spread` puts its keys beside the others (all None when the value is None), and
    `derived` adds keys computed from the whole record. Field names in the maps are
    checked against the dataclass, so a renamed or removed field cannot be missed here.

    The projection is compiled once into one dict display (`source` shows it), as
    `dataclasses` compiles `__init__`: a loop over the fields cost 10 us a flow row
    against the hand-written dict's 3 us, on the writer's path for every event.
    """

    def __init__(
        self,
        record: type,
        *,
        value_of: Callable[[Any], Convert | None] = column_value,
        rename: Mapping[str, str] | None = None,
        omit: Collection[str] = (),
        convert: Mapping[str, Convert] | None = None,
        nest: Mapping[str, Projection] | None = None,
        spread: Mapping[str, Projection] | None = None,
        derived: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        rename, convert = dict(rename or {}), dict(convert or {})
        nest, spread, derived = dict(nest or {}), dict(spread or {}), dict(derived or {})
        hints = typing.get_type_hints(record)
        unknown = (set(rename) | set(omit) | set(convert) | set(nest) | set(spread)) - set(hints)
        if unknown:
            raise TypeError(f"{record.__name__} has no field {', '.join(sorted(unknown))}")
        text = OUTSIDE_TEXT.get(record, frozenset())
        self.record = record
        self.fields: tuple[str, ...] = tuple(
            f.name
            for f in dataclasses.fields(record)
            if f.name not in omit and f.name not in spread and f.name not in nest
        )
        self.names = tuple(rename.get(n, n) for n in self.fields)
        self._direct = tuple(
            (
                rename.get(n, n),
                n,
                convert.get(n) or (storable_text if n in text else value_of(hints[n])),
            )
            for n in self.fields
        )
        self._nest = tuple((rename.get(n, n), n, p) for n, p in nest.items())
        self._spread = tuple(spread.items())
        self._derived = tuple(derived.items())
        self.keys: tuple[str, ...] = (
            self.names
            + tuple(k for k, _, _ in self._nest)
            + tuple(k for p in spread.values() for k in p.keys)
            + tuple(derived)
        )
        namespace: dict[str, Any] = {}
        prologue: list[str] = []
        items = self.expressions("obj", namespace, prologue)
        body = "".join(f"    {line}\n" for line in prologue)
        self.source = (
            "def project(obj):\n"
            + body
            + "    return {\n"
            + "".join(f"        {key!r}: {expr},\n" for key, expr in items)
            + "    }\n"
        )
        exec(self.source, namespace)  # our own source, made of field names
        self._project: Callable[[Any], dict[str, Any]] = namespace["project"]

    def expressions(
        self, var: str, namespace: dict[str, Any], prologue: list[str]
    ) -> list[tuple[str, str]]:
        """(key, Python expression of `var`) per key; `prologue` gets local assignments."""

        def bind(fn: Any) -> str:
            name = f"_f{len(namespace)}"
            namespace[name] = fn
            return name

        out = []
        for key, name, fn in self._direct:
            out.append((key, f"{var}.{name}" if fn is None else f"{bind(fn)}({var}.{name})"))
        for key, name, nested in self._nest:
            value = f"{var}.{name}"
            out.append((key, f"(None if {value} is None else {bind(nested)}({value}))"))
        for name, inner in self._spread:
            local = f"{var}_{name}"
            prologue.append(f"{local} = {var}.{name}")
            for key, expr in inner.expressions(local, namespace, prologue):
                out.append((key, f"(None if {local} is None else {expr})"))
        for key, fn in self._derived:
            out.append((key, f"{bind(fn)}({var})"))
        return out

    def __call__(self, obj: Any) -> dict[str, Any]:
        return self._project(obj)


# -- the store's rows --------------------------------------------------------------------

# who did it, as the event tables' columns: the process tree and cwd are evidence only
PROCESS_COLUMNS = Projection(ProcessInfo, rename={"uid": "uid_num"}, omit={"ppid", "cwd"})

FLOW_ROW = Projection(
    Flow,
    rename={"start": "start_time", "end": "end_time"},
    # decisions have their table; `sensor` is always "network"; a pushed repository is
    # incident evidence (agent/incidents/repository.py), not a column
    omit={"repository", "sensor", "decisions"},
    spread={"process": PROCESS_COLUMNS},
)

FILE_EVENT_ROW = Projection(
    FileEvent,
    # the artefact has its table, keyed by sha256; the ctime only tells the classifier's
    # caches that a file changed (agent/fingerprint.py): the row keeps size, inode, mtime
    omit={"artefact", "decisions", "ctime_ns"},
    spread={"process": PROCESS_COLUMNS},
    derived={
        "sha256": lambda e: e.artefact.sha256 if e.artefact else None,
        "kinds": lambda e: list(e.artefact.kinds) if e.artefact else None,
        "categories": lambda e: [m.category for m in e.artefact.matches] if e.artefact else None,
        "skipped": lambda e: e.artefact.skipped[:32] if e.artefact and e.artefact.skipped else None,
        "skipped_at": lambda e: (
            e.artefact.skipped_at[:64] if e.artefact and e.artefact.skipped_at else None
        ),
    },
)

DECISION_ROW = Projection(Decision)


# -- incident evidence (signed by the chain: a key keeps its name, what is left out stays out)


def size_of(e: FileEvent) -> int:
    """A file event's size, or its artefact's when the event did not carry one."""
    if e.size is not None:
        return e.size
    return e.artefact.size if e.artefact else 0


def _tags(e: FileEvent) -> list[dict[str, Any]]:
    tags = e.artefact.tags if e.artefact else ()
    return [{"kind": t.kind, "evidence": storable_text(t.evidence)} for t in tags]


PROCESS_EVIDENCE = Projection(ProcessInfo, value_of=document_value, omit={"cwd"})

FLOW_EVIDENCE = Projection(
    Flow,
    value_of=document_value,
    omit={"name_source", "close_reason", "repository", "sensor", "decisions"},
    nest={"process": PROCESS_EVIDENCE},
)

FILE_EVIDENCE = Projection(
    FileEvent,
    value_of=document_value,
    omit={
        "size",
        "inode",
        "device",
        "mtime_ns",
        "ctime_ns",
        "origin",
        "sensor",
        "artefact",
        "decisions",
    },
    nest={"process": PROCESS_EVIDENCE},
    derived={
        "size": size_of,
        "sha256": lambda e: e.artefact.sha256 if e.artefact else None,
        "parents": lambda e: list(e.artefact.parents) if e.artefact else [],
        "content_type": lambda e: e.artefact.content_type if e.artefact else None,
        "kinds": lambda e: list(e.artefact.kinds) if e.artefact else [],
        "tags": _tags,
        "categories": lambda e: (
            [{f: getattr(m, f) for f in _MATCH_FIELDS} for m in e.artefact.matches]
            if e.artefact
            else []
        ),
    },
)

# a rule's reason is the packs' text (a decision row keeps it as it is, and a store that
# refuses it isolates that one event); the signed evidence has always escaped it
DECISION_EVIDENCE = Projection(Decision, value_of=document_value, convert={"reason": storable_text})


# -- `events list` (agent/store/queries.py): rows shown by their fields' names ----------


def listed(
    row: Projection, leave_out: Collection[str], rename: Mapping[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    """(listing key, column) for each field `row` stores, but those left out."""
    rename = rename or {}
    return tuple(
        (rename.get(name, name), column)
        for name, column in zip(row.fields, row.names, strict=True)
        if name not in leave_out
    )


# protocol is shown as the listing's `type`, the end as its `time`, the endpoints as
# `src`/`dst`; the HTTP host and the close reason have never been listed
FLOW_LISTED = listed(
    FLOW_ROW, {"protocol", "end", "src_ip", "src_port", "http_host", "close_reason"}
)
# the action is shown as `type`; inode, device, mtime and sensor have never been listed
FILE_LISTED = listed(
    FILE_EVENT_ROW,
    {"action", "time", "inode", "device", "mtime_ns", "sensor"},
    rename={"dest_path": "new_path"},
)
