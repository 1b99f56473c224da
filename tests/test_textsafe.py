"""Outside names on every human-facing output: logs, terminal tables, `incidents show`, CEF.

A table of hostile names (newlines that forge a log record, ESC sequences that clear
the screen, bidi overrides, C1 CSI, non-UTF-8 bytes) goes through each output; none may
reach it raw, and the machine formats must still give the name back exactly.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import logs
from agent.incidents.export.cef import escape_header, escape_value, unescape_value
from agent.incidents.log import IncidentLog
from agent.incidents.render import render_incident
from agent.store.rows import storable_text
from agent.textsafe import has_unsafe, shown
from tests.conftest import cli, write_config
from tests.incidents.helpers import finding, new_store

HOSTILE_NAMES = [
    "report.pdf\n2026-12-06 10:00:00,000 CRITICAL agent.daemon: all sensors stopped",
    "clear\x1b[2J\x1b[H.txt",
    "hide\x1b[8mSECRET\x1b[0m.bin",
    "csi\x9b31m.bin",
    "cr\roverwrite.txt",
    "rtl\u202egpj.exe",
    "bell\x07\x00nul",
    "line\u2028sep",
    os.fsdecode(b"latin1-\xe9t\xe9.csv"),
]

# plain ids: pytest-xdist cannot pass a test id holding a lone surrogate between processes
NAME_IDS = [f"hostile-name-{i}" for i in range(len(HOSTILE_NAMES))]

# what a terminal would act on: any C0 but tab, DEL, C1, bidi controls, lone surrogates
RAW = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=NAME_IDS)
def test_shown_is_one_inert_line(name: str) -> None:
    out = shown(name)
    assert not RAW.search(out)
    assert "\n" not in out and "\r" not in out
    assert not has_unsafe(out)


@given(st.text())
def test_shown_never_leaves_a_control_character(text: str) -> None:
    assert not RAW.search(shown(text))


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=NAME_IDS)
def test_text_log_cannot_be_forged(name: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter(journald=False))
    log = logging.getLogger("agent.test.textsafe")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("unsafe pickle in %s (global %s)", name, name)
        try:
            raise OSError(f"cannot read {name}")
        except OSError:
            log.exception("classify failed for %s", name)
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    records = [ln for ln in lines if not ln.startswith("  ")]
    assert len(records) == 2, lines  # one line per record; the traceback is indented
    assert not any(r.startswith("2026-12-06 10:00:00,000") for r in records)
    assert not RAW.search(stream.getvalue().replace("\n", ""))


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=NAME_IDS)
def test_cef_escapes_and_reverses(name: str) -> None:
    value = escape_value(name)
    assert not RAW.search(value.replace("\t", "")) or "\ud800" <= max(name) <= "\udfff"
    assert unescape_value(value) == name
    assert "\x1b" not in escape_header(name) and "\n" not in escape_header(name)


def test_incident_show_and_tables_print_no_raw_name(tmp_path: Path) -> None:
    text = render_incident(
        {"id": 1, "title": HOSTILE_NAMES[0], "evidence": {"files": [{"path": HOSTILE_NAMES[1]}]}}
    )
    assert not RAW.search(text.replace("\n", ""))
    assert text.count("\n") == render_incident({"id": 1, "evidence": {"files": [{}]}}).count("\n")

    url = f"sqlite:///{tmp_path / 'state' / 'agent.db'}"
    (tmp_path / "state").mkdir()
    engine = new_store(url)
    log = IncidentLog(engine, "host-a", "lab-ws-1")
    log.start()
    for i, name in enumerate(HOSTILE_NAMES):
        # as the correlator stores titles: surrogate escapes kept as text
        log.record(finding(i, key=f"k{i}", title=storable_text(f"{name} uploaded")))
    engine.dispose()
    cfg = write_config(
        tmp_path / "agent.yaml",
        {"agent": {"state_dir": str(tmp_path / "state")}, "database": {"url": url}},
    )
    listed = cli("incidents", "list", config=cfg).stdout
    assert listed.count("\n") == len(HOSTILE_NAMES)
    assert not RAW.search(listed.replace("\n", ""))
    shown_one = cli("incidents", "show", "1", config=cfg).stdout
    assert not RAW.search(shown_one.replace("\n", ""))


def test_scan_table_prints_each_hostile_file_on_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    made = 0
    for name in HOSTILE_NAMES:
        raw = os.fsencode(name.replace("/", "_"))
        if b"\x00" in raw:
            continue
        with open(os.path.join(os.fsencode(root), raw), "wb") as f:
            f.write(b"plain text\n")
        made += 1
    out = cli("scan", str(root)).stdout
    assert out.count("\n") == made
    assert not RAW.search(out.replace("\n", ""))
