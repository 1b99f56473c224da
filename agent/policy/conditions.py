"""Rule conditions: a small structured language, compiled once, evaluated without `eval`.

A condition is YAML data: `all: [...]`, `any: [...]`, `not: {...}`, `macro: NAME`, or a
leaf `{field: NAME, OP: VALUE}` with exactly one operator. Values may name a pack list
or parameter as `$name`. Compilation checks every field, operator and value against the
field registry (`fields`) and reports problems with their line; evaluation is a pure
function of the compiled tree and a facts mapping (see `facts`). A missing fact makes a
comparison false (so `not` of it is true); `exists` tests presence.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.linear_regex import PatternRefused, compile_pack_regex
from agent.policy._yaml import key_line, line_of
from agent.policy.fields import OPERATORS, field_type


# --- compiled tree ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Compare:
    field: str
    op: str
    value: Any

    def __call__(self, facts: Mapping[str, Any]) -> bool:
        present = self.field in facts and facts[self.field] is not None
        if self.op == "exists":
            return present is bool(self.value)
        if not present:
            return False
        try:
            return _OPS[self.op](facts[self.field], self.value)
        except TypeError:  # a fact of an unexpected shape (e.g. a list) never matches
            return False


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]

    def __call__(self, facts: Mapping[str, Any]) -> bool:
        for c in self.items:  # noqa: SIM110 - a plain loop: no generator per call on the hot path
            if not c(facts):
                return False
        return True


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]

    def __call__(self, facts: Mapping[str, Any]) -> bool:
        for c in self.items:  # noqa: SIM110 - as above
            if c(facts):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition

    def __call__(self, facts: Mapping[str, Any]) -> bool:
        return not self.item(facts)


Condition = Compare | All | AnyOf | Not


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    return None


def _cmp(fn: Callable[[float, float], bool]) -> Callable[[Any, Any], bool]:
    def op(fact: Any, value: Any) -> bool:
        n = _num(fact)
        return n is not None and fn(n, value)

    return op


def _as_set(fact: Any) -> frozenset[Any]:
    if isinstance(fact, (set, frozenset)):
        return frozenset(fact)
    if isinstance(fact, (list, tuple)):
        return frozenset(x for x in fact if not isinstance(x, (list, dict, set)))
    return frozenset()


def _in_networks(fact: Any, nets: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(str(fact))
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda f, v: f == v,
    "ne": lambda f, v: f != v,
    "in": lambda f, v: f in v,
    "not_in": lambda f, v: f not in v,
    "gt": _cmp(lambda a, b: a > b),
    "ge": _cmp(lambda a, b: a >= b),
    "lt": _cmp(lambda a, b: a < b),
    "le": _cmp(lambda a, b: a <= b),
    "contains": lambda f, v: v in _as_set(f),
    "contains_any": lambda f, v: not _as_set(f).isdisjoint(v),
    "contains_all": lambda f, v: v <= _as_set(f),
    "glob": lambda f, v: isinstance(f, str) and any(fnmatch.fnmatchcase(f, p) for p in v),
    "regex": lambda f, v: isinstance(f, str) and v.search(f) is not None,
    "cidr": _in_networks,
}


# --- compilation --------------------------------------------------------------------
@dataclass
class CompileContext:
    """What a condition may refer to, and where its problems go."""

    report: Callable[[int, str], None]
    resolve: Callable[[str], Any]  # "$name" -> list/parameter value; raises KeyError
    macros: Mapping[str, Any]
    known_category: Callable[[str], bool]
    _macro_cache: dict[str, Condition | None] = field(default_factory=dict)
    _macro_stack: list[str] = field(default_factory=list)


def compile_condition(raw: Any, ctx: CompileContext, line: int = 0) -> Condition | None:
    """Compile raw YAML into a condition; None (with problems reported) if it is bad."""
    line = line_of(raw, line)
    if not isinstance(raw, dict) or not raw:
        ctx.report(line, "a condition must be a mapping: all, any, not, macro or field")
        return None
    keys = set(raw)
    if keys & {"all", "any"}:
        key = next(iter(keys)) if len(keys) == 1 else None
        if key is None or not isinstance(raw[key], list) or not raw[key]:
            ctx.report(line, "'all'/'any' must be the only key, with a non-empty list")
            return None
        lines = getattr(raw[key], "item_lines", [line] * len(raw[key]))
        items = [compile_condition(c, ctx, ln) for c, ln in zip(raw[key], lines)]
        if any(i is None for i in items):
            return None
        return _flatten(key, [i for i in items if i is not None])
    if "not" in keys:
        if len(keys) != 1:
            ctx.report(line, "'not' must be the only key of its mapping")
            return None
        inner = compile_condition(raw["not"], ctx, key_line(raw, "not"))
        return Not(inner) if inner is not None else None
    if "macro" in keys:
        return _macro(raw, ctx, line)
    return _leaf(raw, ctx, line)


def _flatten(key: str, items: list[Condition]) -> Condition:
    """Splice nested all-in-all (any-in-any, e.g. from macros); plain comparisons first.

    Conditions are pure, so the order of the parts does not change the result; testing
    the cheap comparisons (event, channel) first skips most of the work for most events.
    """
    kind = All if key == "all" else AnyOf
    flat: list[Condition] = []
    seen: set[int] = set()
    for item in items:
        for part in item.items if isinstance(item, kind) else (item,):
            # a macro used twice is one shared node: `all`/`any` of it twice is it once,
            # and keeping one copy stops nested macros from growing exponentially
            if id(part) not in seen:
                seen.add(id(part))
                flat.append(part)
    flat.sort(key=lambda c: 0 if isinstance(c, Compare) else 1)
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


def event_kinds(cond: Condition) -> frozenset[str] | None:
    """The `event` values a condition can hold for, or None when it does not say."""
    return _event_kinds(cond, {})


def _event_kinds(cond: Condition, memo: dict[int, frozenset[str] | None]) -> frozenset[str] | None:
    # memoised per shared node: a macro reached many ways is looked at once
    if id(cond) in memo:
        return memo[id(cond)]
    out: frozenset[str] | None = None
    if isinstance(cond, Compare) and cond.field == "event":
        if cond.op == "eq":
            out = frozenset([cond.value])
        elif cond.op == "in":
            out = frozenset(cond.value)
    elif isinstance(cond, All):
        known = [k for k in (_event_kinds(c, memo) for c in cond.items) if k is not None]
        out = frozenset.intersection(*known) if known else None
    elif isinstance(cond, AnyOf):
        parts = [_event_kinds(c, memo) for c in cond.items]
        if not any(p is None for p in parts):
            out = frozenset().union(*(p for p in parts if p is not None))
    memo[id(cond)] = out
    return out


def _unique_nodes(cond: Condition) -> list[Condition]:
    """Every distinct node of a compiled condition once, however often it is shared."""
    seen: set[int] = set()
    out: list[Condition] = []
    stack: list[Condition] = [cond]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if isinstance(node, Not):
            stack.append(node.item)
        elif isinstance(node, (All, AnyOf)):
            stack.extend(node.items)
    return out


def referenced_categories(cond: Condition) -> frozenset[str]:
    """Category codes a compiled condition tests (in `categories` or `matches.CODE`)."""
    codes: set[str] = set()
    for node in _unique_nodes(cond):
        if not isinstance(node, Compare):
            continue
        if node.field.startswith("matches."):
            codes.add(node.field[8:])
        elif node.field.startswith("confidence."):
            codes.add(node.field[11:])
        elif node.field == "categories" and node.op != "exists":
            codes.update(_strings(node.value))
    return frozenset(codes)


MAX_CONDITION_NODES = 5_000
"""Comparisons one evaluation of a rule may make at most (macros counted each time used)."""


def evaluated_size(cond: Condition) -> int:
    """How many nodes one evaluation may visit: shared macros count once per use.

    Memoised per distinct node, so a pack that nests macros to blow up exponentially
    is measured in linear time and refused, not evaluated.
    """
    return _size(cond, {})


def _size(node: Condition, memo: dict[int, int]) -> int:
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, Compare):
        total = 1
    else:
        children = (node.item,) if isinstance(node, Not) else node.items
        total = 1 + sum(_size(child, memo) for child in children)
    memo[id(node)] = total
    return total


def _macro(raw: Mapping[str, Any], ctx: CompileContext, line: int) -> Condition | None:
    name = raw["macro"]
    if len(raw) != 1 or not isinstance(name, str):
        ctx.report(line, "'macro' must be the only key, with a macro name")
        return None
    if name not in ctx.macros:
        ctx.report(line, f"unknown macro {name!r}")
        return None
    if name in ctx._macro_stack:
        ctx.report(line, f"macro {name!r} refers to itself")
        return None
    if name not in ctx._macro_cache:
        ctx._macro_stack.append(name)
        try:
            ctx._macro_cache[name] = compile_condition(ctx.macros[name], ctx, line)
        finally:
            ctx._macro_stack.pop()
    return ctx._macro_cache[name]


def _leaf(raw: Mapping[str, Any], ctx: CompileContext, line: int) -> Condition | None:
    name = raw.get("field")
    ops = [k for k in raw if k != "field"]
    if not isinstance(name, str):
        ctx.report(line, "a comparison needs 'field: NAME' (or use all/any/not/macro)")
        return None
    ftype = field_type(name, ctx.known_category)
    if ftype is None:
        if name.startswith(("matches.", "confidence.")):
            code = name.partition(".")[2]
            ctx.report(line, f"unknown category {code!r} in field {name!r}")
        else:
            ctx.report(line, f"unknown field {name!r}")
        return None
    if len(ops) != 1:
        ctx.report(line, f"field {name!r} needs exactly one operator, got {sorted(map(str, ops))}")
        return None
    op = ops[0]
    where = key_line(raw, op)
    if op not in OPERATORS:
        ctx.report(where, f"unknown operator {op!r} (known: {', '.join(OPERATORS)})")
        return None
    types, shape = OPERATORS[op]
    if ftype not in types:
        ctx.report(where, f"operator {op!r} does not apply to {ftype} field {name!r}")
        return None
    if ftype == "bool":  # eq/ne on a flag compares with true or false
        shape = "bool" if shape == "scalar" else shape
    value = _resolve(raw[op], ctx, where)
    if value is _BAD:
        return None
    value = _shape(value, shape, op, ctx, where)
    if value is _BAD:
        return None
    if name == "categories" or name.startswith("matches."):
        codes = [name[8:]] if name.startswith("matches.") else _strings(value)
        unknown = [c for c in codes if not ctx.known_category(c)]
        if unknown:
            ctx.report(where, f"unknown category {', '.join(map(repr, unknown))}")
            return None
    return Compare(name, op, value)


_BAD = object()


def _resolve(value: Any, ctx: CompileContext, line: int) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        try:
            return ctx.resolve(value[1:])
        except KeyError:
            ctx.report(line, f"unknown list or parameter {value!r}")
            return _BAD
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            r = _resolve(item, ctx, line)
            if r is _BAD:
                return _BAD
            out.extend(r if isinstance(item, str) and isinstance(r, list) else [r])
        return out
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, (frozenset, tuple, list)):
        return [str(v) for v in value]
    return [str(value)]


def _shape(value: Any, shape: str, op: str, ctx: CompileContext, line: int) -> Any:
    scalar = (str, int, float)
    if shape == "scalar":
        if isinstance(value, scalar) and not isinstance(value, bool):
            return value
        ctx.report(line, f"operator {op!r} needs a single string or number")
    elif shape == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        ctx.report(line, f"operator {op!r} needs a number, got {type(value).__name__}")
    elif shape == "bool":
        if isinstance(value, bool):
            return value
        ctx.report(line, f"operator {op!r} needs true or false")
    elif shape == "regex":
        if not isinstance(value, str):
            ctx.report(line, "operator 'regex' needs a pattern string")
            return _BAD
        try:
            return compile_pack_regex(value)
        except PatternRefused as e:
            ctx.report(line, f"regular expression {value!r} refused: {e}")
    elif shape == "cidr":
        items = value if isinstance(value, list) else [value]
        nets = []
        for item in items:
            try:
                nets.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                ctx.report(line, f"bad CIDR {item!r}")
                return _BAD
        return tuple(nets)
    else:  # list
        items = value if isinstance(value, list) else [value]
        if all(isinstance(v, scalar) and not isinstance(v, bool) for v in items) and items:
            return frozenset(items) if op != "glob" else tuple(map(str, items))
        ctx.report(line, f"operator {op!r} needs a non-empty list of strings or numbers")
    return _BAD
