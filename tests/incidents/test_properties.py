"""Property tests for the pure parts: any single change to a chain is found where it was
made, and correlation keeps its promises on arbitrary event sequences."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import FileAction, ProcessInfo
from agent.incidents.chain import GENESIS_PREV, ChainEntry, link_hash, make_payload, verify_entries
from agent.incidents.correlate import EXTERNAL, CorrelationCore
from agent.incidents.model import iso, new_document
from tests.incidents.helpers import T0, archive, fev, finding, flow, judge, weights


def chain(n: int) -> list[ChainEntry]:
    out: list[ChainEntry] = []
    prev = GENESIS_PREV
    for seq in range(n):
        kind = "genesis" if seq == 0 else "incident"
        doc = new_document(finding(seq), f"u{seq}", "host-a") if seq else None
        payload = make_payload(seq, kind, iso(T0), "host-a", "h", incident=doc)
        h = link_hash(prev, payload)
        out.append(ChainEntry(seq, "host-a", kind, iso(T0), doc and doc["uid"], payload, prev, h))
        prev = h
    return out


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 8),
    data=st.data(),
    field=st.sampled_from(["seq", "prev_hash", "hash", "payload", "time", "delete", "swap"]),
)
def test_any_single_change_is_found_where_it_was_made(
    n: int, data: st.DataObject, field: str
) -> None:
    entries = chain(n)
    assert verify_entries(entries).ok
    i = data.draw(st.integers(0, n - 1), label="record")
    e = entries[i]
    where = i
    if field == "delete":
        del entries[i]
        if i == n - 1:
            return  # a cut-off tail: only a witness shows it (tested elsewhere)
    elif field == "swap":
        if i == n - 1:
            return
        entries[i], entries[i + 1] = entries[i + 1], entries[i]
    elif field == "seq":
        entries[i] = dataclasses.replace(e, seq=e.seq + data.draw(st.sampled_from([-1, 1, 7])))
    elif field == "payload":
        pos = data.draw(st.integers(0, len(e.payload or "") - 1), label="byte")
        text = e.payload or ""
        flipped = chr(ord(text[pos]) ^ 1)
        entries[i] = dataclasses.replace(e, payload=text[:pos] + flipped + text[pos + 1 :])
    elif field == "time":
        entries[i] = dataclasses.replace(e, time=iso(T0.replace(year=2030)))
    else:
        value = getattr(e, field)
        entries[i] = dataclasses.replace(
            e, **{field: ("0" if value[0] != "0" else "1") + value[1:]}
        )
    report = verify_entries(entries)
    assert not report.ok, (field, i)
    assert report.first is not None and report.first.position == where, (field, i, report.first)


pids = st.sampled_from([None, 100, 200, 300, 301, 900])
procs = st.builds(
    lambda pid: None if pid is None else ProcessInfo(pid=pid, ppid=300 if pid == 301 else 1),
    pids,
)


@st.composite
def events(draw: st.DrawFn) -> list:
    out = []
    t = 0.0
    for _ in range(draw(st.integers(1, 25))):
        t += draw(st.floats(0, 400))
        if draw(st.booleans()):
            art = draw(st.sampled_from([weights(), archive(), None]))
            action = draw(st.sampled_from(list(FileAction)))
            out.append(fev(action, f"/d/{len(out)}", t, art, draw(procs)))
        else:
            out.append(
                flow(
                    t,
                    t + draw(st.floats(0, 30)),
                    draw(st.integers(0, 10**8)),
                    process=draw(procs),
                    dest_class=draw(
                        st.sampled_from(["foreign", "internal", "unknown", "approved"])
                    ),
                )
            )
    return out


@settings(max_examples=200, deadline=None)
@given(events(), st.floats(0.05, 2.0))
def test_correlation_only_links_what_it_may(evs: list, tolerance: float) -> None:
    core = CorrelationCore(window=900, byte_tolerance=tolerance, judge_transfer=judge)
    for e in evs:
        for f in core.observe(e):
            assert f.kind == "exfiltration"  # no decisions in these events
            (fl,) = f.evidence["flows"]
            # the rd-assets upload rules alert on foreign and unknown destinations only
            assert fl["dest_class"] in EXTERNAL and fl["dest_class"] in ("foreign", "unknown")
            assert f.pack == "rd-assets"
            c = f.evidence["correlation"]
            assert abs(c["flow_bytes"] - c["file_bytes"]) <= tolerance * c["file_bytes"] + 1e-6
            fpid = (fl["process"] or {}).get("pid")
            touched = [x for x in f.evidence["files"] if x["role"] == "touched"]
            assert touched
            if c["method"] == "same_process":
                assert all(x["process"]["pid"] == fpid for x in touched)
            elif c["method"] == "child_process":
                assert fpid == 301 and all(x["process"]["pid"] == 300 for x in touched)
            else:
                assert c["method"] == "size_and_time"
                assert fpid is None or all(x["process"] is None for x in touched)
