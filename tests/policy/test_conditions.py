"""Condition compilation and evaluation (pure), and the marked YAML reader under hostile input."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy._yaml import MarkedDict, load_marked
from agent.policy.conditions import CompileContext, Condition, compile_condition

LISTS = {"out": ["removable", "cloud_sync"], "limit": 10}


def _compile(raw: Any) -> tuple[Condition | None, list[tuple[int, str]]]:
    problems: list[tuple[int, str]] = []
    ctx = CompileContext(
        report=lambda line, msg: problems.append((line, msg)),
        resolve=LISTS.__getitem__,
        macros={"usb": {"field": "channel", "eq": "removable"}, "loop": {"macro": "loop"}},
        known_category={"CAT-A", "CAT-B"}.__contains__,
    )
    return compile_condition(raw, ctx), problems


def test_structured_forms() -> None:
    cond, problems = _compile(
        {
            "all": [
                {"macro": "usb"},
                {
                    "any": [
                        {"field": "categories", "contains": "CAT-A"},
                        {"field": "size", "gt": 100},
                    ]
                },
                {"not": {"field": "user", "in": ["svc-backup"]}},
                {"field": "matches.CAT-B", "ge": "$limit"},
            ]
        }
    )
    assert not problems and cond is not None
    base = {"channel": "removable", "categories": frozenset({"CAT-A"}), "matches.CAT-B": 12}
    assert cond(base)
    assert not cond({**base, "user": "svc-backup"})
    assert not cond({**base, "matches.CAT-B": 9})
    assert not cond({**base, "channel": "local"})
    assert cond({**base, "categories": frozenset(), "size": 101})


def test_missing_facts_are_false_and_exists_tests_presence() -> None:
    cond, _ = _compile({"field": "country", "ne": "CN"})
    assert cond is not None and not cond({})
    cond, _ = _compile({"not": {"field": "country", "eq": "CN"}})
    assert cond is not None and cond({})
    cond, _ = _compile({"field": "country", "exists": False})
    assert cond is not None and cond({}) and not cond({"country": "US"})


def test_cidr_glob_regex() -> None:
    cond, problems = _compile(
        {
            "all": [
                {"field": "dst_ip", "cidr": ["203.0.113.0/24", "2001:db8::/32"]},
                {"field": "name", "glob": ["*.example.com"]},
                {"field": "path", "regex": r"\.safetensors$"},
            ]
        }
    )
    assert not problems and cond is not None
    assert cond({"dst_ip": "203.0.113.9", "name": "up.example.com", "path": "/m/a.safetensors"})
    assert not cond(
        {"dst_ip": "198.51.100.1", "name": "up.example.com", "path": "/m/a.safetensors"}
    )
    assert not cond({"dst_ip": "not-an-ip", "name": "up.example.com", "path": "/m/a.safetensors"})


def test_list_references_splice() -> None:
    cond, problems = _compile({"field": "channel", "in": ["$out", "network_share"]})
    assert not problems and cond is not None
    assert cond({"channel": "cloud_sync"}) and cond({"channel": "network_share"})


def test_compile_errors() -> None:
    bad = [
        ({"field": "kinds", "gt": 3}, "does not apply"),
        ({"field": "size", "in": []}, "non-empty list"),
        ({"field": "size", "eq": 1, "ne": 2}, "exactly one operator"),
        ({"all": []}, "non-empty list"),
        ({"macro": "loop"}, "refers to itself"),
        ({"field": "matches.CAT-Z", "ge": 1}, "unknown category"),
        ({"field": "categories", "contains_any": ["CAT-A", "CAT-Q"]}, "unknown category 'CAT-Q'"),
        ({"field": "exists_not", "eq": 1}, "unknown field"),
        (["not", "a", "mapping"], "must be a mapping"),
        ({"field": "dst_ip", "cidr": ["300.1.1.1/8"]}, "bad CIDR"),
    ]
    for raw, words in bad:
        cond, problems = _compile(raw)
        assert cond is None, raw
        assert any(words in msg for _, msg in problems), (raw, problems)


facts_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.lists(st.text(max_size=5), max_size=3),
    st.frozensets(st.sampled_from(["CAT-A", "CAT-B", "document"]), max_size=3),
)
FIELDS = ["channel", "size", "categories", "kinds", "user", "dst_ip", "name", "matches.CAT-A"]


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(FIELDS), facts_values, max_size=8))
def test_evaluation_never_raises_and_not_inverts(facts: dict[str, Any]) -> None:
    raw = {
        "any": [
            {"field": "channel", "in": ["removable"]},
            {"field": "size", "ge": 5},
            {"field": "categories", "contains_any": ["CAT-A"]},
            {"field": "kinds", "contains_all": ["document"]},
            {"field": "dst_ip", "cidr": ["10.0.0.0/8"]},
            {"field": "name", "glob": ["*.cn"]},
            {"field": "user", "regex": "^svc-"},
            {"field": "matches.CAT-A", "lt": 3},
        ]
    }
    cond, _ = _compile(raw)
    neg, _ = _compile({"not": raw})
    assert cond is not None and neg is not None
    assert cond(facts) is not neg(facts)


def test_marked_yaml_lines() -> None:
    doc, problems = load_marked("a: 1\nb:\n  - x\n  - {c: 2}\n")
    assert not problems and isinstance(doc, MarkedDict)
    assert doc.key_lines == {"a": 1, "b": 2}
    assert doc["b"].item_lines == [3, 4]
    assert doc["b"][1].key_lines == {"c": 4}


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    doc, problems = load_marked("\n".join(lines) + "\n")
    assert doc is None and "too many nodes" in problems[0].message


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_any_text_gives_a_document_or_problems(text: str) -> None:
    try:
        doc, problems = load_marked(text)
    except RecursionError:  # pragma: no cover - must not happen
        raise
    for p in problems:
        assert p.line >= 0 and p.message
    if not problems and doc is not None:
        # the same parser the loader uses (libyaml where present; it accepts a few
        # inputs, such as a trailing tab, that pure-Python PyYAML refuses)
        reference = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        assert doc == yaml.load(text, Loader=reference)
