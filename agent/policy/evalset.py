"""The labelled case set behind `policy eval`: its manifest, read with file:line errors.

A case set is a directory with a `cases.yaml` manifest. Each case names one file —
`file:` relative to the directory, or `fetch:` relative to a cache directory that a
fetch step fills with public files and files written by real libraries — and, per
channel, what a compliance officer should see: `none`, `record` or `alert` (optionally
`alert>=SEVERITY`). Sites keep their own samples in the same shape to test their packs,
so every mistake in a manifest is one line naming the file, the line and the fix.
This module only reads and checks the manifest; `evaluate` classifies and decides.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import UserFacingError
from agent.events import Severity
from agent.policy._yaml import MarkedDict, key_line, line_of, load_marked

MANIFEST_NAME = "cases.yaml"
# where a file can go: the file-event channels, plus an upload to a foreign destination
CHANNELS = ("local", "removable", "network_share", "cloud_sync", "abroad")
OUTCOMES = ("none", "record", "alert")
MAX_CASES = 10_000
_CASE_KEYS = {
    "id",
    "file",
    "fetch",
    "expect",
    "kind",
    "composed",
    "source",
    "note",
}
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_EXPECT = re.compile(r"^(none|record|alert)(?:\s*>=\s*(\w+))?$")


class ManifestError(UserFacingError):
    """One problem in a manifest: `file:line: message`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file = file
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Expectation:
    """What should happen on one channel; `min_severity` only qualifies an alert."""

    outcome: str  # "none" | "record" | "alert"
    min_severity: Severity | None = None

    def __str__(self) -> str:
        return f"alert>={self.min_severity}" if self.min_severity else self.outcome


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    path: Path  # resolved: under the case directory or the fetch cache
    expect: Mapping[str, Expectation]
    line: int = 0
    ref: str = ""  # the file or fetch reference as written
    kind: str = ""  # free text: what the case is (weights, news, process sheet…)
    composed: bool = False  # text written for the set rather than taken from a public file
    source: str | None = None  # URL of the public original (paraphrased texts, packages)


@dataclass(frozen=True, slots=True)
class CaseSet:
    manifest: Path
    cases: tuple[Case, ...]
    day: dt.date | None = None  # the day the events happen unless --on says otherwise
    fetch_sources: Mapping[str, Any] = field(default_factory=dict)


def parse_expectation(text: Any) -> Expectation:
    """`none`, `record`, `alert` or `alert>=high`; ValueError with the reason otherwise."""
    m = _EXPECT.match(str(text).strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"expected outcome {text!r} is not one of none, record, alert[>=SEVERITY]")
    outcome, sev = m.group(1), m.group(2)
    if sev is None:
        return Expectation(outcome)
    if outcome != "alert":
        raise ValueError(f"a minimum severity only qualifies an alert, not {outcome!r}")
    try:
        return Expectation(outcome, Severity(sev))
    except ValueError:
        names = ", ".join(s.value for s in Severity)
        raise ValueError(f"unknown severity {sev!r} (one of {names})") from None


