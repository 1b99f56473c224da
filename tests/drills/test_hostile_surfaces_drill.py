"""Drill: hostile packs and hostile names against one running agent (issue 17, classes 2-3).

The outside review stalled a running agent through SIGHUP with a 30-line pack whose
macros expand exponentially (100 s to load, 1 GB, then 0.7 s per event) and hung
`policy check` with `^(a+)+$`; file names with a newline forged a complete
`CRITICAL agent.daemon` line in the text log and an ESC sequence cleared the screen.
Here the same inputs, generated, reach a real `egress-agent run` over a watched root:

- a site pack that would expand past the complexity bound, and one with a backtracking
  regex, are refused on reload with their file and line while the agent keeps its last
  good policy and goes on classifying and deciding within its normal latency;
- files whose names carry newlines, ESC/CSI sequences and bidi overrides are stored with
  their names intact, and no log record the agent writes is forged by them;
- SIGTERM still stops the agent cleanly.
(Class 1 is tests/drills/test_deadline_drill.py; class 5 tests/test_user_errors.py; class
7 tests/test_liveness.py.) Run: `pytest -m drill tests/drills/test_hostile_surfaces_drill.py`.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProcess, wait_until
from tests.drills.test_file_drills import files_config, query

pytestmark = pytest.mark.drill

PEM = (
    b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
    + b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n" * 4
    + b"-----END OPENSSH PRIVATE KEY-----\n"
)


def exponential_pack(levels: int = 30) -> str:
    """`any: [all: [m, a], all: [m, b]]` per level: 2^30 nodes if expanded."""
    lines = [
        "pack: {id: hostile-site, name: h, regime: SITE, version: '1',",
        "  required_engine_version: '1.0', sources: [{title: drill}]}",
        "macros:",
    ]
    for i in range(levels):
        lines.append(
            f"  m{i}: {{any: [{{all: [{{macro: m{i + 1}}}, {{field: size, gt: {i}}}]}},"
            f" {{all: [{{macro: m{i + 1}}}, {{field: size, lt: {i}}}]}}]}}"
        )
    lines += [
        f"  m{levels}: {{field: size, gt: 1}}",
        "rules:",
        "  - {id: site-exp, description: d, severity: low, action: record,",
        "     effective_from: 2020-01-01, condition: {macro: m0}}",
    ]
    return "\n".join(lines) + "\n"


GOOD_RULE = """
  - id: site-any-file
    description: every file written under the drill root
    severity: low
    action: record
    effective_from: 2020-01-01
    condition: {all: [{field: event, eq: file}, {field: action, in: [created, written]}]}
"""
HEAD = """pack: {id: hostile-site, name: h, regime: SITE, version: '1',
  required_engine_version: '1.0', sources: [{title: drill}]}
rules:"""
GOOD_PACK = HEAD + GOOD_RULE
# `(a+)+$` backtracks for ever in Python's re on a run of a's that ends badly; on RE2
# it is linear, so this pack loads and the path below is judged at once
REDOS_PACK = (
    HEAD
    + GOOD_RULE
    + """
  - id: site-redos
    description: d
    severity: low
    action: record
    effective_from: 2020-01-01
    condition: {field: path, regex: '(a+)+$'}
"""
)
LOOKBEHIND_PACK = (
    HEAD
    + GOOD_RULE
    + """
  - id: site-lookbehind
    description: d
    severity: low
    action: record
    effective_from: 2020-01-01
    condition: {field: path, regex: '(?<=secret)/x'}
"""
)
REDOS_NAME = "x" + "a" * 200 + "!"

FORGED = "2026-12-06 10:00:00,000 CRITICAL agent.daemon: all sensors stopped"


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def planted_pickle() -> bytes:
    """A pickle whose global's module name carries a forged log record and a clear-screen."""
    module = f"os\n{FORGED}\x1b[2J"
    return b"\x80\x04" + _unicode(module) + _unicode("system") + b"\x93."


