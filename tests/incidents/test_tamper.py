"""Tampered evidence that `incidents verify` must catch without a witness file.

Each test tampers one way with a real SQLite store or a real export file and runs the
CLI as a user would: exit 1 and one line naming what is wrong. docs/incidents.md maps
each tampering and setup to the test that shows it is (or is not) detected.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from agent.incidents.anchor import (
    ANCHOR_FILE,
    KEY_FILE,
    PUBLIC_FILE,
    load_or_create_key,
    public_text,
)
from agent.incidents.chain import VerifyReport, link_hash, make_payload
from agent.incidents.export import FORMATS, verify_file
from agent.incidents.export.trailer import write_signed
from agent.incidents.heads import chain_head
from agent.incidents.log import IncidentLog
from agent.incidents.model import canonical_json
from agent.incidents.queries import chain_entries
from tests.conftest import cli, write_config
from tests.incidents.helpers import T0, finding, new_store


def make_store(
    tmp_path: Path, anchored: bool = True, url: str | None = None
) -> tuple[Path, str, Path]:
    """A store with a few incidents written as the daemon writes them; (config, url, state)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "host_id").write_text("host-a\n")
    url = url or f"sqlite:///{state / 'agent.db'}"
    engine = new_store(url)
    lg = IncidentLog(engine, "host-a", "lab-ws-1", anchor_dir=state if anchored else None)
    lg.start()
    lg.record(finding(1, key="a", severity="high"))
    lg.record(finding(2, key="b", severity="low"))
    lg.checkpoint("interval")
    engine.dispose()
    cfg = write_config(
        tmp_path / "agent.yaml", {"agent": {"state_dir": str(state)}, "database": {"url": url}}
    )
    return cfg, url, state


def sql(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as c:
        for s in statements:
            c.execute(text(s))
    engine.dispose()


def head(url: str) -> tuple[int, str]:
    engine = create_engine(url)
    found = chain_head(engine, "host-a")
    engine.dispose()
    assert found is not None
    return found


def verify_against(cfg: Path, seq: int | str, head: int | str) -> subprocess.CompletedProcess[str]:
    """`incidents verify` against the head Prometheus last saw (its seq and hash)."""
    return cli(
        "incidents", "verify", "--expect-seq", str(seq), "--expect-head", str(head),
        config=cfg, check=False,
    )  # fmt: skip


def reseal_head(url: str, seq: int) -> None:
    """Rewrite the head record's payload and re-seal it: the chain still links."""
    engine = create_engine(url)
    last = next(e for e in chain_entries(engine) if e.seq == seq)
    payload = make_payload(seq, "checkpoint", last.time, "host-a", "lab-ws-1", info={"x": 1})
    with engine.begin() as c:
        c.execute(
            text("UPDATE incident_chain SET payload = :p, hash = :h WHERE seq = :s"),
            {"p": payload, "h": link_hash(last.prev_hash, payload), "s": seq},
        )
    engine.dispose()


def failed(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 1, (res.stdout, res.stderr)
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("FAILED"), err
    for n in needles:
        assert n in err[0], (n, err[0])


# --- the store ---------------------------------------------------------------------------
def test_emptied_store_fails_against_the_anchor_file(tmp_path: Path) -> None:
    cfg, url, _state = make_store(tmp_path)
    seq, _h = head(url)
    assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:")
    sql(url, "DELETE FROM incident_chain", "DELETE FROM incidents")
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, f"chain is empty but the last anchored head was seq {seq}")


def test_emptied_fleet_store_fails_against_the_anchor_file(tmp_path: Path, pg_url: str) -> None:
    """Fleet: the chain lives in the central PostgreSQL store; the host keeps the anchor."""
    cfg, url, _state = make_store(tmp_path, url=pg_url)
    seq, _h = head(url)
    assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:")
    sql(url, "DELETE FROM incident_chain WHERE host_id = 'host-a'", "DELETE FROM incidents")
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, f"chain is empty but the last anchored head was seq {seq}")


def test_emptied_store_without_anchors_still_passes(tmp_path: Path) -> None:
    """The limit: no anchor file and no expected head, nothing says rows ever existed."""
    cfg, url, _state = make_store(tmp_path, anchored=False)
    sql(url, "DELETE FROM incident_chain", "DELETE FROM incidents")
    assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:")


