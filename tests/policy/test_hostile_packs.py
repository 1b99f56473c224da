"""Hostile and mangled packs: always issues with lines, never an exception or a hang."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.policy import SHIPPED_DIR, load_policy

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


def test_macro_chain_deeper_than_the_interpreter(tmp_path: Path) -> None:
    n = 1500
    chain = "\n".join(f"  m{i}: {{macro: m{i + 1}}}" for i in range(n))
    text = f"""pack: {{id: deep, name: d, regime: X, version: "1", required_engine_version: "1.0",
  sources: [{{title: t}}]}}
macros:
{chain}
  m{n}: {{field: size, gt: 1}}
rules:
  - {{id: r, description: d, severity: low, action: record, condition: {{macro: m0}}}}
"""
    f = tmp_path / "deep.yaml"
    f.write_text(text)
    policy, issues = load_policy([], [f])
    assert policy is None
    assert issues[0].line == 4 and "nested too deeply" in issues[0].message
    assert not any("refers to itself" in i.message for i in issues)
