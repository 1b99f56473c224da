"""What a classified file would trigger on each channel: the engine behind `policy explain`.

Given an `Artefact`, build the events it could be part of — written locally, to
removable media, to a network share, into a cloud-sync folder, and uploaded to a
foreign destination — and ask the policy for its decisions on each. Pure: the caller
classifies the file; no I/O happens here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent.events import Artefact, Channel, FileAction, FileEvent, Flow
from agent.policy.model import Policy

# documentation addresses (RFC 5737): an example destination that is never contacted
EXAMPLE_SRC = "192.0.2.10"
EXAMPLE_FOREIGN_DST = "203.0.113.10"


def scenarios(artefact: Artefact, path: str) -> list[tuple[str, FileEvent | Flow]]:
    now = dt.datetime.now(dt.UTC)
    out: list[tuple[str, FileEvent | Flow]] = [
        (
            f"copy to {ch.value}",
            FileEvent(
                FileAction.WRITTEN, path, ch, size=artefact.size, artefact=artefact, time=now
            ),
        )
        for ch in (Channel.LOCAL, Channel.REMOVABLE, Channel.NETWORK_SHARE, Channel.CLOUD_SYNC)
    ]
    flow = Flow(
        protocol="tcp",
        src_ip=EXAMPLE_SRC,
        src_port=50000,
        dst_ip=EXAMPLE_FOREIGN_DST,
        dst_port=443,
        start=now,
        end=now,
        bytes_out=artefact.size,
        dest_class="foreign",
        country="US",
        name="upload.example.com",
    )
    out.append(("upload to a foreign destination", flow))
    return out


def explain(policy: Policy, artefact: Artefact, path: str) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for m in artefact.matches:
        counts[m.category] = counts.get(m.category, 0) + m.count
    specs = {c.code: c for c in policy.categories}
    categories = []
    for code, n in sorted(counts.items()):
        spec = specs.get(code)
        info = policy.category_info.get(code, {})
        categories.append(
            {
                "code": code,
                "count": n,
                "present": spec is None or n >= spec.min_count,
                "min_count": spec.min_count if spec else 1,
                "pack": info.get("pack"),
                "catalogue_code": info.get("catalogue_code"),
                "name_en": info.get("name_en"),
                "name_zh": info.get("name_zh"),
                "control": info.get("control"),
            }
        )
    results = []
    for name, event in scenarios(artefact, path):
        if isinstance(event, FileEvent):
            decisions = policy.decide_file(event)
        else:
            decisions = policy.decide_transfer(artefact, event)
        results.append(
            {
                "scenario": name,
                "decisions": [
                    {
                        "rule_id": d.rule_id,
                        "pack": d.pack,
                        "severity": str(d.severity),
                        "action": d.action,
                        "reason": d.reason,
                        "categories": list(d.categories),
                    }
                    for d in decisions
                ],
            }
        )
    return {
        "path": path,
        "size": artefact.size,
        "sha256": artefact.sha256,
        "kinds": list(artefact.kinds),
        "tags": [{"kind": t.kind, "evidence": t.evidence} for t in artefact.tags],
        "categories": categories,
        "scenarios": results,
        "policy_version": policy.version,
    }