def load_case_set(directory: Path, files: Path | None = None) -> CaseSet:
    """Read DIR/cases.yaml; `files` is the cache that `fetch:` references resolve in.

    Raises ManifestError for the first problem. A `fetch:` case whose file is not in
    the cache is an error naming the cache, so a missing fetch step is obvious.
    """
    manifest = directory / MANIFEST_NAME
    name = str(manifest)
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(name, 0, f"no {MANIFEST_NAME} in {directory}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(name, 0, f"cannot read: {e}") from None
    doc, problems = load_marked(text)
    if problems:
        raise ManifestError(name, problems[0].line, problems[0].message)
    if not isinstance(doc, MarkedDict):
        raise ManifestError(name, line_of(doc, 1), "the manifest must be a mapping with `cases:`")
    # `x-…` keys are the manifest's own: YAML anchors for shared expectations, notes
    unknown = {k for k in doc if not str(k).startswith("x-")} - {
        "version",
        "day",
        "cases",
        "fetch_sources",
        "description",
    }
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise ManifestError(name, key_line(doc, key), f"unknown top-level key {key!r}")
    day = doc.get("day")
    if day is not None and not isinstance(day, dt.date):
        raise ManifestError(name, key_line(doc, "day"), f"day {day!r} is not a date YYYY-MM-DD")
    raw_cases = doc.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ManifestError(name, key_line(doc, "cases"), "`cases:` must be a non-empty list")
    if len(raw_cases) > MAX_CASES:
        raise ManifestError(name, key_line(doc, "cases"), f"more than {MAX_CASES} cases")
    sources = doc.get("fetch_sources") or {}
    if not isinstance(sources, dict):
        raise ManifestError(name, key_line(doc, "fetch_sources"), "fetch_sources must be a mapping")
    cases: list[Case] = []
    seen: dict[str, int] = {}
    item_lines = getattr(raw_cases, "item_lines", [])
    for i, raw in enumerate(raw_cases):
        line = item_lines[i] if i < len(item_lines) else line_of(raw_cases)
        case = _case(raw, line, name, directory, files)
        if case.id in seen:
            raise ManifestError(
                name, line, f"duplicate case id {case.id!r} (first on {seen[case.id]})"
            )
        seen[case.id] = line
        cases.append(case)
    return CaseSet(manifest, tuple(cases), day, dict(sources))


def _case(raw: Any, line: int, name: str, directory: Path, files: Path | None) -> Case:
    if not isinstance(raw, MarkedDict):
        raise ManifestError(name, line, "a case must be a mapping with id, file or fetch, expect")
    line = line_of(raw, line)
    unknown = set(raw) - _CASE_KEYS
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise ManifestError(name, key_line(raw, key), f"unknown case key {key!r}")
    cid = raw.get("id")
    if not isinstance(cid, str) or not _CASE_ID.match(cid):
        raise ManifestError(
            name, key_line(raw, "id"), f"case id {cid!r} must be letters, digits, . _ - (≤128)"
        )
    has_file, has_fetch = "file" in raw, "fetch" in raw
    if has_file == has_fetch:
        raise ManifestError(name, line, f"case {cid!r}: give exactly one of `file:` or `fetch:`")
    ref_key = "file" if has_file else "fetch"
    ref = raw[ref_key]
    ref_line = key_line(raw, ref_key)
    if not isinstance(ref, str) or not ref or ref.startswith("/") or ".." in Path(ref).parts:
        raise ManifestError(
            name, ref_line, f"case {cid!r}: {ref_key} {ref!r} must be a relative path inside"
        )
    if has_file:
        path = directory / ref
    else:
        if files is None:
            raise ManifestError(
                name, ref_line, f"case {cid!r} fetches {ref!r}: give the cache with --files DIR"
            )
        path = files / ref
    if not path.exists():
        where = "the case directory" if has_file else f"the fetch cache {files}"
        raise ManifestError(name, ref_line, f"case {cid!r}: {ref!r} is not in {where}")
    expect = _expect(raw.get("expect"), key_line(raw, "expect"), name, cid)
    composed = raw.get("composed", False)
    if not isinstance(composed, bool):
        raise ManifestError(name, key_line(raw, "composed"), "composed must be true or false")
    source = raw.get("source")
    return Case(
        id=cid,
        path=path,
        expect=expect,
        line=line,
        ref=f"{ref_key}:{ref}",
        kind=str(raw.get("kind") or ""),
        composed=composed,
        source=str(source) if source is not None else None,
    )


def _expect(raw: Any, line: int, name: str, cid: str) -> dict[str, Expectation]:
    """`expect:` maps channels to outcomes; `default:` fills the channels not named."""
    if not isinstance(raw, dict) or not raw:
        raise ManifestError(
            name,
            line,
            f"case {cid!r}: expect must map channels ({', '.join(CHANNELS)}) to outcomes",
        )
    out: dict[str, Expectation] = {}
    for key, value in raw.items():
        kline = key_line(raw, key)
        if key != "default" and key not in CHANNELS:
            raise ManifestError(
                name, kline, f"case {cid!r}: unknown channel {key!r} (one of {', '.join(CHANNELS)})"
            )
        try:
            exp = parse_expectation(value)
        except ValueError as e:
            raise ManifestError(name, kline, f"case {cid!r}: {e}") from None
        if key == "default":
            continue
        out[str(key)] = exp
    if "default" in raw:
        fill = parse_expectation(raw["default"])
        for ch in CHANNELS:
            out.setdefault(ch, fill)
    return {ch: out[ch] for ch in CHANNELS if ch in out}
