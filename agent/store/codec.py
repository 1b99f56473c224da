"""Events as JSON text, for the store-and-forward spool.

The spool (agent/store/spool.py) holds judged events between the writer and the central
PostgreSQL; it keeps them as JSON so that a spool written by one agent version can be
read by the next, and so that nothing is ever unpickled. Encoding and decoding are
generic over the frozen dataclasses in agent/events.py (a field added there needs no
edit here); decoding converts by each field's annotation (times, enums such as
`Decision.action`, nested records, tuples) and ignores keys it does not know (a field
removed in a newer version does not make old spools unreadable). Paths that are not
UTF-8 survive as surrogate escapes: `json.dumps` writes them as `\\udcNN` and
`json.loads` gives them back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar, cast

import msgspec

from agent.errors import AgentError
from agent.events import Event, FileEvent, Flow

T = TypeVar("T")


class CodecError(AgentError, ValueError):
    """A spooled record is not a valid event (corrupt or from an incompatible version)."""


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(v: Any) -> Any:
    names = _FIELD_NAMES.get(type(v))
    if names is None and dataclasses.is_dataclass(v) and not isinstance(v, type):
        names = _FIELD_NAMES[type(v)] = tuple(f.name for f in dataclasses.fields(v))
    if names is not None:
        return {n: _plain(getattr(v, n)) for n in names}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def encode(event: Event) -> str:
    """One event as a JSON object `{"k": "file"|"flow", "e": {...fields}}` (ASCII only)."""
    kind = "file" if isinstance(event, FileEvent) else "flow"  # the keys of _RECORDS
    return json.dumps({"k": kind, "e": _plain(event)}, separators=(",", ":"), default=str)


# scalar annotations checked on decode, so a damaged record fails here (and is skipped)
# instead of poisoning every later attempt to write its batch
_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
}


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, tuple[type, ...] | None, str], ...]:
    """(field, the scalar types it takes or None, its annotation) per field, once per class.

    `dataclasses.fields` per decoded object was a third of the forwarder's decode time.
    """
    return tuple((f.name, _SCALARS.get(str(f.type)), str(f.type)) for f in dataclasses.fields(cls))


def _known(cls: type[T], d: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise CodecError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    out = {}
    for name, allowed, annotation in _schema(cast(type, cls)):
        if name not in d:
            continue
        v = d[name]
        if allowed is not None and (not isinstance(v, allowed) or v is True or v is False):
            raise CodecError(f"{cls.__name__}.{name}: {type(v).__name__} is not {annotation}")
        out[name] = v
    return out


def _record(cls: type[T], d: Any) -> T:
    """An instance of dataclass `cls` from its JSON object: unknown keys ignored, scalars
    checked, and the fields that JSON cannot hold as such (times, enums, records, tuples)
    converted as their annotations say."""
    known = _known(cls, d)
    for name, convert in _conversions(cast(type, cls)):
        if name in known:
            known[name] = convert(known[name])
    return cls(**known)


@functools.cache
def _conversions(cls: type) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """(field, how its JSON value becomes the field's value) for the fields that need it."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        convert = _from_json(hints[f.name])
        if convert is not None:
            out.append((f.name, convert))
    return tuple(out)


def _from_json(tp: Any) -> Callable[[Any], Any] | None:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        some = _from_json(inner[0]) if len(inner) == 1 else None
        return None if some is None else functools.partial(_or_none, some)
    if tp is datetime:
        return datetime.fromisoformat
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return functools.partial(_record, tp)
    if tp is tuple or typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[:1]
        each = _from_json(item[0]) if item else None
        return tuple if each is None else functools.partial(_tuple_of, each)
    return None


def _or_none(convert: Callable[[Any], Any], v: Any) -> Any:
    return None if v is None else convert(v)


def _tuple_of(convert: Callable[[Any], Any], v: Any) -> tuple[Any, ...]:
    return tuple(convert(x) for x in v)


class _Envelope(msgspec.Struct):
    k: str
    e: msgspec.Raw


_RECORDS: dict[str, type[FileEvent] | type[Flow]] = {"file": FileEvent, "flow": Flow}
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_TYPED = {kind: msgspec.json.Decoder(record) for kind, record in _RECORDS.items()}


def decode(text: str) -> Event:
    """The event `encode` wrote; CodecError when the text is not one.

    msgspec builds the dataclasses straight from the JSON, typed and checked in C (four
    times the speed of the checked path below, which was most of the forwarder's CPU).
    What it refuses — a path with a surrogate escape (not UTF-8 on disk), a damaged
    record, a record of another version — goes the checked way, which decides.
    """
    try:
        env = _ENVELOPE.decode(text)
        typed = _TYPED.get(env.k)
        if typed is not None:
            return cast(Event, typed.decode(env.e))
    except (msgspec.MsgspecError, TypeError, ValueError):
        pass
    return decode_checked(text)


def decode_checked(text: str) -> Event:
    """`decode` by hand: json, then each field checked and converted."""
    try:
        doc = json.loads(text)
        kind, d = doc["k"], doc["e"]
        record = _RECORDS.get(kind)
        if record is not None:
            return cast(Event, _record(record, d))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CodecError(f"not a spooled event: {type(e).__name__}: {e}") from None
    raise CodecError(f"not a spooled event: unknown kind {kind!r}")
