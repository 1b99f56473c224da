"""Evidence documents: the plain, JSON-able picture of files, flows, processes and decisions.

Correlation copies what an analyst needs out of the frozen pipeline events into these
dicts, which become the incident's `evidence` (and so the hash-chain payload and every
export). Text that came from the file system goes through `storable_text`, so odd file
names (non-UTF-8 bytes, newlines) survive as readable escapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.events import Decision, FileEvent, Flow, ProcessInfo
from agent.store.rows import storable_text


def size_of(e: FileEvent) -> int:
    if e.size is not None:
        return e.size
    return e.artefact.size if e.artefact else 0


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
    if p is None:
        return None
    return {
        "pid": p.pid,
        "ppid": p.ppid,
        "exe": storable_text(p.exe),
        "cmdline": storable_text(p.cmdline),
        "uid": p.uid,
        "user": p.user,
    }


def processes(ps: Iterable[ProcessInfo | None]) -> list[dict[str, Any]]:
    out: dict[tuple[Any, Any], dict[str, Any]] = {}
    for p in ps:
        doc = process_doc(p)
        if doc is not None and doc["pid"] is not None:
            out.setdefault((doc["pid"], doc["exe"]), doc)
    return list(out.values())


def file_doc(e: FileEvent, role: str) -> dict[str, Any]:
    a = e.artefact
    return {
        "uid": e.uid,
        "role": role,
        "time": e.time.isoformat(),
        "action": str(e.action),
        "path": storable_text(e.path),
        "dest_path": storable_text(e.dest_path),
        "channel": str(e.channel),
        "size": size_of(e),
        "sha256": a.sha256 if a else None,
        "parents": list(a.parents) if a else [],
        "content_type": a.content_type if a else None,
        "kinds": list(a.kinds) if a else [],
        "tags": [{"kind": t.kind, "evidence": storable_text(t.evidence)} for t in a.tags]
        if a
        else [],
        "categories": [
            {
                "category": m.category,
                "count": m.count,
                "pack": m.pack,
                "distinct": m.distinct,
                "confidence": m.confidence,
                "basis": m.basis,
            }
            for m in a.matches
        ]
        if a
        else [],
        "process": process_doc(e.process),
    }


def flow_doc(f: Flow) -> dict[str, Any]:
    return {
        "uid": f.uid,
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "protocol": str(f.protocol),
        "src_ip": f.src_ip,
        "src_port": f.src_port,
        "dst_ip": f.dst_ip,
        "dst_port": f.dst_port,
        "bytes_out": f.bytes_out,
        "bytes_in": f.bytes_in,
        "byte_source": str(f.byte_source),
        "name": f.name,
        "sni": f.sni,
        "http_host": f.http_host,
        "dest_class": str(f.dest_class),
        "country": f.country,
        "dest_org": storable_text(f.dest_org),
        "service": storable_text(f.service),
        "service_category": f.service_category,
        "community_id": f.community_id,
        "process": process_doc(f.process),
    }


def decision_doc(subject_uid: str, d: Decision) -> dict[str, Any]:
    return {
        "subject_uid": subject_uid,
        "rule_id": d.rule_id,
        "pack": d.pack,
        "severity": str(d.severity),
        "action": str(d.action),
        "policy_version": d.policy_version,
        "reason": storable_text(d.reason),
        "categories": list(d.categories),
        "regime": d.regime,
        "legal_ref": d.legal_ref,
        "item": d.item,
        "in_force": d.in_force,
        "control_state": d.control_state,
        "confidence": d.confidence,
    }


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
