"""`incidents show` on a terminal: the whole evidence chain of one incident as text.

Sections follow the story: what and how bad, the files (paths, hashes, kinds and the
classifier's evidence), the lineage from the original artefact, the flows (bytes,
SNI, destination), the processes, the rules, and the chain records that vouch for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _proc(p: Mapping[str, Any] | None) -> str:
    if not p:
        return "-"
    who = p.get("user") or (f"uid {p['uid']}" if p.get("uid") is not None else "?")
    return f"pid {p.get('pid')} {p.get('exe') or '?'} ({who}) {p.get('cmdline') or ''}".rstrip()


def render_incident(doc: Mapping[str, Any]) -> str:
    ev = doc.get("evidence") or {}
    out = [
        f"Incident {doc.get('id')}  {doc.get('uid')}",
        f"  {doc.get('title')}",
        f"  kind {doc.get('kind')}  severity {doc.get('severity')}  status {doc.get('status')}",
        f"  rule {doc.get('rule_id')} (pack {doc.get('pack')}, "
        f"policy {doc.get('policy_version') or '-'})",
        f"  host {doc.get('hostname') or doc.get('host_id')}  opened {doc.get('opened_at')}"
        f"  updated {doc.get('updated_at')}",
        f"  events {doc.get('events_count')}  bytes out {doc.get('bytes_out')}",
    ]
    if doc.get("acted_by") or doc.get("note"):
        out.append(f"  by {doc.get('acted_by') or '-'}: {doc.get('note') or ''}")
    corr = ev.get("correlation") or {}
    if corr:
        out.append("  correlation: " + ", ".join(f"{k}={v}" for k, v in corr.items()))
    out.append("")
    out.append(f"Files ({len(ev.get('files') or [])})")
    for f in ev.get("files") or []:
        path = f.get("path") or ""
        if f.get("dest_path"):
            path += f" -> {f['dest_path']}"
        out.append(
            f"  [{f.get('role')}] {f.get('time')} {f.get('action')} {f.get('channel')}: {path}"
        )
        out.append(
            f"      sha256 {f.get('sha256') or '-'}  size {f.get('size')}  "
            f"kinds {','.join(f.get('kinds') or []) or '-'}"
        )
        for t in f.get("tags") or []:
            out.append(f"      {t.get('kind')}: {t.get('evidence')}")
        for c in f.get("categories") or []:
            out.append(f"      category {c.get('category')} ({c.get('pack')}) x{c.get('count')}")
        if f.get("process"):
            out.append(f"      by {_proc(f.get('process'))}")
    if ev.get("lineage"):
        out.append("")
        out.append("Lineage (parent -> child)")
        names: dict[str, list[str]] = {}
        for f in ev.get("files") or []:
            if f.get("sha256"):
                seen = names.setdefault(f["sha256"], [])
                for p in (f.get("path"), f.get("dest_path")):
                    if p and p not in seen:
                        seen.append(p)
        for edge in ev["lineage"]:
            p, c = edge.get("parent"), edge.get("child")
            out.append(f"  {p[:16]}… {' = '.join(names.get(p, []))}")
            out.append(f"    -> {c[:16]}… {' = '.join(names.get(c, []))}")
    if ev.get("flows"):
        out.append("")
        out.append(f"Flows ({len(ev['flows'])})")
        for fl in ev["flows"]:
            out.append(
                f"  {fl.get('start')} .. {fl.get('end')} {fl.get('protocol')} "
                f"{fl.get('src_ip')}:{fl.get('src_port')} -> "
                f"{fl.get('dst_ip')}:{fl.get('dst_port')}"
            )
            out.append(
                f"      {fl.get('bytes_out')} bytes out ({fl.get('byte_source')}), "
                f"SNI {fl.get('sni') or '-'}, name {fl.get('name') or '-'}, "
                f"{fl.get('dest_class')} {fl.get('country') or '??'}"
            )
            if fl.get("process"):
                out.append(f"      by {_proc(fl.get('process'))}")
    if ev.get("processes"):
        out.append("")
        out.append("Processes")
        for p in ev["processes"]:
            out.append(f"  {_proc(p)} (parent {p.get('ppid')})")
    if ev.get("decisions"):
        out.append("")
        out.append("Rules")
        for d in ev["decisions"]:
            out.append(
                f"  {d.get('rule_id')} ({d.get('pack')}) {d.get('severity')} {d.get('action')}: "
                f"{d.get('reason') or ''}"
            )
    truncated = ev.get("truncated") or {}
    if truncated:
        out.append(
            "  (more evidence not kept: "
            + ", ".join(f"{k} {v}" for k, v in truncated.items())
            + ")"
        )
    if doc.get("chain"):
        out.append("")
        out.append("Chain records")
        for c in doc["chain"]:
            out.append(f"  seq {c['seq']} {c['type']} {c['time']} {c['hash']}")
    return "\n".join(out)