def test_emptied_store_fails_against_the_prometheus_head(tmp_path: Path) -> None:
    cfg, url, _state = make_store(tmp_path, anchored=False)
    seq = int(REGISTRY.get_sample_value("egress_agent_incident_chain_head_seq") or -1)
    prefix = int(REGISTRY.get_sample_value("egress_agent_incident_chain_head_hash_prefix") or -1)
    assert (seq, f"{prefix:012x}") == (head(url)[0], head(url)[1][:12])
    sql(url, "DELETE FROM incident_chain", "DELETE FROM incidents")
    res = verify_against(cfg, seq, prefix)
    failed(res, f"chain is empty but the last anchored head was seq {seq}", "--expect-seq")


def test_cut_tail_fails_against_the_anchor_file(tmp_path: Path) -> None:
    cfg, url, _state = make_store(tmp_path)
    seq, _h = head(url)  # the checkpoint: removing it leaves a chain that links
    sql(url, f"DELETE FROM incident_chain WHERE seq = {seq}")
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, f"the chain ends at seq {seq - 1} but the last anchored head was seq {seq}")


def test_cut_tail_fails_against_the_prometheus_head(tmp_path: Path) -> None:
    cfg, url, _state = make_store(tmp_path, anchored=False)
    seq, hsh = head(url)
    sql(url, f"DELETE FROM incident_chain WHERE seq = {seq}")
    ok = cli("incidents", "verify", config=cfg)
    assert ok.stdout.startswith("OK:")  # the chain alone cannot tell
    res = verify_against(cfg, seq, int(hsh[:12], 16))
    failed(res, "its tail was cut off")


def test_resealed_head_fails_against_the_journal_hash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="agent.incidents.log"):
        cfg, url, _state = make_store(tmp_path, anchored=False)
    seq, hsh = head(url)
    assert f"incident chain head seq={seq} hash={hsh}" in caplog.text
    reseal_head(url, seq)
    assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:")
    res = verify_against(cfg, seq, hsh)
    failed(res, f"record {seq} has another hash than the anchored head", "re-sealed")


def test_resealed_head_fails_against_the_anchor_file(tmp_path: Path) -> None:
    cfg, url, _state = make_store(tmp_path)
    seq, _h = head(url)
    reseal_head(url, seq)
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, f"record {seq} has another hash than the anchored head (anchor file")


def test_edited_anchor_file_fails(tmp_path: Path) -> None:
    cfg, _url, state = make_store(tmp_path)
    doc = json.loads((state / ANCHOR_FILE).read_text())
    doc["seq"] = 1  # pretend the head was earlier, to hide a cut tail
    (state / ANCHOR_FILE).write_text(json.dumps(doc))
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, "the anchor's signature does not verify: it was edited")


def test_anchor_without_its_key_fails(tmp_path: Path) -> None:
    cfg, _url, state = make_store(tmp_path)
    (state / KEY_FILE).unlink()  # the public file still verifies the anchor
    assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:")
    (state / PUBLIC_FILE).unlink()
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, "host key is missing")


def test_anchor_resigned_with_another_key_fails_against_the_pinned_key(tmp_path: Path) -> None:
    cfg, url, state = make_store(tmp_path)
    pinned = cli("keys", "show", "--json", config=cfg)
    pub = json.loads(pinned.stdout)["public_key"]
    sql(url, "DELETE FROM incident_chain", "DELETE FROM incidents")
    # the insider replaces key and anchor with their own: the local key now agrees
    (state / KEY_FILE).unlink()
    (state / ANCHOR_FILE).unlink()
    from agent.incidents.anchor import write_anchor

    write_anchor(state, load_or_create_key(state), "host-a", 0, "0" * 64)
    res = cli("incidents", "verify", "--public-key", pub, config=cfg, check=False)
    failed(res, "signature does not verify")


def test_head_is_published_as_gauges_and_anchor(tmp_path: Path) -> None:
    _cfg, url, state = make_store(tmp_path)
    seq, hsh = head(url)
    assert REGISTRY.get_sample_value("egress_agent_incident_chain_head_seq") == seq
    assert REGISTRY.get_sample_value("egress_agent_incident_chain_head_hash_prefix") == int(
        hsh[:12], 16
    )
    doc = json.loads((state / ANCHOR_FILE).read_text())
    assert (doc["seq"], doc["hash"], doc["host_id"]) == (seq, hsh, "host-a")
    assert stat.S_IMODE(os.stat(state / KEY_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state / ANCHOR_FILE).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(state / PUBLIC_FILE).st_mode) == 0o644
    pub = (state / PUBLIC_FILE).read_text().strip()
    assert pub == public_text(load_or_create_key(state).public_key())


