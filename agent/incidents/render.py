"""`incidents show` on a terminal: the whole evidence chain of one incident as text.

Sections follow the story: what and how bad, the files (paths, hashes, kinds and the
classifier's evidence), the lineage from the original artefact, the flows (bytes,
SNI, destination), the processes, the rules, and the chain records that vouch for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.textsafe import shown


def _proc(p: object) -> str:
    if not isinstance(p, Mapping) or not p:
        return "-"
    who = p.get("user") or (f"uid {p['uid']}" if p.get("uid") is not None else "?")
    return f"pid {p.get('pid')} {p.get('exe') or '?'} ({who}) {p.get('cmdline') or ''}".rstrip()


def _items(ev: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """An evidence list, keeping only well-formed entries (a row may have been edited)."""
    value = ev.get(key)
    return [x for x in value if isinstance(x, Mapping)] if isinstance(value, list) else []


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _legal(d: Mapping[str, Any]) -> str:
    """What an officer acts on: regime, item, law, the control's state on the event's
    day, confidence ("" for decisions stored before these fields existed)."""
    if "in_force" not in d:
        return ""
    state = str(d.get("control_state") or "in_force")
    parts = [
        f"regime {d.get('regime') or '-'}",
        f"item {d.get('item') or '-'}",
        f"law {d.get('legal_ref') or '-'}",
        f"in force that day: {'yes' if d.get('in_force') else 'no'} ({state})",
        f"confidence {d.get('confidence') or '-'}",
    ]
    return " · ".join(parts)


def render_incident(doc: Mapping[str, Any]) -> str:
    ev = doc.get("evidence")
    ev = ev if isinstance(ev, Mapping) else {}
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
    corr = ev.get("correlation")
    if isinstance(corr, Mapping) and corr:
        out.append("  correlation: " + ", ".join(f"{k}={v}" for k, v in corr.items()))
    tree = ev.get("tree")
    if isinstance(tree, Mapping) and tree:
        raw = tree.get("kinds")
        kinds: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        out.append(
            f"  tree {tree.get('root')}: {tree.get('files_count')} files, {tree.get('bytes')} bytes"
            f" ({', '.join(f'{k} {n}' for k, n in kinds.items()) or 'no kinds'}), "
            f"{tree.get('git_files') or 0} files of its .git/ not listed"
        )
        repo = tree.get("repository")
        if isinstance(repo, Mapping) and repo:
            out.append(
                f"    repository {repo.get('remote') or repo.get('root')} "
                f"commit {repo.get('commit') or '-'} on {repo.get('branch') or '-'}"
            )
    repo = ev.get("repository")
    if isinstance(repo, Mapping) and repo:
        out.append(
            f"  repository {repo.get('name')} at {repo.get('root')}: "
            f"commit {repo.get('commit') or '-'} on {repo.get('branch') or '-'}, "
            f"{repo.get('files_count')} files ({', '.join(map(str, _list(repo.get('languages'))))})"
        )
        out.append(
            f"    remote {repo.get('remote') or '-'}; pushed to {repo.get('push_url') or '-'} "
            f"(approved: {repo.get('approved')})"
        )
    out.append("")
    out.append(f"Files ({len(_items(ev, 'files'))})")
    for f in _items(ev, "files"):
        path = f.get("path") or ""
        if f.get("dest_path"):
            path += f" -> {f['dest_path']}"
        out.append(
            f"  [{f.get('role')}] {f.get('time')} {f.get('action')} {f.get('channel')}: {path}"
        )
        out.append(
            f"      sha256 {f.get('sha256') or '-'}  size {f.get('size')}  "
            f"kinds {','.join(str(k) for k in _list(f.get('kinds'))) or '-'}"
        )
        for t in _items(f, "tags"):
            out.append(f"      {t.get('kind')}: {t.get('evidence')}")
        for c in _items(f, "categories"):
            out.append(f"      category {c.get('category')} ({c.get('pack')}) x{c.get('count')}")
        if f.get("process"):
            out.append(f"      by {_proc(f.get('process'))}")
    if _items(ev, "lineage"):
        out.append("")
        out.append("Lineage (parent -> child)")
        names: dict[str, list[str]] = {}
        for f in _items(ev, "files"):
            if f.get("sha256"):
                seen = names.setdefault(str(f["sha256"]), [])
                for path in (f.get("path"), f.get("dest_path")):
                    if path and str(path) not in seen:
                        seen.append(str(path))
        for edge in _items(ev, "lineage"):
            parent, child = str(edge.get("parent") or "?"), str(edge.get("child") or "?")
            out.append(f"  {parent[:16]}… {' = '.join(names.get(parent, []))}")
            out.append(f"    -> {child[:16]}… {' = '.join(names.get(child, []))}")
    if _items(ev, "flows"):
        out.append("")
        out.append(f"Flows ({len(_items(ev, 'flows'))})")
        for fl in _items(ev, "flows"):
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
    if _items(ev, "processes"):
        out.append("")
        out.append("Processes")
        for p in _items(ev, "processes"):
            out.append(f"  {_proc(p)} (parent {p.get('ppid')})")
    if _items(ev, "decisions"):
        out.append("")
        out.append("Rules")
        for d in _items(ev, "decisions"):
            out.append(
                f"  {d.get('rule_id')} ({d.get('pack')}) {d.get('severity')} {d.get('action')}: "
                f"{d.get('reason') or ''}"
            )
            legal = _legal(d)
            if legal:
                out.append(f"    {legal}")
    truncated = ev.get("truncated")
    if isinstance(truncated, Mapping) and truncated:
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
    # every line holds outside text (paths, titles, command lines): shown() keeps it one line
    return "\n".join(shown(line) for line in out)
