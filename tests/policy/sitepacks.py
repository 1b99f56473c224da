"""The site pack the holder and daemon tests load, reload and break: `site-lab`, one rule."""

from __future__ import annotations


def lab_pack(version: str, rule: str, kind: str, what: str, overrides: str = "") -> str:
    """Pack `site-lab` at `version` with one rule, `rule`: a file of `kind` (called `what`
    in its description and tests) onto removable media is recorded at low severity; its
    own tests pin that it decides there and not on local disk. `overrides` (YAML, the
    `overrides:` key and its list) ends the pack: tests cut the pack there to drop them.
    The rule's `action` stands on line 16: a test expects a reload error there."""
    return f"""\
pack:
  id: site-lab
  name: Lab rules
  regime: SITE
  version: "{version}"
  required_engine_version: "1.0"
  sources: [{{title: internal procedure EC-07}}]
rules:
  - id: {rule}
    description: Any {what} onto removable media
    condition:
      all:
        - {{field: channel, eq: removable}}
        - {{field: kinds, contains: {kind}}}
    severity: low
    action: record
    effective_from: 2020-01-01
    tests:
      - name: {what} on usb
        facts: {{event: file, channel: removable, kinds: [{kind}]}}
        expect: decision
      - name: {what} on disk
        facts: {{event: file, channel: local, kinds: [{kind}]}}
        expect: none
{overrides}"""