# --- export files ------------------------------------------------------------------------
def exported(tmp_path: Path, fmt: str = "jsonl") -> tuple[Path, Path, str]:
    cfg, _url, _state = make_store(tmp_path)
    out = tmp_path / f"export.{fmt}"
    cli("incidents", "export", "--format", fmt, "--output", str(out), config=cfg)
    pub = cli("keys", "show", config=cfg).stdout.splitlines()[0]
    assert pub.startswith("ed25519:")
    return cfg, out, pub


def verify_cli(cfg: Path, path: Path, pub: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "incidents", "verify", "--file", str(path), "--public-key", pub, config=cfg, check=False
    )


def test_signed_export_verifies_with_the_pinned_key(tmp_path: Path) -> None:
    cfg, out, pub = exported(tmp_path)
    res = verify_cli(cfg, out, pub)
    assert res.returncode == 0 and "signed trailer: verified" in res.stdout


def test_truncated_export_fails(tmp_path: Path) -> None:
    cfg, out, pub = exported(tmp_path)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-2]))  # the last record and the trailer
    failed(verify_cli(cfg, out, pub), "no signed trailer: lines were removed at its end")


def test_export_with_a_record_removed_before_the_trailer_fails(tmp_path: Path) -> None:
    cfg, out, pub = exported(tmp_path)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-2] + lines[-1:]))
    failed(verify_cli(cfg, out, pub), "not the ones it signed")


def forged_line(out: Path) -> str:
    """A record that links to the export's last one, hashed as the agent hashes."""
    last = json.loads(out.read_text().splitlines()[-2])
    seq = last["seq"] + 1
    payload = make_payload(seq, "checkpoint", T0.isoformat(), "host-a", "lab-ws-1", info={})
    doc = json.loads(payload)
    doc.update(prev_hash=last["hash"], hash=link_hash(last["hash"], payload))
    assert canonical_json({k: v for k, v in doc.items() if "hash" not in k}) == payload
    return json.dumps(doc, sort_keys=True) + "\n"


def test_forged_record_appended_after_the_trailer_fails(tmp_path: Path) -> None:
    cfg, out, pub = exported(tmp_path)
    out.write_text(out.read_text() + forged_line(out))
    failed(verify_cli(cfg, out, pub), "follow the signed trailer")


def test_forged_record_inserted_before_the_trailer_fails(tmp_path: Path) -> None:
    cfg, out, pub = exported(tmp_path)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + forged_line(out) + lines[-1])
    failed(verify_cli(cfg, out, pub), "not the ones it signed")


def test_forged_export_resigned_with_another_key_fails(tmp_path: Path) -> None:
    cfg, out, pub = exported(tmp_path)
    url = f"sqlite:///{tmp_path / 'state' / 'agent.db'}"
    entries = list(chain_entries(create_engine(url)))
    with out.open("w", encoding="utf-8", newline="") as fp:
        write_signed(entries[:-1], "jsonl", fp, Ed25519PrivateKey.generate(), T0)
    failed(verify_cli(cfg, out, pub), "not signed by the pinned key")
    other = public_text(Ed25519PrivateKey.generate().public_key())
    failed(verify_cli(cfg, out, other), "not signed by the pinned key")


def test_truncated_export_passes_without_a_key(tmp_path: Path) -> None:
    """The limit: with no key pinned and none on this host, an export is checked as a chain."""
    cfg, out, _pub = exported(tmp_path)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-2]))
    (tmp_path / "state" / KEY_FILE).unlink()
    (tmp_path / "state" / PUBLIC_FILE).unlink()
    res = cli("incidents", "verify", "--file", str(out), config=cfg)
    assert res.stdout.startswith("OK:")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_carries_a_trailer_that_catches_cut_and_append(
    tmp_path: Path, fmt: str
) -> None:
    engine = new_store(f"sqlite:///{tmp_path / 'a.db'}")
    lg = IncidentLog(engine, "host-a", "lab-ws-1")
    lg.start()
    for n in range(3):
        lg.record(finding(n, key=str(n)))
    key = Ed25519PrivateKey.generate()
    path = tmp_path / f"x.{fmt}"
    with path.open("w", encoding="utf-8", newline="") as fp:
        assert write_signed(chain_entries(engine), fmt, fp, key, T0) == 4
    pub = key.public_key()

    def check(content: str) -> VerifyReport:
        return verify_file(io.StringIO(content, newline=""), fmt, pub, require_signature=True)[1]

    whole = path.read_bytes().decode("utf-8")
    assert check(whole).ok
    nl = "\r\n" if fmt == "csv" else "\n"
    lines = whole.split(nl)[:-1]
    assert not check(nl.join(lines[:-1]) + nl).ok
    assert not check(nl.join(lines[:-2] + lines[-1:]) + nl).ok
    assert not check(whole + lines[-2] + nl).ok


