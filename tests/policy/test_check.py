"""`egress-agent policy check` reports every mistake in a broken pack at its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli

BROKEN = """\
pack:
  id: site-broken
  name: A pack with one mistake of each kind
  regime: TEST
  version: "1"
  required_engine_version: "9.0"  # M-engine
  sources:
    - {title: test}
lists:
  channels_out: [removable, cloud_sync]
macros:
  to_usb: {field: channel, eq: removable}
  loop: {macro: loop}  # M-macro-loop
categories:
  - code: SITE-A
    name_en: A
    control: restricted
    keywords_en: [alpha]
    min_count: three  # M-type
  - code: SITE-B
    name_en: B
    control: restricted
    patterns: ['[unclosed']  # M-regex
  - code: SITE-C
    name_en: C
    control: restricted
    patterns: ['\\d{18}']
    validator: crc_of_doom  # M-validator
  - code: SITE-D
    name_en: D
    control: restricted
    keywords_en: [delta]
  - code: SITE-D  # M-dupcat
    name_en: D again
    control: restricted
    keywords_en: [delta]
rules:
  - id: r-unknown-field
    description: x
    condition: {macro: to_usb}
    severity: high
    effective_from: 2020-01-01
    action: alert
    colour: red  # M-unknown-field
  - id: r-missing  # M-missing
    condition: {macro: to_usb}
    severity: high
    effective_from: 2020-01-01
    action: alert
  - id: r-unknown-category
    description: x
    condition:
      all:
        - macro: to_usb
        - {field: categories, contains: SITE-ZZZ}  # M-unknown-category
    severity: high
    effective_from: 2020-01-01
    action: alert
  - id: r-dup
    description: first
    condition: {macro: to_usb}
    severity: high
    effective_from: 2020-01-01
    action: alert
  - id: r-dup  # M-dup-rule
    description: second
    condition: {macro: to_usb}
    severity: high
    effective_from: 2020-01-01
    action: alert
  - id: r-severity
    description: x
    condition: {macro: to_usb}
    severity: urgent  # M-severity
    effective_from: 2020-01-01
    action: alert
  - id: r-action
    description: x
    condition: {macro: to_usb}
    severity: high
    effective_from: 2020-01-01
    action: block  # M-action
  - id: r-field
    description: x
    condition:
      all:
        - {field: colour, eq: red}  # M-field
    severity: low
    effective_from: 2020-01-01
    action: record
  - id: r-operator
    description: x
    condition:
      all:
        - field: channel
          like: removable  # M-operator
    severity: low
    effective_from: 2020-01-01
    action: record
  - id: r-macro
    description: x
    condition: {macro: to_mars}  # M-macro
    severity: low
    effective_from: 2020-01-01
    action: record
  - id: r-list
    description: x
    condition: {field: channel, in: $channels_to_mars}  # M-list
    severity: low
    effective_from: 2020-01-01
    action: record
  - id: r-cidr
    description: x
    condition: {field: channel, in: $channels_out}
    severity: low
    effective_from: 2020-01-01
    action: record
    exceptions:
      - name: lab
        destinations: [10.0.0.0/33]  # M-cidr
  - id: r-regex-op
    description: x
    condition: {field: path, regex: '(unclosed'}  # M-regex-op
    severity: low
    effective_from: 2020-01-01
    action: record
  - id: r-number
    description: x
    condition: {field: size, gt: big}  # M-number
    severity: low
    effective_from: 2020-01-01
    action: record
  - id: r-selftest
    description: x
    condition: {macro: to_usb}
    severity: low
    effective_from: 2020-01-01
    action: record
    tests:
      - name: a local copy should not fire, but the test expects it to
        facts: {event: file, channel: local}
        expect: decision
      - name: a fact that does not exist
        facts:
          channel: removable
          colour: red  # M-facts
        expect: decision
  - id: r-dupkey
    description: x
    description: y  # M-dupkey
    condition: {macro: to_usb}
    severity: low
    effective_from: 2020-01-01
    action: record
  - id: r-empty-exception
    description: x
    condition: {macro: to_usb}
    severity: low
    effective_from: 2020-01-01
    action: record
    exceptions:
      - name: everything  # M-empty-exception
  - id: r-self-macro
    description: x
    condition: {macro: loop}
    severity: low
    effective_from: 2020-01-01
    action: record
overrides:
  - rule: no-such-rule  # M-override
    action: record