HOSTILE_NAMES = [
    "a.txt\n2026-12-06 10:00:00,000 CRITICAL agent.daemon: all sensors stopped",
    "clear\x1b[2J\x1b[H.txt",
    "csi\x9b31m.txt",
    "rtl\u202egpj.exe",
    "cr\rover.txt",
]


def _stored(cfg: dict[str, Any], name_like: str) -> list[tuple[Any, ...]]:
    return query(cfg, f"SELECT path, kinds FROM file_events WHERE path LIKE '%{name_like}%'")


def _latency(cfg: dict[str, Any], root: Path, name: str, content: bytes) -> float:
    started = time.monotonic()
    (root / name).write_bytes(content)
    wait_until(lambda: _stored(cfg, name), f"{name} stored", 60)
    return time.monotonic() - started


def test_hostile_packs_and_names_do_not_stall_or_fool_a_running_agent(
    agent_config: dict[str, Any], run_agent: Any, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    site = tmp_path / "site"
    site.mkdir()
    pack = site / "site.yaml"
    pack.write_text(GOOD_PACK)
    cfg = files_config(agent_config, root)
    cfg["policies"] = {"paths": [str(site)], "watch_interval": 0}
    agent: AgentProcess = run_agent(cfg)
    agent.wait_metrics()
    normal = _latency(cfg, root, "before.pem", PEM)

    # class 2: hostile packs on SIGHUP never stall the agent; a refused one names its line
    # and the last good policy stays in force
    cases = [
        (exponential_pack(), "expands to", "after-exp.pem"),
        (LOOKBEHIND_PACK, "lookahead/lookbehind", "after-look.pem"),
        (REDOS_PACK, None, REDOS_NAME),
    ]
    for text, refusal, probe in cases:
        pack.write_text(text)
        reloads = agent.policy_reloads("success")
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGHUP)
        if refusal is not None:
            wait_until(lambda n=refusal: n in agent.stderr(), f"reload refusal ({refusal})", 30)
            assert re.search(rf"{re.escape(str(pack))}:\d+", agent.stderr())
        else:
            wait_until(
                lambda r=reloads: agent.policy_reloads("success") > r,
                "the linear-time pack loaded",
                30,
            )
        assert time.monotonic() - started < 15, "the reload took too long"
        assert _latency(cfg, root, probe, PEM) < normal + 10
        decided = query(
            cfg,
            "SELECT d.rule_id FROM decisions d JOIN file_events f ON d.subject_uid = f.uid"
            f" WHERE f.path LIKE '%{probe}'",
        )
        assert ("site-any-file",) in decided, decided  # a good policy still decides

    # class 3: hostile names are stored intact and forge no log record
    for i, name in enumerate(HOSTILE_NAMES):
        (root / name).write_bytes(b"plain text %d\n" % i)
    # the unsafe-pickle log line names the file and the pickle's globals: both hostile
    (root / f"evil\n{FORGED}\x1b[2J.pkl").write_bytes(planted_pickle())
    wait_until(
        lambda: (
            len(
                query(
                    cfg, "SELECT 1 FROM file_events WHERE path LIKE '%.txt%' OR path LIKE '%.exe'"
                )
            )
            >= len(HOSTILE_NAMES)
        ),
        "hostile names stored",
        60,
    )
    stored = {os.path.basename(r[0]) for r in query(cfg, "SELECT path FROM file_events")}
    for name in HOSTILE_NAMES:
        assert name in stored, name
    assert agent.stop(signal.SIGTERM, timeout=30) == 0
    log = agent.stderr_path.read_text(errors="replace")
    assert "\x1b" not in log and "\x9b" not in log and "\u202e" not in log
    assert "pickle would call" in log  # the hostile globals did reach the log, escaped
    forged = [ln for ln in log.splitlines() if ln.startswith("2026-12-06 10:00:00,000")]
    assert not forged, forged