def test_scheduled_export_files_are_signed(tmp_path: Path) -> None:
    from agent.incidents.export.job import export_new

    engine = new_store(f"sqlite:///{tmp_path / 'a.db'}")
    lg = IncidentLog(engine, "host-a", "lab-ws-1")
    lg.start()
    lg.record(finding(1))
    key = load_or_create_key(tmp_path / "state")
    path = export_new(engine, "host-a", tmp_path / "out", "ecs", key)
    assert path is not None
    with path.open(encoding="utf-8", newline="") as fp:
        _fmt, report = verify_file(fp, public_key=key.public_key(), require_signature=True)
    assert report.ok and report.signature.startswith("verified")
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with path.open(encoding="utf-8", newline="") as fp:
        _fmt, report = verify_file(fp, public_key=key.public_key(), require_signature=True)
    assert not report.ok


def test_export_checks_without_a_pinned_key(tmp_path: Path) -> None:
    """On the host its own key is the default pin; with no key at all the trailer still
    catches a cut inside or a line after it (not a re-signed file)."""
    cfg, out, _pub = exported(tmp_path)
    whole = out.read_text()
    lines = whole.splitlines(keepends=True)
    out.write_text("".join(lines[:-2]))
    res = cli("incidents", "verify", "--file", str(out), config=cfg, check=False)
    failed(res, "no signed trailer")
    (tmp_path / "state" / KEY_FILE).unlink()
    (tmp_path / "state" / PUBLIC_FILE).unlink()
    out.write_text("".join(lines[:-2] + lines[-1:]))
    res = cli("incidents", "verify", "--file", str(out), config=cfg, check=False)
    failed(res, "not the ones it signed")
    orig = out.with_name("orig.jsonl")
    orig.write_text(whole)
    out.write_text(whole + forged_line(orig))
    res = cli("incidents", "verify", "--file", str(out), config=cfg, check=False)
    failed(res, "follow the signed trailer")


def test_keys_show_and_status_print_the_public_key_to_pin(tmp_path: Path) -> None:
    cfg, _url, state = make_store(tmp_path)
    shown = json.loads(cli("keys", "show", "--json", config=cfg).stdout)
    assert shown["public_key"] == public_text(load_or_create_key(state).public_key())
    status = json.loads(cli("status", "--json", config=cfg).stdout)
    assert status["signing_key"] == {k: shown[k] for k in ("public_key", "key_id")}
    assert f"signing key: {shown['public_key']}" in cli("status", config=cfg).stdout


def test_edited_trailer_fails(tmp_path: Path) -> None:
    cfg, out, pub = exported(tmp_path)
    whole = out.read_text()
    lines = whole.splitlines(keepends=True)
    doc = json.loads(lines[-1])
    doc["egress_agent_export_trailer"]["records"] -= 1  # to hide a removed record
    out.write_text("".join(lines[:-1]) + json.dumps(doc) + "\n")
    failed(verify_cli(cfg, out, pub), "not signed by the pinned key")
    out.write_text("".join(lines[:-1]) + lines[-1][:40] + "\n")  # garbled
    failed(verify_cli(cfg, out, pub), "the signed trailer cannot be read")


def test_an_unreadable_key_or_anchor_is_a_note_not_a_tampering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An analyst outside the agent's group cannot read the state directory: the anchor
    check is skipped and says so, instead of reporting tampering."""
    from agent.cli import incident_heads
    from agent.incidents import anchor

    _cfg, _url, state = make_store(tmp_path)

    def denied(_state_dir: Path, *_a: object) -> None:
        raise anchor.AnchorUnreadable(f"{_state_dir}: Permission denied")

    notes: list[str] = []
    monkeypatch.setattr(anchor, "load_public", denied)
    assert incident_heads.anchored_head(state, None, notes) is None
    assert any("not readable by this user" in n for n in notes)
    notes = []
    assert incident_heads.local_public_key(state, notes) is None
    assert notes and "pass --public-key" in notes[0]
    monkeypatch.undo()
    monkeypatch.setattr(anchor, "read_anchor", denied)
    notes = []
    assert incident_heads.anchored_head(state, None, notes) is None
    assert notes and "anchor is not readable" in notes[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a key for another user")
def test_a_key_root_makes_belongs_to_the_agent_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4242, 4343)
    load_or_create_key(state)
    st = os.stat(state / KEY_FILE)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o600)


def test_a_restart_on_an_emptied_store_does_not_move_the_anchor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Empty the store, restart the daemon: it begins a new chain at seq 0, but the anchor
    keeps the old head, so verify still fails."""
    cfg, url, state = make_store(tmp_path)
    seq, hsh = head(url)
    sql(url, "DELETE FROM incident_chain", "DELETE FROM incidents")
    engine = create_engine(url)
    with caplog.at_level(logging.ERROR, logger="agent.incidents.log"):
        lg = IncidentLog(engine, "host-a", "lab-ws-1", anchor_dir=state)
        lg.start()
        lg.record(finding(9, key="z"))
    engine.dispose()
    assert "incident chain tampered" in caplog.text
    doc = json.loads((state / ANCHOR_FILE).read_text())
    assert (doc["seq"], doc["hash"]) == (seq, hsh)
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, f"the last anchored head was seq {seq}")


