"""The incident log on a real store (SQLite and PostgreSQL): dedup, lifecycle, the chain,
and `verify` catching edits, deletes, inserts and reorders at the right record."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text

from agent.incidents.chain import VerifyReport, verify_entries
from agent.incidents.log import IncidentError, IncidentLog, set_status
from agent.incidents.queries import chain_entries, find_incident, incident_documents, list_incidents
from tests.incidents.helpers import finding


def verify(engine: Engine) -> VerifyReport:
    return verify_entries(chain_entries(engine), incident_documents(engine))


def populated(engine: Engine, n: int = 4, checkpoint_every: int = 100) -> IncidentLog:
    log = IncidentLog(
        engine, "host-a", "lab-ws-1", dedup_window=3600, checkpoint_every=checkpoint_every
    )
    log.start()
    for i in range(n):
        log.record(finding(i, key=f"key-{i}", t=i))
    return log


def seq_of(engine: Engine, uid: str) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                text("SELECT max(seq) FROM incident_chain WHERE incident_uid = :u"), {"u": uid}
            ).scalar_one()
        )


def uids(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(text("SELECT uid FROM incidents ORDER BY id")).scalars())


def test_fresh_chain_verifies(store: Engine) -> None:
    populated(store)
    report = verify(store)
    assert report.ok, report.problems
    assert report.records == 5 and report.incidents == 4  # genesis + 4


def test_dedup_updates_the_open_incident(store: Engine) -> None:
    log = populated(store, 0)
    first = log.record(finding(1, key="same", t=0))
    again = log.record(finding(2, key="same", t=60))
    assert first and again and first.uid == again.uid and again.created is False
    assert log.record(finding(2, key="same", t=61)) is None  # nothing new: no record
    docs = list_incidents(store)
    assert len(docs) == 1
    assert docs[0]["events_count"] == 6 and docs[0]["bytes_out"] == 1001 + 1002
    later = log.record(finding(3, key="same", t=60 + 3601))  # past the dedup window
    assert later and later.created
    assert verify(store).ok


def test_closed_incident_is_not_reopened(store: Engine) -> None:
    log = populated(store, 0)
    first = log.record(finding(1, key="same"))
    assert first
    doc = find_incident(store, first.uid)
    assert doc
    set_status(store, doc["id"], "closed", "carol", "false positive")
    nxt = log.record(finding(2, key="same", t=5))
    assert nxt and nxt.created and nxt.uid != first.uid


def test_lifecycle_and_its_chain_records(store: Engine) -> None:
    populated(store, 1)
    doc = list_incidents(store)[0]
    acked = set_status(store, doc["id"], "acknowledged", "carol", "looking")
    assert acked["status"] == "acknowledged" and acked["acted_by"] == "carol"
    with pytest.raises(IncidentError, match="acknowledged only when open"):
        set_status(store, doc["id"], "acknowledged", "carol", None)
    closed = set_status(store, doc["id"], "closed", "dave", "licence on file")
    assert closed["note"] == "licence on file"
    with pytest.raises(IncidentError):
        set_status(store, doc["id"], "closed", "dave", None)
    with pytest.raises(IncidentError, match="no incident"):
        set_status(store, 999_999, "closed", "dave", None)
    shown = find_incident(store, str(doc["id"]))
    assert shown and [c["type"] for c in shown["chain"]] == ["incident", "status", "status"]
    assert verify(store).ok
    assert [d["status"] for d in list_incidents(store, status="closed")] == ["closed"]


def test_superseded_policy_alert_is_closed_as_merged(store: Engine) -> None:
    log = populated(store, 0)
    alert = log.record(finding(1, key="alert-key", kind="policy_alert"))
    story = log.record(finding(2, key="story", supersedes=("alert-key",)))
    assert alert and story and story.superseded == (alert.uid,)
    doc = find_incident(store, alert.uid)
    assert doc and doc["status"] == "closed" and story.uid in doc["note"]
    assert verify(store).ok


def test_checkpoints_every_n_records_and_at_stop(store: Engine) -> None:
    log = populated(store, 7, checkpoint_every=3)
    log.checkpoint("clean stop")
    types = [e.record_type for e in chain_entries(store)]
    assert types[0] == "genesis" and types[-1] == "checkpoint"
    assert types.count("checkpoint") >= 3
    report = verify(store)
    assert report.ok and report.unsealed == {"host-a": 0}


def test_concurrent_writers_share_one_chain(store: Engine) -> None:
    log = populated(store, 0)
    other = IncidentLog(store, "host-a", "lab-ws-1")

    def write(lg: IncidentLog, base: int) -> None:
        for i in range(10):
            lg.record(finding(base + i, key=f"k{base + i}"))

    threads = [threading.Thread(target=write, args=(lg, b)) for lg, b in ((log, 0), (other, 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify(store)
    assert report.ok, report.problems
    assert report.incidents == 20


# --- tampering: each must be reported at the right record -------------------------------


def test_one_byte_changed_in_a_row_is_found(store: Engine) -> None:
    populated(store)
    victim = uids(store)[2]
    with store.begin() as c:
        c.execute(
            text("UPDATE incidents SET bytes_out = bytes_out + 1 WHERE uid = :u"), {"u": victim}
        )
    report = verify(store)
    assert not report.ok and report.first is not None
    assert report.first.seq == seq_of(store, victim)
    assert "bytes_out" in report.first.why and "edited" in report.first.why


def test_one_byte_changed_in_a_title_is_found(store: Engine) -> None:
    populated(store)
    victim = uids(store)[1]
    with store.begin() as c:
        c.execute(
            text("UPDATE incidents SET title = 'X' || substr(title, 2) WHERE uid = :u"),
            {"u": victim},
        )
    report = verify(store)
    assert report.first is not None and report.first.seq == seq_of(store, victim)


@pytest.mark.parametrize(
    ("tampering", "why"),
    [
        (
            "UPDATE incident_chain SET payload = replace(payload, 'lab-ws-1', 'lab-ws-2') "
            "WHERE seq = 3",
            "edited",
        ),
        ("DELETE FROM incident_chain WHERE seq = 2", "missing"),
    ],
    ids=["edited-payload", "deleted-record"],
)
def test_edited_or_deleted_chain_record_is_found_at_seq_3(
    store: Engine, tampering: str, why: str
) -> None:
    """Record 3 no longer links: its own payload was edited, or record 2 before it is gone."""
    populated(store)
    with store.begin() as c:
        c.execute(text(tampering))
    report = verify(store)
    assert report.first is not None and report.first.seq == 3
    assert why in report.first.why


def test_deleted_incident_row_is_found(store: Engine) -> None:
    populated(store)
    victim = uids(store)[0]
    with store.begin() as c:
        c.execute(text("DELETE FROM incidents WHERE uid = :u"), {"u": victim})
    report = verify(store)
    assert report.first is not None and report.first.seq == seq_of(store, victim)
    assert "deleted" in report.first.why


def test_inserted_incident_row_is_found(store: Engine) -> None:
    populated(store)
    with store.begin() as c:
        c.execute(
            text(
                "INSERT INTO incidents (uid, host_id, kind, rule_id, pack, severity, status, title,"
                " dedup_key, opened_at, updated_at, evidence, events_count, bytes_out,"
                " policy_version) SELECT 'forged', host_id, kind, rule_id, pack, severity, status,"
                " title, 'forged', opened_at, updated_at, evidence, events_count, bytes_out,"
                " policy_version FROM incidents WHERE id = (SELECT min(id) FROM incidents)"
            )
        )
    report = verify(store)
    assert not report.ok
    assert any("forged" in p.why and "inserted" in p.why for p in report.problems)


def test_inserted_chain_record_is_found(store: Engine) -> None:
    populated(store)
    with store.begin() as c:
        # make room at seq 2 by shifting the later records up, then forge one there
        for seq in (4, 3, 2):
            c.execute(text(f"UPDATE incident_chain SET seq = {seq + 1} WHERE seq = {seq}"))
        c.execute(
            text(
                "INSERT INTO incident_chain (seq, host_id, time, record_type, incident_uid,"
                " payload, prev_hash, hash) SELECT 2, host_id, time, record_type, incident_uid,"
                " payload, prev_hash, hash FROM incident_chain WHERE seq = 1"
            )
        )
    report = verify(store)
    assert report.first is not None and report.first.seq == 2


def test_reordered_records_are_found(store: Engine) -> None:
    populated(store)
    with store.begin() as c:
        c.execute(text("UPDATE incident_chain SET seq = 100 WHERE seq = 2"))
        c.execute(text("UPDATE incident_chain SET seq = 2 WHERE seq = 3"))
        c.execute(text("UPDATE incident_chain SET seq = 3 WHERE seq = 100"))
    report = verify(store)
    assert report.first is not None and report.first.seq == 2
    assert "prev_hash" in report.first.why or "column seq" in report.first.why


def test_deleted_genesis_is_found(store: Engine) -> None:
    populated(store)
    with store.begin() as c:
        c.execute(text("DELETE FROM incident_chain WHERE seq = 0"))
    report = verify(store)
    assert report.first is not None and report.first.seq == 1


# --- what only a witness (an earlier export kept elsewhere) can show ---------------------


def _witness(engine: Engine) -> list:
    import io

    from agent.incidents.export import read_file, write

    buf = io.StringIO()
    write(chain_entries(engine), "ecs", buf)
    return list(read_file(io.StringIO(buf.getvalue())))


def _against(engine: Engine, witness: list) -> VerifyReport:
    from agent.incidents.chain import check_witness

    entries = list(chain_entries(engine))
    report = verify_entries(entries, incident_documents(engine))
    check_witness(report, {(e.host_id, e.seq): e.hash for e in entries}, witness)
    return report


def test_cut_off_tail_is_found_only_with_a_witness(store: Engine) -> None:
    populated(store)
    witness = _witness(store)
    with store.begin() as c:
        c.execute(
            text(
                "DELETE FROM incidents WHERE uid = "
                "(SELECT incident_uid FROM incident_chain WHERE seq = 4)"
            )
        )
        c.execute(text("DELETE FROM incident_chain WHERE seq = 4"))
    assert verify(store).ok  # a chain alone cannot see its own end cut off
    report = _against(store, witness)
    assert report.first is not None and report.first.seq == 4 and "truncated" in report.first.why


def test_resealed_chain_is_found_only_with_a_witness(store: Engine) -> None:
    import json as _json

    from agent.incidents.chain import link_hash
    from agent.incidents.model import canonical_json

    populated(store)
    witness = _witness(store)
    rows = {e.seq: e for e in chain_entries(store)}
    victim = rows[2]
    doc = _json.loads(victim.payload or "")
    doc["incident"]["severity"] = "low"
    with store.begin() as c:
        prev = rows[1].hash
        for seq in sorted(rows)[2:]:
            payload = canonical_json(doc) if seq == 2 else rows[seq].payload
            h = link_hash(prev, payload or "")
            c.execute(
                text(
                    "UPDATE incident_chain SET payload = :p, prev_hash = :v, hash = :h "
                    "WHERE seq = :s"
                ),
                {"p": payload, "v": prev, "h": h, "s": seq},
            )
            prev = h
        c.execute(
            text("UPDATE incidents SET severity = 'low' WHERE uid = :u"), {"u": victim.incident_uid}
        )
    assert verify(store).ok  # re-sealed: internally consistent
    report = _against(store, witness)
    assert report.first is not None and report.first.seq == 2 and "re-sealed" in report.first.why
