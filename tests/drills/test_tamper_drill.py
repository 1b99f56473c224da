"""Fault drill: tampered incident evidence (issue 17 class 4), no witness file.

A running agent opens incidents for model weights copied to a removable root, exports
them on schedule (signed) and stops cleanly. Then each tampering an insider could do is
applied to a fresh copy of that state — store rows deleted (all of them, or the last k
records), the head re-sealed, the anchor edited, exports in every format cut by k lines
or given a forged record that links and hashes correctly — and `incidents verify` must
exit 1 with one line naming what is wrong. The pristine copy must verify. Run:
`pytest -m drill`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, select, update

from agent.incidents.chain import ChainEntry, link_hash, make_payload
from agent.incidents.export import FORMATS, detect
from agent.incidents.model import row_values
from agent.store.models import ChainRecord, IncidentRow
from tests.conftest import cli, eventually, write_config

for _component in ("agent.sensors.files.sensor", "agent.classify.stage", "agent.policy.stage"):
    pytest.importorskip(_component, reason=f"{_component} is not in this checkout")

from tests.incidents.helpers import safetensors, start_under_site_pack  # noqa: E402

# only the CLI and a short-lived agent, with no time bound: it runs beside other tests
pytestmark = [pytest.mark.drill, pytest.mark.concurrent]
N_FILES = 3


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=10) as c:
            return int(c.execute("SELECT count(*) FROM incidents").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _failed(res: subprocess.CompletedProcess[str], needle: str, case: str) -> None:
    err = res.stderr.strip().splitlines()
    assert res.returncode == 1, (case, res.stdout, res.stderr)
    assert len(err) == 1 and err[0].startswith("FAILED") and needle in err[0], (case, err)


class Copies:
    """A fresh copy of the pristine state directory per tampering case."""

    def __init__(self, tmp: Path, pristine: Path) -> None:
        self.tmp = tmp
        self.pristine = pristine
        self.n = 0

    def new(self) -> tuple[Path, Path]:
        self.n += 1
        state = self.tmp / f"case-{self.n}"
        shutil.copytree(self.pristine, state)
        db = state / "agent.db"
        cfg = write_config(
            self.tmp / f"case-{self.n}.yaml",
            {"agent": {"state_dir": str(state)}, "database": {"url": f"sqlite:///{db}"}},
        )
        return cfg, db


def _forged(fmt: str, last: dict[str, Any]) -> str:
    """A record that links to `last` (seq, hash, host) and hashes as the agent hashes."""
    seq = int(last["seq"]) + 1
    payload = make_payload(seq, "checkpoint", last["time"], last["host_id"], "x", info={})
    hsh = link_hash(last["hash"], payload)
    entry = ChainEntry(
        seq, last["host_id"], "checkpoint", last["time"], None, payload, last["hash"], hsh
    )
    line: str = FORMATS[fmt].render(entry)
    return line + ("\r\n" if fmt == "csv" else "\n")


def _cut_tail(db: Path, cut: int) -> None:
    """What a careful insider does: delete the records from `cut` on and put every
    incident row they touched back as its latest remaining record has it."""
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as c:
        uids = {
            r[0]
            for r in c.execute(select(ChainRecord.incident_uid).where(ChainRecord.seq >= cut)).all()
            if r[0]
        }
        c.execute(delete(ChainRecord).where(ChainRecord.seq >= cut))
        for uid in uids:
            payload = c.execute(
                select(ChainRecord.payload)
                .where(ChainRecord.incident_uid == uid)
                .order_by(ChainRecord.seq.desc())
                .limit(1)
            ).scalar()
            if payload is None:
                c.execute(delete(IncidentRow).where(IncidentRow.uid == uid))
            else:
                doc = json.loads(payload)["incident"]
                c.execute(update(IncidentRow).where(IncidentRow.uid == uid).values(row_values(doc)))
    engine.dispose()


def test_every_tampering_of_the_incident_evidence_is_detected(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, usb: Path
) -> None:
    agent, exports = start_under_site_pack(run_agent, agent_config, tmp_path)
    state = Path(agent_config["agent"]["state_dir"])
    for i in range(N_FILES):
        safetensors(usb / f"model-{i}.safetensors", rows=64, cols=64 + i)
    assert eventually(lambda: _count(state / "agent.db") >= N_FILES), agent.stderr()
    assert eventually(lambda: exports.exists() and any(exports.glob("*.ecs.jsonl")))
    assert agent.stop() == 0

    with sqlite3.connect(state / "agent.db") as c:
        records = c.execute("SELECT seq, hash FROM incident_chain ORDER BY seq").fetchall()
    head_seq, head_hash = records[-1]
    pristine = tmp_path / "pristine"
    shutil.copytree(state, pristine)
    copies = Copies(tmp_path, pristine)
    pub = cli("keys", "show", config=copies.new()[0]).stdout.splitlines()[0]

    cfg, _db = copies.new()
    assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:")
    verified = 1

    # --- the store ---------------------------------------------------------------------
    cfg, db = copies.new()
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM incident_chain")
        c.execute("DELETE FROM incidents")
    _failed(
        cli("incidents", "verify", config=cfg, check=False),
        f"chain is empty but the last anchored head was seq {head_seq}",
        "emptied",
    )
    verified += 1
    # ... and the agent restarted on the emptied store: it begins a new chain at seq 0,
    # its gauge shows the drop, the anchor stays where it was
    restarted = run_agent({**agent_config, "agent": {"state_dir": str(db.parent)}}, name="again")
    restarted.wait_metrics()
    assert eventually(lambda: restarted.metric("egress_agent_incident_chain_head_seq") == 0)
    assert restarted.stop() == 0
    assert "incident chain tampered" in restarted.stderr()
    _failed(
        cli("incidents", "verify", config=cfg, check=False),
        f"but the last anchored head was seq {head_seq}",
        "emptied, restarted",
    )
    verified += 1
    # cut k records off the end, rows rolled back to match: the chain alone still links
    for k in range(1, 4):
        cfg, db = copies.new()
        _cut_tail(db, head_seq - k + 1)
        res = cli("incidents", "verify", config=cfg, check=False)
        _failed(res, f"seq {head_seq}", f"cut {k}")
        # the same cut with the anchor file gone: the Prometheus values catch it
        (db.parent / "incident-chain-anchor.json").unlink()
        # the control: the chain alone cannot tell (so the anchors are what catch it)
        assert cli("incidents", "verify", config=cfg).stdout.startswith("OK:"), k
        res = cli(
            "incidents",
            "verify",
            "--expect-seq",
            str(head_seq),
            "--expect-head",
            str(int(head_hash[:12], 16)),
            config=cfg,
            check=False,
        )
        _failed(res, f"seq {head_seq}", f"cut {k}, Prometheus head")
        verified += 2
    # re-seal the head record
    cfg, db = copies.new()
    with sqlite3.connect(db) as c:
        prev, old = c.execute(
            "SELECT prev_hash, payload FROM incident_chain WHERE seq = ?", (head_seq,)
        ).fetchone()
        doc = json.loads(old)
        payload = make_payload(head_seq, doc["type"], doc["time"], doc["host_id"], "x", None, {})
        c.execute(
            "UPDATE incident_chain SET payload = ?, hash = ? WHERE seq = ?",
            (payload, link_hash(prev, payload), head_seq),
        )
    _failed(cli("incidents", "verify", config=cfg, check=False), "re-sealed", "re-sealed head")
    verified += 1
    cfg, db = copies.new()
    anchor = db.parent / "incident-chain-anchor.json"
    anchor.write_text(anchor.read_text().replace(f'"seq": {head_seq}', '"seq": 0'))
    _failed(cli("incidents", "verify", config=cfg, check=False), "edited", "anchor edited")
    verified += 1

    # --- exports, every format, plus the daemon's own scheduled files ----------------
    cfg, _db = copies.new()
    files = sorted(exports.iterdir())
    for fmt in sorted(FORMATS):
        out = tmp_path / f"export.{fmt}"
        cli("incidents", "export", "--format", fmt, "--output", str(out), config=cfg)
        files.append(out)
    last_jsonl = json.loads((tmp_path / "export.jsonl").read_text().splitlines()[-2])
    for path in files:
        whole = path.read_bytes().decode("utf-8")
        fmt = detect(whole)
        nl = "\r\n" if fmt == "csv" else "\n"
        lines = whole.split(nl)[:-1]
        args = ("incidents", "verify", "--file", str(path), "--public-key", pub)
        assert cli(*args, config=cfg).returncode == 0, path
        cases = {f"cut {k}": nl.join(lines[:-k]) + nl for k in (1, 2, 3) if len(lines) > k}
        cases["record removed"] = nl.join(lines[:-2] + lines[-1:]) + nl
        if path.parent == tmp_path:  # a whole-chain export: forge the record after its last
            forged = _forged(fmt, last_jsonl)
            cases["forged appended"] = whole + forged
            cases["forged inserted"] = nl.join(lines[:-1]) + nl + forged + lines[-1] + nl
        for case, content in cases.items():
            bad = tmp_path / f"bad-{path.name}"
            bad.write_bytes(content.encode("utf-8"))
            res = cli("incidents", "verify", "--file", str(bad), "--public-key", pub,
                      config=cfg, check=False)  # fmt: skip
            _failed(res, "", f"{path.name}: {case}")
            verified += 1
    assert verified >= 40, verified
    print(f"{verified} tampered copies, each detected")