def test_a_tail_cut_under_the_running_log_does_not_move_the_anchor(tmp_path: Path) -> None:
    """Cut the head record while the daemon runs: its next record takes the same seq
    with another hash; the anchor stays on the old one."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "host_id").write_text("host-a\n")
    url = f"sqlite:///{state / 'agent.db'}"
    engine = new_store(url)
    lg = IncidentLog(engine, "host-a", "lab-ws-1", anchor_dir=state)
    lg.start()
    lg.record(finding(1, key="a"))
    lg.checkpoint("interval")
    seq, hsh = head(url)
    sql(url, f"DELETE FROM incident_chain WHERE seq = {seq}")
    lg.record(finding(2, key="b"))
    assert head(url)[0] == seq and head(url)[1] != hsh
    engine.dispose()
    doc = json.loads((state / ANCHOR_FILE).read_text())
    assert (doc["seq"], doc["hash"]) == (seq, hsh)
    cfg = write_config(
        tmp_path / "agent.yaml", {"agent": {"state_dir": str(state)}, "database": {"url": url}}
    )
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, f"record {seq} has another hash than the anchored head")


def test_expect_head_accepts_the_gauge_value_or_hex_and_refuses_junk(tmp_path: Path) -> None:
    from agent.incidents.anchor import hash_prefixes

    hsh = "00ab" + "c" * 60
    gauge = int(hsh[:12], 16)
    assert any(hsh.startswith(p) for p in hash_prefixes(str(gauge)))
    assert any(hsh.startswith(p) for p in hash_prefixes(hsh[:16].upper()))
    assert hash_prefixes("abc") == () and hash_prefixes("zz" * 8) == ()
    cfg, url, _state = make_store(tmp_path)
    seq, real = head(url)
    assert verify_against(cfg, seq, real).stdout.startswith("OK:")
    for junk in ("abc", "xyz" * 5):
        res = verify_against(cfg, 1, junk)
        assert res.returncode == 2 and "--expect-head" in res.stderr, res.stderr
    res = cli("incidents", "verify", "--expect-head", real, config=cfg, check=False)
    assert res.returncode == 2 and "--expect-seq" in res.stderr


def test_fleet_store_keeps_each_hosts_head_record(tmp_path: Path, pg_url: str) -> None:
    """The host wiped as well (anchor file gone): the head record the fleet store keeps
    still shows the emptied chain; an edited record fails on its signature."""
    cfg, url, state = make_store(tmp_path, url=pg_url)
    seq, hsh = head(url)
    engine = create_engine(url)
    with engine.connect() as c:
        value = c.execute(
            text("SELECT value FROM job_state WHERE name = 'incident_chain_head'")
        ).scalar_one()
    engine.dispose()
    record = value if isinstance(value, dict) else json.loads(value)
    assert (record["seq"], record["hash"], record["host_id"]) == (seq, hsh, "host-a")
    assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:")
    sql(url, "DELETE FROM incident_chain WHERE host_id = 'host-a'", "DELETE FROM incidents")
    (state / ANCHOR_FILE).unlink()
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, f"the last anchored head was seq {seq} (fleet store head record of host host-a)")
    sql(
        url,
        "UPDATE job_state SET value = jsonb_set(value::jsonb, '{seq}', '0')::json "
        "WHERE name = 'incident_chain_head'",
    )
    res = cli("incidents", "verify", config=cfg, check=False)
    failed(res, "fleet store head record of host host-a does not verify: it was edited")


def test_a_local_store_keeps_no_head_record(tmp_path: Path) -> None:
    _cfg, url, _state = make_store(tmp_path)
    engine = create_engine(url)
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM job_state")).scalar_one()
    engine.dispose()
    assert n == 0
