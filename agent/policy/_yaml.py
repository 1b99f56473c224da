"""YAML reading that remembers where every key and list item came from.

Policy errors must name `file:line`, so packs are not read with `yaml.safe_load` (which
forgets positions) but composed into nodes and converted here into `MarkedDict` and
`MarkedList`: ordinary dicts and lists that also know the line of the mapping or list
itself and of each key or item. Scalars are resolved exactly as `safe_load` would.
Hostile input is bounded: a size cap, a node budget (alias "billion laughs" expansions
hit it), and duplicate keys are errors rather than a silent last-one-wins.
"""

from __future__ import annotations

from typing import Any

import yaml

from agent.errors import UserFacingError

MAX_PACK_BYTES = 4 << 20
MAX_NODES = 200_000


class MarkedDict(dict[Any, Any]):
    """A mapping with `line` (1-based, of the mapping) and `key_lines` (per key)."""

    line: int
    key_lines: dict[Any, int]


class MarkedList(list[Any]):
    """A sequence with `line` (of the sequence) and `item_lines` (per index)."""

    line: int
    item_lines: list[int]


class YamlProblem(UserFacingError):
    """The file is not YAML we can read; `line` is 1-based (0 when unknown)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def line_of(obj: Any, default: int = 0) -> int:
    return int(getattr(obj, "line", default) or default)


def key_line(mapping: Any, key: Any) -> int:
    """Line of `key` in a marked mapping, else the mapping's own line."""
    lines = getattr(mapping, "key_lines", None)
    if lines and key in lines:
        return int(lines[key])
    return line_of(mapping)


def item_line(seq: Any, index: int) -> int:
    lines = getattr(seq, "item_lines", None)
    if lines is not None and 0 <= index < len(lines):
        return int(lines[index])
    return line_of(seq)


def load_marked(text: str) -> tuple[Any, list[YamlProblem]]:
    """Parse one YAML document into marked containers.

    Returns the document (None when empty or unreadable) and the problems found;
    a syntax error stops parsing, duplicate keys do not.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PACK_BYTES:
        return None, [YamlProblem(1, f"file larger than {MAX_PACK_BYTES} bytes")]
    try:
        loader = yaml.CSafeLoader(text) if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:  # a control character PyYAML refuses
        line = text[: e.position].count("\n") + 1
        return None, [YamlProblem(line, f"YAML error: character {e.character!r} is not allowed")]
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = e.problem or "syntax error"
        if e.context and e.context_mark is not None:
            what += f" ({e.context} started on line {e.context_mark.line + 1})"
        return None, [YamlProblem(line, f"YAML syntax error: {what}")]
    except yaml.YAMLError as e:
        return None, [YamlProblem(0, f"YAML error: {e}")]
    except RecursionError:
        return None, [YamlProblem(1, "YAML nested too deeply")]
    finally:
        loader.dispose()
    if node is None:
        return None, []
    problems: list[YamlProblem] = []
    budget = [MAX_NODES]
    try:
        doc = _convert(loader, node, problems, budget)
    except _TooBig:
        return None, [YamlProblem(node.start_mark.line + 1, "document expands to too many nodes")]
    except RecursionError:
        return None, [YamlProblem(node.start_mark.line + 1, "YAML nested too deeply")]
    return doc, problems


class _TooBig(Exception):
    pass


def _convert(
    loader: yaml.SafeLoader | yaml.CSafeLoader,
    node: yaml.Node,
    problems: list[YamlProblem],
    budget: list[int],
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = MarkedDict()
        out.line = line
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = _convert(loader, key_node, problems, budget)
            if isinstance(key, (dict, list)):
                problems.append(YamlProblem(key_node.start_mark.line + 1, "a key must be a scalar"))
                continue
            if key in out:
                problems.append(
                    YamlProblem(
                        key_node.start_mark.line + 1,
                        f"duplicate key {key!r} (first on line {out.key_lines[key]})",
                    )
                )
                continue
            out.key_lines[key] = key_node.start_mark.line + 1
            out[key] = _convert(loader, value_node, problems, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = MarkedList()
        seq.line = line
        seq.item_lines = []
        for child in node.value:
            seq.item_lines.append(child.start_mark.line + 1)
            seq.append(_convert(loader, child, problems, budget))
        return seq
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        problems.append(YamlProblem(line, f"bad scalar: {getattr(e, 'problem', e)}"))
        return None
