"""Facts: the flat mapping of field → value a rule condition is evaluated against.

Built from what the earlier stages attached — a `FileEvent` with its `Artefact` (kinds,
tag details, category matches, channel, process, time), a `Flow` (destination class,
country, bytes, name, port, process), or a *transfer*: an artefact joined to the flow
that carried it (what correlation and `policy explain` ask about). Rule test cases give
facts directly as YAML (`facts_from_mapping`). Field names are those of
`fields.FIELDS` and `fields.DETAILS`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

from agent.categories import reaches
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


def artefact_facts(
    facts: Facts,
    artefact: Artefact,
    min_counts: Mapping[str, int],
    min_confidence: Mapping[str, str] | None = None,
) -> None:
    """Kinds, tag details (`<kind>.<detail>`), match counts, confidences, present categories.

    A category is present when its distinct terms reach `min_count` and its confidence
    reaches `min_confidence` (default medium): news, abstracts and datasheets that name a
    technology stay low and fire no category rule. A match with `distinct == 0` was
    recorded before distinct counting and confidence existed; it is judged by its count
    at medium confidence, as it was then.
    """
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
    distinct: dict[str, int] = {}
    for m in artefact.matches:
        code = m.category
        facts[f"matches.{code}"] = facts.get(f"matches.{code}", 0) + m.count
        distinct[code] = distinct.get(code, 0) + (m.distinct or m.count)
        level = m.confidence if m.distinct else "medium"
        old = facts.get(f"confidence.{code}")
        if old is None or reaches(level, old):
            facts[f"confidence.{code}"] = level
    facts["categories"] = frozenset(
        code
        for code, n in distinct.items()
        if n >= min_counts.get(code, 1)
        and reaches(facts[f"confidence.{code}"], (min_confidence or {}).get(code, "medium"))
    )


def file_facts(
    event: FileEvent,
    min_counts: Mapping[str, int],
    min_confidence: Mapping[str, str] | None = None,
) -> Facts:
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
        artefact_facts(facts, event.artefact, min_counts, min_confidence)
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
    for key in ("country", "name", "sni", "service", "service_category", "dest_org"):
        value = getattr(flow, key)
        if value:
            facts[key] = value
    _process_facts(facts, flow.process)
    _time_facts(facts, flow.time)
    if flow.repository:  # a git push or fetch: `repository.<key>` (fields.DETAILS)
        for key, value in flow.repository.items():
            if isinstance(value, (list, tuple)):
                value = frozenset(v for v in value if isinstance(v, str))
            if value is not None:
                facts[f"repository.{key}"] = value
    return facts


def transfer_facts(
    artefact: Artefact,
    flow: Flow,
    min_counts: Mapping[str, int],
    file_event: FileEvent | None = None,
    min_confidence: Mapping[str, str] | None = None,
) -> Facts:
    """An artefact that left in a flow: the artefact's facts plus the destination's."""
    facts = flow_facts(flow)
    facts["event"] = "transfer"
    if file_event is not None:
        facts["path"] = file_event.current_path
        if file_event.process is not None and "process.exe" not in facts:
            _process_facts(facts, file_event.process)
    artefact_facts(facts, artefact, min_counts, min_confidence)
    return facts


def tree_facts(
    tree: Any,
    min_counts: Mapping[str, int],
    min_confidence: Mapping[str, str] | None = None,
) -> Facts:
    """A finished whole-tree copy (`incidents.tree.TreeFacts`): `event: tree`, the union
    of its files' kinds and categories, `files_count`, `size`, `repository.*`."""
    facts: Facts = {
        "event": "tree",
        "action": "copied",
        "channel": tree.channel,
        "path": tree.root,
        "files_count": tree.files_count,
        "size": tree.size,
    }
    kinds: set[str] = set()
    categories: set[str] = set()
    for artefact in tree.artefacts:
        one: Facts = {}
        artefact_facts(one, artefact, min_counts, min_confidence)
        kinds |= one["kinds"]
        categories |= one["categories"]
    facts["kinds"] = frozenset(kinds)
    facts["categories"] = frozenset(categories)
    for key, value in (tree.repository or {}).items():
        if isinstance(value, (list, tuple)):
            value = frozenset(v for v in value if isinstance(v, str))
        if value is not None:
            facts[f"repository.{key}"] = value
    _process_facts(facts, tree.process)
    _time_facts(facts, tree.time)
    return facts


def facts_from_mapping(
    raw: Mapping[str, Any],
    min_counts: Mapping[str, int],
    min_confidence: Mapping[str, str] | None = None,
) -> Facts:
    """Facts as a rule test writes them: field names, `matches: {CODE: n}` and
    `confidence: {CODE: low|medium|high}`.

    Unknown names are the loader's business (it checks them with line numbers); here
    sets become frozensets and `categories` is derived from `matches` (as distinct
    counts) and `confidence` when not given; a code with a count and no confidence is
    taken as medium, so tests written before confidence existed keep their meaning.
    """
    facts: Facts = {"kinds": frozenset(), "categories": frozenset()}
    for key, value in raw.items():
        if key == "matches" and isinstance(value, Mapping):
            for code, count in value.items():
                facts[f"matches.{code}"] = count
                facts.setdefault(f"confidence.{code}", "medium")
        elif key == "confidence" and isinstance(value, Mapping):
            for code, level in value.items():
                facts[f"confidence.{code}"] = level
        elif isinstance(value, list):
            facts[key] = frozenset(value) if key in ("kinds", "categories") else list(value)
        else:
            facts[key] = value
    if "categories" not in raw:
        minimum = min_confidence or {}
        facts["categories"] = frozenset(
            k[8:]
            for k, v in facts.items()
            if k.startswith("matches.")
            and isinstance(v, int)
            and v >= min_counts.get(k[8:], 1)
            and reaches(str(facts.get(f"confidence.{k[8:]}")), minimum.get(k[8:], "medium"))
        )
    return facts
