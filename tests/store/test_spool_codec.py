"""The spool's event codec: exact round trips, and hostile records fail cleanly."""

from __future__ import annotations

import json
import os
from datetime import UTC

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import events
from agent.store import codec

# paths as the file sensor sees them: any bytes, os.fsdecode()d (surrogate escapes)
paths = st.one_of(st.text(max_size=40), st.binary(max_size=40).map(os.fsdecode))
times = st.datetimes(timezones=st.just(UTC))
small = st.integers(min_value=-(2**63), max_value=2**63 - 1)
opt_text = st.none() | st.text(max_size=20)
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)

processes = st.builds(
    events.ProcessInfo,
    pid=st.none() | st.integers(0, 2**22),
    exe=st.none() | paths,
    cmdline=opt_text,
    uid=st.none() | st.integers(0, 2**32),
    user=opt_text,
    ppid=st.none() | st.integers(0, 2**22),
)
decisions = st.builds(
    events.Decision,
    rule_id=st.text(max_size=20),
    pack=st.text(max_size=10),
    severity=st.sampled_from(events.Severity),
    action=st.sampled_from(["alert", "record"]),
    policy_version=st.text(max_size=10),
    reason=st.text(max_size=30),
    categories=st.tuples(st.text(max_size=8)),
)
artefacts = st.builds(
    events.Artefact,
    sha256=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    size=st.integers(0, 2**40),
    content_type=st.text(max_size=10),
    tags=st.lists(
        st.builds(
            events.Tag,
            kind=st.text(max_size=10),
            evidence=st.text(max_size=30),
            details=st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
        ),
        max_size=3,
    ).map(tuple),
    matches=st.lists(
        st.builds(events.CategoryMatch, category=st.text(max_size=8), count=st.integers(0, 99)),
        max_size=3,
    ).map(tuple),
    parents=st.lists(st.text(max_size=8), max_size=2).map(tuple),
    skipped=opt_text,
)
file_events = st.builds(
    events.FileEvent,
    action=st.sampled_from(events.FileAction),
    path=paths,
    channel=st.sampled_from(events.Channel),
    dest_path=st.none() | paths,
    size=st.none() | small,
    inode=st.none() | small,
    device=st.none() | small,
    mtime_ns=st.none() | small,
    process=st.none() | processes,
    origin=st.sampled_from(events.Origin),
    sensor=st.text(max_size=10),
    time=times,
    artefact=st.none() | artefacts,
    decisions=st.lists(decisions, max_size=2).map(tuple),
)
flows = st.builds(
    events.Flow,
    protocol=st.sampled_from(["tcp", "udp"]),
    src_ip=st.ip_addresses().map(str),
    src_port=st.integers(0, 65535),
    dst_ip=st.ip_addresses().map(str),
    dst_port=st.integers(0, 65535),
    start=times,
    end=times,
    bytes_out=st.integers(0, 2**50),
    bytes_in=st.integers(0, 2**50),
    name=opt_text,
    sni=opt_text,
    country=st.none() | st.text(max_size=2),
    process=st.none() | processes,
    decisions=st.lists(decisions, max_size=2).map(tuple),
)


@settings(max_examples=300)
@given(st.one_of(file_events, flows))
def test_round_trip_is_exact(event: events.FileEvent | events.Flow) -> None:
    text = codec.encode(event)
    assert text.isascii()  # lone surrogates travel as \\udcNN escapes
    back = codec.decode(text)
    assert back == event
    assert type(back) is type(event)
    if isinstance(event, events.FileEvent):
        assert isinstance(back, events.FileEvent)
        assert back.path.encode("utf-8", "surrogateescape") == event.path.encode(
            "utf-8", "surrogateescape"
        )
        assert back.artefact == event.artefact
        if event.artefact is not None and back.artefact is not None:
            assert [t.details for t in back.artefact.tags] == [
                t.details for t in event.artefact.tags
            ]


json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps)))
def test_hostile_records_raise_codec_error_only(text: str) -> None:
    try:
        codec.decode(text)
    except codec.CodecError:
        pass


@settings(max_examples=300)
@given(file_events, st.sampled_from(["path", "size", "action", "time", "process"]), json_values)
def test_damaged_fields_are_rejected_or_harmless(
    event: events.FileEvent, field: str, value: object
) -> None:
    doc = json.loads(codec.encode(event))
    doc["e"][field] = value
    try:
        back = codec.decode(json.dumps(doc))
    except codec.CodecError:
        return
    assert isinstance(back, events.FileEvent)
    assert isinstance(back.path, str)
    assert back.size is None or isinstance(back.size, int)


def test_unknown_fields_from_another_version_are_ignored() -> None:
    ev = events.FileEvent(action=events.FileAction.WRITTEN, path="/a")
    doc = json.loads(codec.encode(ev))
    doc["e"]["added_in_a_later_version"] = 1
    assert codec.decode(json.dumps(doc)) == ev


@pytest.mark.parametrize("text", ["", "[]", '{"k": "file"}', '{"k": "x", "e": {}}', "\x00"])
def test_garbage_is_a_codec_error(text: str) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(text)


@settings(max_examples=300)
@given(
    st.one_of(file_events, flows),
    st.sampled_from(["path", "size", "action", "time", "start", "process", "artefact", "sni"]),
    json_values | st.sampled_from(["2026-12-06", "2026-12-06T10:00:00", "2026-12-06T10:00Z"]),
)
def test_fast_decoder_agrees_with_the_checked_one(
    event: events.FileEvent | events.Flow, field: str, value: object
) -> None:
    """msgspec's typed decode must give what the checked decoder gives, or defer to it."""
    doc = json.loads(codec.encode(event))
    doc["e"][field] = value
    text = json.dumps(doc)
    assert codec.decode(codec.encode(event)) == codec.decode_checked(codec.encode(event))
    try:
        checked = codec.decode_checked(text)
    except codec.CodecError:
        return
    assert codec.decode(text) == checked
