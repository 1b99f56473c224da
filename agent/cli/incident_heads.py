"""Where `incidents verify` says the store's chain must reach: the heads kept beside it.

A chain that verifies link by link can still have lost its tail, or been re-sealed
whole. So its last records are checked against heads kept elsewhere: the state
directory's signed anchor file, the seq and hash the user read from Prometheus or the
journal (--expect-seq/--expect-head), and on a fleet store the head record each host
keeps beside its chain. A key or anchor this user cannot read is a note ("not
checked"), not tampering. Kept apart from the command's options and its report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.cli._common import UserError


def local_public_key(state_dir: Path, notes: list[str]) -> Any:
    """This host's public key, or None with a note when this user cannot read it."""
    from agent.incidents.anchor import AnchorError, AnchorUnreadable, load_public

    try:
        return load_public(state_dir)
    except AnchorUnreadable as e:
        notes.append(f"this host's key is not readable by this user ({e}): pass --public-key")
        return None
    except AnchorError as e:
        raise UserError(str(e)) from None


def anchored_head(state_dir: Path, pinned: Any, notes: list[str]) -> Any:
    """The anchor file's head, None without one, or why it cannot be trusted (a str)."""
    from agent.incidents.anchor import AnchorError, AnchorUnreadable, read_anchor

    before = len(notes)
    key = pinned or local_public_key(state_dir, notes)
    if len(notes) > before:
        notes.append("the chain head anchor (its key is not readable by this user)")
        return None
    try:
        return read_anchor(state_dir, key)
    except AnchorUnreadable as e:
        notes.append(f"the chain head anchor is not readable by this user ({e})")
        return None
    except AnchorError as e:
        return str(e)


def check_anchors(
    report: Any,
    stored: dict[tuple[str, int], str],
    anchored: Any,
    local: str | None,
    host: str | None,
    expect_seq: int | None,
    expect_head: str | None,
) -> None:
    """The chain must still hold the anchor file's head and the one the user expects."""
    from agent.incidents.anchor import Head, check_head
    from agent.incidents.chain import Problem

    if isinstance(anchored, str):
        report.problems.append(Problem(host or local or "-", -1, anchored, report.records))
    elif anchored is not None and host in (None, anchored.host_id):
        check_head(report, stored, anchored)
    if expect_seq is not None:
        hosts = {h for h, _seq in stored}
        who = host or local or (next(iter(hosts)) if len(hosts) == 1 else None)
        if who is None:
            raise UserError("--expect-seq: name the host with --host")
        source = "expected by --expect-seq" + (" --expect-head" if expect_head else "")
        check_head(report, stored, Head(who, expect_seq, expect_head or "", source))


def check_central(
    report: Any, stored: dict[tuple[str, int], str], engine: Any, host: str | None, pinned: Any
) -> None:
    """Fleet store: each host's chain must reach the head record kept beside it."""
    from agent.incidents.anchor import check_head
    from agent.incidents.chain import Problem
    from agent.incidents.heads import central_heads

    if engine.dialect.name != "postgresql":
        return
    for head in central_heads(engine, host, pinned if host else None):
        if isinstance(head, str):
            report.problems.append(Problem(host or "-", -1, head, report.records))
        else:
            check_head(report, stored, head)


def local_host_id(state_dir: Path) -> str | None:
    try:
        return (state_dir / "host_id").read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
