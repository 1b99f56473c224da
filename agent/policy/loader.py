"""Reading pack files: YAML with line numbers, then each part checked against the schema.

Every problem becomes an `Issue` naming `file:line` and what is wrong; nothing stops at
the first one. Parts are validated one by one (the pack header, each category, each
rule, each override) so that a mistake in one rule does not hide the mistakes in the
next. Cross-references — categories, macros, lists, regexes, CIDRs, duplicate ids — are
checked afterwards by `build`, once every pack in force is known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.policy._yaml import MAX_PACK_BYTES, MarkedDict, item_line, key_line, line_of, load_marked
from agent.policy.issues import ENGINE_VERSION, Issue
from agent.policy.issues import SHIPPED_DIR as SHIPPED_DIR  # re-exported
from agent.policy.issues import PolicyError as PolicyError  # re-exported
from agent.policy.schema import (
    CategoryModel,
    OverrideModel,
    PackMeta,
    RuleModel,
    Scalar,
)

TOP_LEVEL = ("pack", "parameters", "lists", "macros", "categories", "rules", "overrides")


@dataclass
class ParsedPack:
    """One pack file after schema checks; parts that failed them are left out."""

    file: str
    origin: str  # "shipped" | "site"
    sha256: str
    raw: MarkedDict
    meta: PackMeta | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, list[Any]] = field(default_factory=dict)
    macros: dict[str, Any] = field(default_factory=dict)
    categories: list[tuple[CategoryModel, Any]] = field(default_factory=list)
    rules: list[tuple[RuleModel, Any]] = field(default_factory=list)
    overrides: list[tuple[OverrideModel, Any]] = field(default_factory=list)


def pack_files(paths: Sequence[Path]) -> tuple[list[Path], list[Issue]]:
    """Expand directories to their `*.yaml`/`*.yml` files (sorted, not recursive)."""
    files: list[Path] = []
    issues: list[Issue] = []
    for p in paths:
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file())
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            issues.append(Issue(str(p), 0, "no such policy file or directory"))
    return files, issues


def parse_pack(path: Path, origin: str) -> tuple[ParsedPack | None, list[Issue]]:
    """Read one pack file; return what validated and every problem found."""
    name = str(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_PACK_BYTES + 1)
    except OSError as e:
        return None, [Issue(name, 0, f"cannot read: {e.strerror or e}")]
    if len(data) > MAX_PACK_BYTES:
        return None, [Issue(name, 0, f"larger than {MAX_PACK_BYTES} bytes")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, [Issue(name, line, "not UTF-8 text")]
    doc, problems = load_marked(text)
    issues = [Issue(name, p.line, p.message) for p in problems]
    if doc is None:
        if not issues:
            issues.append(Issue(name, 1, "empty pack: expected a mapping with 'pack:'"))
        return None, issues
    if not isinstance(doc, MarkedDict):
        return None, [*issues, Issue(name, line_of(doc, 1), "a pack must be a YAML mapping")]
    pack = ParsedPack(name, origin, hashlib.sha256(data).hexdigest(), doc)
    _parse_parts(pack, issues)
    return pack, issues


def _parse_parts(pack: ParsedPack, issues: list[Issue]) -> None:
    doc = pack.raw
    for key in doc:
        if key not in TOP_LEVEL:
            issues.append(
                Issue(
                    pack.file,
                    key_line(doc, key),
                    f"unknown field {key!r} (known: {', '.join(TOP_LEVEL)})",
                )
            )
    if "pack" not in doc:
        issues.append(Issue(pack.file, line_of(doc, 1), "missing required field 'pack'"))
    else:
        pack.meta = _validate(
            PackMeta, doc["pack"], pack.file, key_line(doc, "pack"), ("pack",), issues
        )
        if pack.meta is not None and _version(pack.meta.required_engine_version) > ENGINE_VERSION:
            issues.append(
                Issue(
                    pack.file,
                    key_line(doc["pack"], "required_engine_version"),
                    f"required_engine_version {pack.meta.required_engine_version} is newer than "
                    f"this engine ({'.'.join(map(str, ENGINE_VERSION))}); upgrade egress-agent",
                )
            )
        if pack.meta is not None and zone(pack.meta.timezone) is None:
            issues.append(
                Issue(
                    pack.file,
                    key_line(doc["pack"], "timezone"),
                    f"unknown timezone {pack.meta.timezone!r} (an IANA name, e.g. Asia/Shanghai)",
                )
            )
    if "rules" not in doc and "overrides" not in doc:
        # a pack cut short while being copied (say, just before `rules:`) must not load
        # as a valid pack that silently switches its rules off
        issues.append(
            Issue(
                pack.file,
                line_of(doc, 1),
                "missing 'rules:' (or, in a site pack, 'overrides:'); "
                "write 'rules: []' for a pack with categories only",
            )
        )
    pack.parameters = _mapping(doc, "parameters", dict[str, Scalar], pack, issues)
    pack.lists = _mapping(doc, "lists", dict[str, list[Scalar]], pack, issues)
    pack.macros = _mapping(doc, "macros", dict[str, Any], pack, issues)
    pack.categories = _items(doc, "categories", CategoryModel, pack, issues)
    pack.rules = _items(doc, "rules", RuleModel, pack, issues)
    pack.overrides = _items(doc, "overrides", OverrideModel, pack, issues)


def zone(name: str) -> ZoneInfo | None:
    """The IANA time zone a pack's legal dates are in (None if unknown)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _mapping(doc: MarkedDict, key: str, tp: Any, pack: ParsedPack, issues: list[Issue]) -> Any:
    if key not in doc or doc[key] is None:
        return {}
    raw = doc[key]
    line = key_line(doc, key)
    try:
        value = TypeAdapter(tp).validate_python(raw)
    except ValidationError as e:
        _report(e, raw, pack.file, line, (key,), issues)
        return {}
    for name in value:
        if not isinstance(name, str) or not name.isidentifier():
            issues.append(Issue(pack.file, key_line(raw, name), f"{key}: bad name {name!r}"))
    return value


