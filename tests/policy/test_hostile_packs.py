"""Hostile and mangled packs: always issues with lines, never an exception or a hang."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.policy import SHIPPED_DIR, Issue, Policy, load_policy

SHIPPED_TEXT = (SHIPPED_DIR / "cn-cross-border-data.yaml").read_text()
SHIPPED_LINES = SHIPPED_TEXT.splitlines()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "pack",
                    "rules",
                    "categories",
                    "condition",
                    "field",
                    "eq",
                    "all",
                    "id",
                    "code",
                    "macros",
                    "lists",
                    "tests",
                    "facts",
                    "exceptions",
                    "x",
                ]
            ),
            kids,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


def _check(tmp_path: Path, text: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    policy, issues = load_policy([], [f])
    assert (policy is None) == bool(issues)
    for i in issues:
        assert i.file == str(f) and i.line >= 0 and i.message


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values)
def test_random_documents(tmp_path: Path, doc: object) -> None:
    _check(tmp_path, yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mangled_shipped_pack(tmp_path: Path, data: st.DataObject) -> None:
    lines = list(SHIPPED_LINES)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["drop", "dup", "indent", "cut", "garbage"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = " " + lines[i]
        elif op == "cut":
            lines[i] = lines[i][: data.draw(st.integers(0, max(len(lines[i]) - 1, 0)))]
        else:
            lines[i] = data.draw(st.text(max_size=12))
    _check(tmp_path, "\n".join(lines))


def test_binary_and_huge_files(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"pack:\n  id: \xff\xfe\x00\x01\n")
    _, issues = load_policy([], [binary])
    assert issues and issues[0].line == 2 and "UTF-8" in issues[0].message
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# " + b"x" * (5 << 20))
    _, issues = load_policy([], [huge])
    assert issues and "larger than" in issues[0].message
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000)
    _, issues = load_policy([], [deep])
    assert issues


def _pack(macros: str, fires_on: str) -> str:
    """A pack of `macros` (from line 4) and one rule whose condition is the macro `fires_on`."""
    return f"""pack: {{id: hostile, name: h, regime: X, version: "1",
  required_engine_version: "1.0", sources: [{{title: t}}]}}
macros:
{macros}
rules:
  - {{id: r, description: d, severity: low, action: record, effective_from: 2020-01-01,
     condition: {{macro: {fires_on}}}}}
"""


def _chain(n: int, level: Callable[[int], str]) -> str:
    """Macros m0 to m{n-1}, `level(i)` each (referring to m{i+1}), and m{n} a plain condition."""
    return "".join(f"  m{i}: {level(i)}\n" for i in range(n)) + f"  m{n}: {{field: size, gt: 1}}"


def _load(tmp_path: Path, macros: str, fires_on: str) -> tuple[Policy | None, list[Issue], float]:
    """Load `_pack(macros, fires_on)`; also return the CPU seconds loading took."""
    f = tmp_path / "p.yaml"
    f.write_text(_pack(macros, fires_on))
    started = time.process_time()
    policy, issues = load_policy([], [f])
    return policy, issues, time.process_time() - started


def test_macro_chain_deeper_than_the_interpreter(tmp_path: Path) -> None:
    policy, issues, _ = _load(tmp_path, _chain(1500, lambda i: f"{{macro: m{i + 1}}}"), "m0")
    assert policy is None
    assert issues[0].line == 4 and "nested too deeply" in issues[0].message
    assert not any("refers to itself" in i.message for i in issues)


def test_macros_used_twice_at_every_level_load_fast_and_evaluate_fast(tmp_path: Path) -> None:
    """30 levels of `all: [m, m]` were 2^30 nodes: 100 s to load, 0.7 s per event."""
    twice = _chain(30, lambda i: f"{{all: [{{macro: m{i + 1}}}, {{macro: m{i + 1}}}]}}")
    policy, issues, took = _load(tmp_path, twice, "m0")
    assert took < 5.0
    assert not issues and policy is not None
    started = time.process_time()
    for _ in range(1000):
        assert policy.decide({"event": "file", "size": 5})
    assert time.process_time() - started < 1.0


def test_macros_that_branch_exponentially_are_refused_with_a_line(tmp_path: Path) -> None:
    """`any: [all: [m, a], all: [m, b]]` per level cannot be flattened: it is measured."""
    branch = _chain(
        40,
        lambda i: (
            f"{{any: [{{all: [{{macro: m{i + 1}}}, {{field: size, gt: {i}}}]}},"
            f" {{all: [{{macro: m{i + 1}}}, {{field: size, lt: {i}}}]}}]}}"
        ),
    )
    policy, issues, took = _load(tmp_path, branch, "m0")
    assert took < 5.0
    assert policy is None
    assert any("expands to" in i.message and "limit" in i.message for i in issues)
    assert all(i.line > 0 for i in issues)


def test_backtracking_regex_runs_in_linear_time_or_is_refused(tmp_path: Path) -> None:
    policy, issues, _ = _load(tmp_path, "  big: {field: path, regex: '^(a+)+$'}", "big")
    assert not issues and policy is not None
    started = time.process_time()
    assert not policy.decide({"event": "file", "path": "a" * 100_000 + "!"})
    assert time.process_time() - started < 1.0

    policy, issues, _ = _load(tmp_path, "  look: {field: path, regex: '(?<=secret)/x'}", "look")
    assert policy is None
    assert any("lookahead/lookbehind" in i.message for i in issues)
    assert issues[0].line == 4  # the macro with the pattern


def test_pack_regex_matches_names_with_non_utf8_bytes() -> None:
    """A file name with a byte that is not UTF-8 (a lone surrogate) reaches RE2 safely."""
    import os

    from agent.linear_regex import compile_pack_regex

    name = os.fsdecode(b"/data/r\xe9sum\xe9-secret.pdf")
    rx = compile_pack_regex(r"secret\.pdf$")
    assert rx.search(name) is not None
    assert [m.span() for m in rx.finditer(name)] == [(len(name) - 10, len(name))]
