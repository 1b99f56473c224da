"""Elastic Common Schema (ECS 8.x) JSON Lines: one alert document per chain record.

Standard fields carry the primary facts (`@timestamp`, `event.*`, `file.*`,
`destination.*`, `tls.client.server_name`, `process.*`, `user.*`, `rule.*`, `host.*`,
`source.bytes` for the upload); everything else — the lists of files, flows, lineage
and decisions, and the chain fields — is under the custom `egress.*` namespace.
`egress.record` is the hashed payload itself, so a line verifies on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from agent.incidents.chain import ChainEntry
from agent.incidents.export._view import (
    SEVERITY_NUMBER,
    View,
    basename,
    entry_from_chain_fields,
    view,
    written_lines,
)

NAME = "ecs"
EXTENSION = "ecs.jsonl"
HEADER: str | None = None
ECS_VERSION = "8.11.0"


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if not v:
                continue
        if v is None:
            continue
        out[k] = v
    return out


def _event(v: View) -> dict[str, Any]:
    inc = v.incident
    if not inc:
        return {"kind": "event", "category": ["configuration"], "type": ["info"]}
    categories = ["file"] + (["network"] if v.evidence.get("flows") else [])
    return {
        "kind": "alert",
        "category": categories,
        "type": ["creation"] if v.entry.record_type == "incident" else ["change"],
        "severity": SEVERITY_NUMBER.get(v.severity, 0),
        "id": inc.get("uid"),
        "dataset": f"egress.{inc.get('kind')}",
        "start": inc.get("opened_at"),
        "reason": inc.get("title"),
    }


def document(entry: ChainEntry) -> dict[str, Any]:
    v = view(entry)
    inc, f, fl, p = v.incident, v.file, v.flow, v.process
    doc: dict[str, Any] = {
        "@timestamp": entry.time,
        "ecs": {"version": ECS_VERSION},
        "message": inc.get("title") or v.action,
        "event": {**_event(v), "action": v.action, "module": "egress-agent"},
        "host": {"id": entry.host_id, "name": v.hostname},
    }
    if inc:
        doc.update(
            {
                "file": {
                    "path": v.path,
                    "name": basename(v.path),
                    "size": f.get("size"),
                    "hash": {"sha256": f.get("sha256")},
                },
                "destination": {
                    "ip": fl.get("dst_ip"),
                    "port": fl.get("dst_port"),
                    "domain": fl.get("sni") or fl.get("name"),
                    "geo": {"country_iso_code": fl.get("country")},
                    "as": {"organization": {"name": fl.get("dest_org")}},
                },
                # joins this upload with Zeek's conn.log and Suricata's flow records
                "network": {"community_id": fl.get("community_id")},
                # ECS has no field for the known service: labels are its custom keywords
                "labels": {
                    "service": fl.get("service"),
                    "service_category": fl.get("service_category"),
                },
                "source": {
                    "ip": fl.get("src_ip"),
                    "port": fl.get("src_port"),
                    "bytes": fl.get("bytes_out"),
                },
                "tls": {"client": {"server_name": fl.get("sni")}},
                "process": {
                    "pid": p.get("pid"),
                    "executable": p.get("exe"),
                    "command_line": p.get("cmdline"),
                    "parent": {"pid": p.get("ppid")},
                },
                "user": {
                    "name": p.get("user"),
                    "id": None if p.get("uid") is None else str(p.get("uid")),
                },
                "rule": {
                    "id": inc.get("rule_id"),
                    "name": inc.get("rule_id"),
                    "ruleset": inc.get("pack"),
                    "version": inc.get("policy_version") or None,
                    # the regime and the law the deciding rule rests on
                    "category": v.decision.get("regime") or None,
                    "reference": v.decision.get("legal_ref") or None,
                },
            }
        )
    doc = _drop_none(doc)
    doc["egress"] = {
        "chain": {
            "seq": entry.seq,
            "record_type": entry.record_type,
            "incident_uid": entry.incident_uid,
            "prev_hash": entry.prev_hash,
            "hash": entry.hash,
            "stub": entry.payload is None,
        },
        "record": v.doc if entry.payload is not None else None,
    }
    return doc


def render(entry: ChainEntry) -> str:
    return json.dumps(document(entry), ensure_ascii=True)


def read(lines: Iterable[str]) -> Iterator[tuple[ChainEntry, str]]:
    for line in written_lines(lines):
        doc = json.loads(line)
        egress = doc["egress"]
        entry = entry_from_chain_fields(
            egress["chain"], doc["host"]["id"], doc["@timestamp"], egress.get("record")
        )
        yield entry, line
