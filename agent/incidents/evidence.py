"""Evidence documents: the plain, JSON-able picture of files, flows, processes and decisions.

Correlation copies what an analyst needs out of the frozen pipeline events into these
dicts, which become the incident's `evidence` (and so the hash-chain payload and every
export). Each document is a projection of its record (agent/store/schema_map.py says
which fields are left out), so a field added to `Flow` reaches the evidence and the
exports with no edit here. Text that came from outside goes through `storable_text`, so
odd file names (non-UTF-8 bytes, newlines) survive as readable escapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.events import Decision, FileEvent, Flow, ProcessInfo
from agent.store.schema_map import (
    DECISION_EVIDENCE,
    FILE_EVIDENCE,
    FLOW_EVIDENCE,
    PROCESS_EVIDENCE,
)
from agent.store.schema_map import size_of as size_of  # where correlation finds it


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def describe(e: FileEvent) -> str:
    kinds = ",".join(e.artefact.kinds) if e.artefact and e.artefact.kinds else "tagged file"
    name = e.current_path.rsplit("/", 1)[-1]
    for t in e.artefact.tags if e.artefact else ():
        if t.details.get("detector") == "git_bundle" and t.details.get("repository"):
            where = t.details.get("git_remote") or t.details["repository"]
            return f"{kinds} '{name}' (repository {where})"  # a bundle names its repository
    return f"{kinds} '{name}'"


def process_doc(p: ProcessInfo | None) -> dict[str, Any] | None:
    return None if p is None else PROCESS_EVIDENCE(p)


def processes(ps: Iterable[ProcessInfo | None]) -> list[dict[str, Any]]:
    out: dict[tuple[Any, Any], dict[str, Any]] = {}
    for p in ps:
        doc = process_doc(p)
        if doc is not None and doc["pid"] is not None:
            out.setdefault((doc["pid"], doc["exe"]), doc)
    return list(out.values())


def file_doc(e: FileEvent, role: str) -> dict[str, Any]:
    return {**FILE_EVIDENCE(e), "role": role}


def flow_doc(f: Flow) -> dict[str, Any]:
    return FLOW_EVIDENCE(f)


def decision_doc(subject_uid: str, d: Decision) -> dict[str, Any]:
    return {"subject_uid": subject_uid, **DECISION_EVIDENCE(d)}


def evidence_of(
    correlation: Mapping[str, Any],
    files: Sequence[Mapping[str, Any]] = (),
    flows: Sequence[Mapping[str, Any]] = (),
    lineage: Iterable[tuple[str, str]] = (),
    procs: Sequence[Mapping[str, Any]] = (),
    decisions: Sequence[Mapping[str, Any]] = (),
    roots: Iterable[str] = (),
    **about: Any,
) -> dict[str, Any]:
    """One finding's evidence: the lists every incident has, plus what its kind adds
    (`about`: `repository`, `tree`)."""
    return {
        "files": list(files),
        "flows": list(flows),
        "lineage": [{"parent": p, "child": c} for p, c in lineage],
        "processes": list(procs),
        "decisions": list(decisions),
        "correlation": dict(correlation),
        "roots": list(roots),
        **about,
    }