"""

# marker -> words the message must contain
EXPECTED = {
    "M-engine": "newer than this engine",
    "M-type": "min_count",
    "M-regex": "bad regular expression",
    "M-validator": "unknown validator 'crc_of_doom'",
    "M-dupcat": "duplicate category code 'SITE-D'",
    "M-unknown-field": "unknown field 'colour'",
    "M-missing": "missing required field 'description'",
    "M-unknown-category": "unknown category 'SITE-ZZZ'",
    "M-dup-rule": "duplicate rule id 'r-dup'",
    "M-severity": "severity",
    "M-action": "action",
    "M-field": "unknown field 'colour'",
    "M-operator": "unknown operator 'like'",
    "M-macro": "unknown macro 'to_mars'",
    "M-list": "unknown list or parameter '$channels_to_mars'",
    "M-cidr": "bad CIDR '10.0.0.0/33'",
    "M-regex-op": "bad regular expression",
    "M-number": "needs a number",
    "M-dupkey": "duplicate key 'description'",
    "M-facts": "test facts: unknown field 'colour'",
    "M-empty-exception": "exception 'everything' matches nothing",
    "M-macro-loop": "macro 'loop' refers to itself",
    "M-override": "override of unknown rule 'no-such-rule'",
}

SYNTAX = """\
pack:
  id: site-syntax
  name: [unclosed
rules: []
"""


def _marker_lines(text: str) -> dict[str, int]:
    out = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if "# M-" in line:
            out[line.split("# ")[-1].strip()] = n
    return out


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    d = tmp_path / "site"
    d.mkdir()
    (d / "broken.yaml").write_text(BROKEN)
    (d / "syntax.yaml").write_text(SYNTAX)
    return d


def test_every_mistake_reported_at_its_line(broken: Path) -> None:
    res = cli("policy", "check", "--alone", str(broken), check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = _marker_lines(BROKEN)
    assert set(lines) == set(EXPECTED)
    out = res.stdout.splitlines()
    file = str(broken / "broken.yaml")
    for marker, words in EXPECTED.items():
        want = f"{file}:{lines[marker]}: "
        hits = [o for o in out if o.startswith(want)]
        assert any(words in h for h in hits), f"{marker}: no '{words}' at {want}\n{res.stdout}"
    # the YAML syntax error in the second file is reported too, with its line
    syntax = [o for o in out if o.startswith(str(broken / "syntax.yaml"))]
    assert len(syntax) == 1, res.stdout
    assert f"{broken / 'syntax.yaml'}:4: YAML syntax error" in syntax[0]
    assert "flow sequence started on line 3" in syntax[0]
    assert "problem(s) in 2 file(s)" in res.stderr


def test_rule_self_test_failures_are_reported(tmp_path: Path) -> None:
    # BROKEN's header (without its mistakes) and its r-selftest rule with its first test
    # case only, whose only fault is that it fails (the second case is the M-facts mistake)
    text = BROKEN.split("categories:")[0].replace('"9.0"', '"1.0"')
    text = text.replace("  loop: {macro: loop}  # M-macro-loop\n", "")
    end = BROKEN.index("      - name: a fact that does not exist\n")
    selftest = BROKEN[BROKEN.index("  - id: r-selftest\n") : end]
    text += "rules:\n" + selftest
    path = tmp_path / "p.yaml"
    path.write_text(text)
    res = cli("policy", "check", "--alone", "--json", str(path), check=False)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    (issue,) = doc["issues"]
    case = "      - name: a local copy should not fire, but the test expects it to"
    assert issue["line"] == text.splitlines().index(case) + 1
    assert "expected a decision, got none" in issue["message"]


def test_shipped_packs_check_clean() -> None:
    res = cli("policy", "check")
    assert res.returncode == 0
    assert res.stdout.startswith("ok: 5 pack(s)")  # cn x2, eu, rd-assets, us-ear


def test_site_pack_beside_shipped_packs_can_use_their_categories(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        """\
pack:
  id: site-lab
  name: Lab rules
  regime: SITE
  version: "1"
  required_engine_version: "1.0"
  sources: [{title: internal export-control procedure EC-07}]
rules:
  - id: site-re-any-share
    description: Rare-earth process documents on any share, even internal
    condition:
      all:
        - {field: channel, eq: network_share}
        - {field: categories, contains: CN-CAT-RE-REFINING}
    severity: medium
    effective_from: 2020-01-01
    action: record
    tests:
      - name: on a share
        facts: {event: file, channel: network_share, matches: {CN-CAT-RE-REFINING: 2}}
        expect: decision
"""
    )
    assert cli("policy", "check", str(path)).returncode == 0
    alone = cli("policy", "check", "--alone", str(path), check=False)
    assert alone.returncode == 1 and "unknown category 'CN-CAT-RE-REFINING'" in alone.stdout
