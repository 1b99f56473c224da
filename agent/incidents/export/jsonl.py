"""JSON Lines: the internal incident document, one chain record per line.

Each line is the record's payload object (the whole incident document under
`incident`) plus the chain fields `prev_hash` and `hash`. The hash covers the canonical
JSON of everything but those two, so the line verifies on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from agent.incidents.chain import ChainEntry
from agent.incidents.export._view import written_lines
from agent.incidents.model import canonical_json

NAME = "jsonl"
EXTENSION = "jsonl"
HEADER: str | None = None


def render(entry: ChainEntry) -> str:
    if entry.payload is None:
        doc: dict[str, object] = {
            "seq": entry.seq,
            "type": entry.record_type,
            "time": entry.time,
            "host_id": entry.host_id,
            "incident_uid": entry.incident_uid,
            "stub": True,
        }
    else:
        doc = json.loads(entry.payload)
    doc["prev_hash"] = entry.prev_hash
    doc["hash"] = entry.hash
    return json.dumps(doc, ensure_ascii=True, sort_keys=True)


def read(lines: Iterable[str]) -> Iterator[tuple[ChainEntry, str]]:
    """(entry, the line as written) for each non-empty line."""
    for line in written_lines(lines):
        doc = json.loads(line)
        prev, hsh = doc.pop("prev_hash"), doc.pop("hash")
        stub = bool(doc.pop("stub", False))
        yield (
            ChainEntry(
                seq=int(doc["seq"]),
                host_id=str(doc["host_id"]),
                record_type=str(doc["type"]),
                time=str(doc["time"]),
                incident_uid=doc.get("incident_uid"),
                payload=None if stub else canonical_json(doc),
                prev_hash=str(prev),
                hash=str(hsh),
            ),
            line,
        )