def _items(
    doc: MarkedDict, key: str, model: type[BaseModel], pack: ParsedPack, issues: list[Issue]
) -> list[Any]:
    if key not in doc or doc[key] is None:
        return []
    raw = doc[key]
    if not isinstance(raw, list):
        issues.append(Issue(pack.file, key_line(doc, key), f"{key}: expected a list"))
        return []
    out = []
    for i, item in enumerate(raw):
        line = item_line(raw, i)
        obj = _validate(model, item, pack.file, line, (f"{key}[{i}]",), issues)
        if obj is not None:
            out.append((obj, item))
    return out


def _validate(
    model: type[BaseModel],
    raw: Any,
    file: str,
    line: int,
    where: tuple[str, ...],
    issues: list[Issue],
) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        _report(e, raw, file, line, where, issues)
        return None


def _report(
    err: ValidationError,
    raw: Any,
    file: str,
    line: int,
    where: tuple[str, ...],
    issues: list[Issue],
) -> None:
    for e in err.errors():
        loc = tuple(e["loc"])
        at = _line_at(raw, loc, line)
        path = ".".join([*where, *(str(p) for p in loc)])
        parent = ".".join([*where, *(str(p) for p in loc[:-1])])
        if e["type"] == "extra_forbidden":
            msg = f"unknown field {str(loc[-1])!r} in {parent}"
        elif e["type"] == "missing":
            msg = f"missing required field {str(loc[-1])!r} in {parent}"
        else:
            msg = f"{path}: {e['msg']}"
            if (
                e["type"] in ("string_pattern_mismatch", "enum", "literal_error")
                or "type" in e["type"]
            ):
                msg += f" (got {e.get('input')!r})"
        issues.append(Issue(file, at, msg))


def _line_at(raw: Any, loc: tuple[Any, ...], default: int) -> int:
    """The line of the deepest node of `loc` that exists in the marked document."""
    line = line_of(raw, default)
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            line = key_line(node, part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            line = item_line(node, part)
            node = node[part]
        else:
            break
    return line
