"""Environment variables over the YAML config: `EGRESS_AGENT_<SECTION>__<KEY>`.

This is what pydantic-settings did for `Settings`, in the few lines the agent needs: its
import (and the pydantic types it builds on import) was 0.15 s of every start's CPU.
Rules, as before: names are case-insensitive, `__` separates levels, a value for a list,
mapping or section is JSON (a section may be given whole, `EGRESS_AGENT_FILES='{...}'`),
any other value is the plain string that validation then converts (`"2.5"` for a float),
and the environment wins over the file key by key. Names of sections and keys are checked
by `config.check_environment` before this runs.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

_COMPLEX = (list, dict, set, frozenset, tuple)


class EnvJSONError(ValueError):
    """A variable that should hold JSON does not; `name` is the variable."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def env_layer(
    model: type[BaseModel], environ: Mapping[str, str], prefix: str, skip: frozenset[str]
) -> dict[str, Any]:
    """The nested document the variables under `prefix` describe (JSON decoded where the
    field is a list, mapping or section). Raises EnvJSONError, or RecursionError for JSON
    nested too deeply."""
    out: dict[str, Any] = {}
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in skip:
            continue
        path = upper[len(prefix) :].lower().split("__")
        if not all(path):
            continue
        value = _decode(name, environ[name], _annotation_at(model, path))
        node = out
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        last = path[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = merge(value, node[last])  # a whole section, and keys of it
        else:
            node[last] = value
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on it, mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The type of the field at `path`, or None past the models (inside a mapping)."""
    current: Any = model
    for key in path:
        current = _unoptional(current)
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(key)
        if field is None:
            return None
        current = field.annotation
    return current


def _unoptional(annotation: Any) -> Any:
    if _is_union(annotation):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _is_complex(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, (BaseModel, *_COMPLEX)):
        return True
    return get_origin(annotation) in _COMPLEX


def _decode(name: str, raw: str, annotation: Any) -> Any:
    annotation = _unoptional(annotation)
    if _is_union(annotation):
        if not any(_is_complex(a) for a in get_args(annotation)):
            return raw
        try:  # a union that admits a plain value too: JSON when it parses
            return json.loads(raw)
        except ValueError:
            return raw
    if not _is_complex(annotation):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        raise EnvJSONError(name) from None
