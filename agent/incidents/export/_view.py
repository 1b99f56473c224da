"""What every export format reads from a chain record: the incident's main facts.

A chain record's payload holds the whole incident document. Formats with one value per
field (ECS `file.path`, CEF `fname`...) show the *primary* file (the last touched
artefact: the archive that left, the file copied to the stick), the primary flow and
the process behind them; the full lists travel under the format's custom namespace.
Everything here is a pure function of the record, so a verifier can re-render a line
from its payload and compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.incidents.chain import ChainEntry
from agent.incidents.model import canonical_json

SEVERITY_NUMBER = {"info": 0, "low": 21, "medium": 47, "high": 73, "critical": 99}
RECORD_ACTIONS = {
    "genesis": "chain-genesis",
    "checkpoint": "chain-checkpoint",
    "incident": "incident-opened",
    "update": "incident-updated",
}


@dataclass(frozen=True, slots=True)
class View:
    entry: ChainEntry
    doc: Mapping[str, Any]  # the payload
    incident: Mapping[str, Any]  # {} for genesis, checkpoints and stubs

    @property
    def stub(self) -> bool:
        return self.entry.payload is None

    @property
    def hostname(self) -> str:
        return str(self.doc.get("hostname") or self.entry.host_id)

    @property
    def action(self) -> str:
        if self.stub:
            return "chain-link"
        if self.entry.record_type == "status":
            return f"incident-{self.incident.get('status')}"
        return RECORD_ACTIONS.get(self.entry.record_type, self.entry.record_type)

    @property
    def evidence(self) -> Mapping[str, Any]:
        return self.incident.get("evidence") or {}

    @property
    def file(self) -> Mapping[str, Any]:
        files = list(self.evidence.get("files") or [])
        touched = [f for f in files if f.get("role") == "touched"] or files
        return touched[-1] if touched else {}

    @property
    def original(self) -> Mapping[str, Any]:
        """The file at the root of the lineage, if the evidence has one."""
        roots = set(self.evidence.get("roots") or [])
        for f in self.evidence.get("files") or []:
            if f.get("sha256") in roots:
                return dict(f)
        return {}

    @property
    def decision(self) -> Mapping[str, Any]:
        """The decision behind the incident's rule: its regime, law, item, whether the
        control was in force that day, its state and confidence ({} if none stored)."""
        decisions = [d for d in self.evidence.get("decisions") or [] if isinstance(d, Mapping)]
        rule = self.incident.get("rule_id")
        mine = [d for d in decisions if d.get("rule_id") == rule] or decisions
        return mine[0] if mine else {}

    @property
    def flow(self) -> Mapping[str, Any]:
        flows = list(self.evidence.get("flows") or [])
        return flows[-1] if flows else {}

    @property
    def process(self) -> Mapping[str, Any]:
        return self.flow.get("process") or self.file.get("process") or {}

    @property
    def path(self) -> str | None:
        f = self.file
        return f.get("dest_path") or f.get("path")

    @property
    def severity(self) -> str:
        return str(self.incident.get("severity") or "info")

    @property
    def time_ms(self) -> int:
        return int(datetime.fromisoformat(self.entry.time).timestamp() * 1000)


def view(entry: ChainEntry) -> View:
    doc = entry.document if entry.payload is not None else {}
    return View(entry, doc, doc.get("incident") or {})


def entry_from_payload(
    payload: str | None,
    *,
    seq: int,
    host_id: str,
    record_type: str,
    time: str,
    incident_uid: str | None,
    prev_hash: str,
    hash: str,
) -> ChainEntry:
    return ChainEntry(seq, host_id, record_type, time, incident_uid, payload, prev_hash, hash)


def basename(path: str | None) -> str | None:
    return path.rsplit("/", 1)[-1] if path else None


def written_lines(lines: Iterable[str]) -> Iterator[str]:
    """The non-empty lines of an export file, without their newline."""
    for line in lines:
        line = line.rstrip("\n")
        if line:
            yield line


def entry_from_chain_fields(
    chain: Mapping[str, Any], host_id: Any, time: Any, record: Any
) -> ChainEntry:
    """The chain record that a JSON export (ECS, OCSF) carries in its custom namespace."""
    return ChainEntry(
        seq=int(chain["seq"]),
        host_id=str(host_id),
        record_type=str(chain["record_type"]),
        time=str(time),
        incident_uid=chain.get("incident_uid"),
        payload=None if chain.get("stub") else canonical_json(record),
        prev_hash=str(chain["prev_hash"]),
        hash=str(chain["hash"]),
    )
