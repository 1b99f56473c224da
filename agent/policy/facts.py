"""Facts: the flat mapping of field → value a rule condition is evaluated against.

Built from what the earlier stages attached — a `FileEvent` with its `Artefact` (kinds,
tag details, category matches, channel, process, time), a `Flow` (destination class,
country, bytes, name, port, process), or a *transfer*: an artefact joined to the flow
that carried it (what correlation and `policy explain` ask about). Rule test cases give
facts directly as YAML (`facts_from_mapping`). Field names are those of
`conditions.FIELDS` and `conditions.DETAILS`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

from agent.events import Artefact, FileEvent, Flow, ProcessInfo

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Facts = dict[str, Any]


def _time_facts(facts: Facts, when: dt.datetime) -> None:
    local = when.astimezone() if when.tzinfo else when
    facts["hour"] = local.hour
    facts["weekday"] = _WEEKDAYS[local.weekday()]


def _process_facts(facts: Facts, proc: ProcessInfo | None) -> None:
    if proc is None:
        return
    if proc.exe:
        facts["process.exe"] = proc.exe
        facts["process.name"] = os.path.basename(proc.exe)
    if proc.user:
        facts["user"] = proc.user


def artefact_facts(facts: Facts, artefact: Artefact, min_counts: Mapping[str, int]) -> None:
    """Kinds, tag details (`<kind>.<detail>`), match counts and present categories."""
    facts["kinds"] = frozenset(artefact.kinds)
    if artefact.skipped:
        facts["skipped"] = artefact.skipped
    facts.setdefault("size", artefact.size)
    for tag in artefact.tags:
        for key, value in tag.details.items():
            name = f"{tag.kind}.{key}"
            if isinstance(value, (list, tuple, set, frozenset)):
                value = frozenset(v for v in value if isinstance(v, (str, int, float)))
            # several tags of one kind (archive members): keep the largest number
            old = facts.get(name)
            if isinstance(old, (int, float)) and isinstance(value, (int, float)):
                value = max(old, value)
            facts[name] = value
    present = set()
    for m in artefact.matches:
        facts[f"matches.{m.category}"] = facts.get(f"matches.{m.category}", 0) + m.count
    for code in {m.category for m in artefact.matches}:
        if facts[f"matches.{code}"] >= min_counts.get(code, 1):
            present.add(code)
    facts["categories"] = frozenset(present)


def file_facts(event: FileEvent, min_counts: Mapping[str, int]) -> Facts:
    facts: Facts = {
        "event": "file",
        "action": str(event.action),
        "channel": str(event.channel),
        "path": event.current_path,
        "kinds": frozenset(),
        "categories": frozenset(),
    }
    if event.size is not None:
        facts["size"] = event.size
    _process_facts(facts, event.process)
    _time_facts(facts, event.time)
    if event.artefact is not None:
        artefact_facts(facts, event.artefact, min_counts)
    return facts


def flow_facts(flow: Flow) -> Facts:
    facts: Facts = {
        "event": "flow",
        "channel": "network",
        "dest_class": flow.dest_class,
        "bytes_out": flow.bytes_out,
        "dst_ip": flow.dst_ip,
        "dst_port": flow.dst_port,
        "protocol": flow.protocol,
        "kinds": frozenset(),
        "categories": frozenset(),
    }
    for key in ("country", "name", "sni"):
        value = getattr(flow, key)
        if value:
            facts[key] = value
    _process_facts(facts, flow.process)
    _time_facts(facts, flow.time)
    return facts


def transfer_facts(
    artefact: Artefact,
    flow: Flow,
    min_counts: Mapping[str, int],
    file_event: FileEvent | None = None,
) -> Facts:
    """An artefact that left in a flow: the artefact's facts plus the destination's."""
    facts = flow_facts(flow)
    facts["event"] = "transfer"
    if file_event is not None:
        facts["path"] = file_event.current_path
        if file_event.process is not None and "process.exe" not in facts:
            _process_facts(facts, file_event.process)
    artefact_facts(facts, artefact, min_counts)
    return facts


def facts_from_mapping(raw: Mapping[str, Any], min_counts: Mapping[str, int]) -> Facts:
    """Facts as a rule test writes them: field names, plus `matches: {CODE: n}`.

    Unknown names are the loader's business (it checks them with line numbers); here
    sets become frozensets and `categories` is derived from `matches` when not given.
    """
    facts: Facts = {"kinds": frozenset(), "categories": frozenset()}
    for key, value in raw.items():
        if key == "matches" and isinstance(value, Mapping):
            for code, count in value.items():
                facts[f"matches.{code}"] = count
        elif isinstance(value, list):
            facts[key] = frozenset(value) if key in ("kinds", "categories") else list(value)
        else:
            facts[key] = value
    if "categories" not in raw:
        facts["categories"] = frozenset(
            k[8:]
            for k, v in facts.items()
            if k.startswith("matches.") and isinstance(v, int) and v >= min_counts.get(k[8:], 1)
        )
    return facts
