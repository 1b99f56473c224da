"""OCSF 1.4 JSON Lines: incidents as Data Security Findings, chain markers as log activity.

Incident records are class 2006 *Data Security Finding* (category 2 Findings; activity
1 Create, 2 Update, 3 Close; `type_uid = class_uid * 100 + activity_id`), with
`finding_info`, `file`, `dst_endpoint`, `src_endpoint`, `actor` and `is_alert` (the
class has no `traffic`: the upload's bytes are in `unmapped.traffic`). Genesis,
checkpoint and stub records are class 1008 *Event Log Activity* (category 1 System;
activity 3 Enable for genesis, 99 Other otherwise), so the chain stays whole in the
export. Times are epoch milliseconds; unknown attributes are left out (OCSF has no
nulls); the chain fields and the hashed payload travel in `unmapped.egress`. Tests
validate every line against the OCSF 1.4.0 JSON schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from agent import __version__
from agent.incidents.chain import ChainEntry
from agent.incidents.export._view import (
    View,
    basename,
    entry_from_chain_fields,
    view,
    written_lines,
)

NAME = "ocsf"
EXTENSION = "ocsf.jsonl"
HEADER: str | None = None
OCSF_VERSION = "1.4.0"
SEVERITY_ID = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
STATUS_ID = {"open": 1, "acknowledged": 2, "closed": 4}
FINDING_CLASS, LOG_CLASS = 2006, 1008


def _metadata(v: View) -> dict[str, Any]:
    return {
        "version": OCSF_VERSION,
        "product": {"name": "egress-agent", "vendor_name": "egress-agent", "version": __version__},
        "uid": f"{v.entry.host_id}:{v.entry.seq}",
        "log_name": "incident_chain",
    }


def _finding(v: View) -> dict[str, Any]:
    inc, f, fl, p = v.incident, v.file, v.flow, v.process
    status = str(inc.get("status"))
    activity = 1 if v.entry.record_type == "incident" else (3 if status == "closed" else 2)
    out: dict[str, Any] = {
        "class_uid": FINDING_CLASS,
        "class_name": "Data Security Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity,
        "activity_name": {1: "Create", 2: "Update", 3: "Close"}[activity],
        "type_uid": FINDING_CLASS * 100 + activity,
        "severity_id": SEVERITY_ID.get(v.severity, 0),
        "severity": v.severity.capitalize(),
        "status_id": STATUS_ID.get(status, 99),
        "status": status,
        "is_alert": activity != 3,
        "time": v.time_ms,
        "message": inc.get("title"),
        "finding_info": {
            "uid": inc.get("uid"),
            "title": inc.get("title"),
            "types": [inc.get("kind")],
            "created_time": _ms(inc.get("opened_at")),
            "modified_time": _ms(inc.get("updated_at")),
            "analytic": {"uid": inc.get("rule_id"), "name": inc.get("rule_id"), "type_id": 1},
        },
        "device": {"uid": v.entry.host_id, "hostname": v.hostname, "type_id": 0},
    }
    if f:
        out["file"] = {
            "name": basename(v.path) or "",
            "path": v.path,
            "size": f.get("size"),
            "type_id": 1,
            "hashes": [{"algorithm_id": 3, "value": f["sha256"]}] if f.get("sha256") else [],
        }
    if fl:
        out["dst_endpoint"] = {"ip": fl.get("dst_ip"), "port": fl.get("dst_port")}
        if fl.get("sni") or fl.get("name"):
            out["dst_endpoint"]["hostname"] = fl.get("sni") or fl.get("name")
        if fl.get("country"):
            out["dst_endpoint"]["location"] = {"country": fl.get("country")}
        out["src_endpoint"] = {"ip": fl.get("src_ip"), "port": fl.get("src_port")}
        if fl.get("dest_org"):
            out["dst_endpoint"]["autonomous_system"] = {"name": fl.get("dest_org")}
    if p:
        out["actor"] = {
            "process": {
                "pid": p.get("pid"),
                "file": {"path": p.get("exe"), "name": basename(p.get("exe")) or "", "type_id": 1},
                "cmd_line": p.get("cmdline"),
            },
            "user": {
                "name": p.get("user"),
                "uid": None if p.get("uid") is None else str(p.get("uid")),
            },
        }
    if inc.get("note") or inc.get("acted_by"):
        out["comment"] = f"{inc.get('acted_by') or ''}: {inc.get('note') or ''}".strip()
    return out


def _log_activity(v: View) -> dict[str, Any]:
    genesis = v.entry.record_type == "genesis"
    activity = 3 if genesis else 99
    return {
        "class_uid": LOG_CLASS,
        "class_name": "Event Log Activity",
        "category_uid": 1,
        "category_name": "System Activity",
        "activity_id": activity,
        "activity_name": "Enable" if genesis else ("Chain Link" if v.stub else "Checkpoint"),
        "type_uid": LOG_CLASS * 100 + activity,
        "severity_id": 1,
        "severity": "Informational",
        "time": v.time_ms,
        "log_name": "incident_chain",
        "log_provider": "egress-agent",
        "device": {"uid": v.entry.host_id, "hostname": v.hostname, "type_id": 0},
    }


def _ms(iso_time: object) -> int | None:
    if not isinstance(iso_time, str):
        return None
    return int(datetime.fromisoformat(iso_time).timestamp() * 1000)


def _drop_none(value: Any) -> Any:
    """OCSF has no nulls: an unknown attribute is left out."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def document(entry: ChainEntry) -> dict[str, Any]:
    v = view(entry)
    doc = _drop_none(_finding(v) if v.incident else _log_activity(v))
    doc["metadata"] = _metadata(v)
    doc["unmapped"] = {
        "egress": {
            "seq": entry.seq,
            "host_id": entry.host_id,
            "record_type": entry.record_type,
            "time": entry.time,
            "incident_uid": entry.incident_uid,
            "prev_hash": entry.prev_hash,
            "hash": entry.hash,
            "stub": entry.payload is None,
            "record": v.doc if entry.payload is not None else None,
        }
    }
    if v.flow:  # Data Security Finding 1.4 has no `traffic`: the upload's bytes go here
        doc["unmapped"]["traffic"] = {
            "bytes_out": v.flow.get("bytes_out"),
            "bytes_in": v.flow.get("bytes_in"),
        }
        # no Community ID or known-service field in a finding: beside the traffic
        network = {
            k: v.flow[k]
            for k in ("community_id", "service", "service_category")
            if v.flow.get(k) is not None
        }
        if network:
            doc["unmapped"]["network"] = network
    return doc


def render(entry: ChainEntry) -> str:
    return json.dumps(document(entry), ensure_ascii=True)


def read(lines: Iterable[str]) -> Iterator[tuple[ChainEntry, str]]:
    for line in written_lines(lines):
        e = json.loads(line)["unmapped"]["egress"]
        record = e.get("record") if e.get("stub") else e["record"]
        yield entry_from_chain_fields(e, e["host_id"], e["time"], record), line
