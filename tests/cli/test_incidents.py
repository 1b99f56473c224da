"""`egress-agent incidents ...` as a user runs it (subprocesses on a real SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from agent.incidents.log import IncidentLog
from tests.conftest import cli, write_config
from tests.incidents.helpers import finding, new_store


def setup_store(tmp_path: Path) -> tuple[Path, str]:
    url = f"sqlite:///{tmp_path / 'state' / 'agent.db'}"
    (tmp_path / "state").mkdir()
    engine = new_store(url)
    log = IncidentLog(engine, "host-a", "lab-ws-1")
    log.start()
    log.record(finding(1, key="a", severity="high"))
    log.record(finding(2, key="b", severity="low", rule_id="cn.other", kind="policy_alert"))
    engine.dispose()
    cfg = write_config(
        tmp_path / "agent.yaml",
        {"agent": {"state_dir": str(tmp_path / "state")}, "database": {"url": url}},
    )
    return cfg, url


def test_list_show_ack_close_verify_export(tmp_path: Path) -> None:
    cfg, url = setup_store(tmp_path)
    rows = [
        json.loads(ln) for ln in cli("incidents", "list", "--json", config=cfg).stdout.splitlines()
    ]
    assert len(rows) == 2
    high = cli(
        "incidents", "list", "--json", "--severity", "medium", config=cfg
    ).stdout.splitlines()
    assert [json.loads(x)["severity"] for x in high] == ["high"]
    by_rule = cli("incidents", "list", "--rule", "cn.other", config=cfg).stdout
    assert "cn.other" in by_rule and "ear.model_weights" not in by_rule
    assert (
        cli("incidents", "list", "--host", "lab-ws-1", "--json", config=cfg).stdout.count("\n") == 2
    )
    assert cli("incidents", "list", "--host", "nope", config=cfg).stdout == ""

    ident = str(next(r["id"] for r in rows if r["severity"] == "high"))
    shown = cli("incidents", "show", ident, config=cfg).stdout
    for needle in (
        "Files",
        "/data/=SUM(A1)|1",
        "Lineage",
        "Flows",
        "up.example",
        "/usr/bin/curl",
        "ear.model_weights",
        "Chain records",
    ):
        assert needle in shown, needle

    out = cli("incidents", "ack", ident, "--note", "looking", "--by", "carol", config=cfg)
    assert "acknowledged by carol" in out.stdout
    again = cli("incidents", "ack", ident, config=cfg, check=False)
    assert again.returncode == 2 and "acknowledged only when open" in again.stderr
    cli("incidents", "close", ident, "--note", "licence on file", config=cfg)
    doc = json.loads(cli("incidents", "show", ident, "--json", config=cfg).stdout)
    assert doc["status"] == "closed" and doc["note"] == "licence on file"
    assert cli("incidents", "show", "99999", config=cfg, check=False).returncode == 2

    ok = cli("incidents", "verify", config=cfg)
    assert ok.stdout.startswith("OK:")

    for fmt in ("jsonl", "ecs", "ocsf", "csv", "cef"):
        out_file = tmp_path / f"export.{fmt}"
        cli("incidents", "export", "--format", fmt, "--output", str(out_file), config=cfg)
        res = cli("incidents", "verify", "--file", str(out_file), "--json", config=cfg)
        assert json.loads(res.stdout)["ok"] is True, fmt
    witness = cli("incidents", "verify", "--witness", str(tmp_path / "export.csv"), config=cfg)
    assert witness.stdout.startswith("OK: store against")
    stdout_export = cli("incidents", "export", "--format", "ecs", config=cfg).stdout
    lines = stdout_export.splitlines()
    assert stdout_export.count("\n") == len(lines) == 6  # genesis+2+ack+close, signed trailer
    assert lines[-1].startswith('{"egress_agent_export_trailer":')

    # one byte of one row changed in the database: verify fails at that incident's record
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("UPDATE incidents SET severity = 'low' WHERE id = :i"), {"i": int(ident)})
        seq = c.execute(
            text(
                "SELECT max(seq) FROM incident_chain WHERE incident_uid = "
                "(SELECT uid FROM incidents WHERE id = :i)"
            ),
            {"i": int(ident)},
        ).scalar_one()
    engine.dispose()
    bad = cli("incidents", "verify", config=cfg, check=False)
    assert bad.returncode == 1
    assert f"seq {seq}:" in bad.stderr and "severity" in bad.stderr

    tampered = tmp_path / "export.cef"
    tampered.write_text(tampered.read_text().replace("up.example", "up.exampl3", 1))
    bad_file = cli("incidents", "verify", "--file", str(tampered), config=cfg, check=False)
    assert bad_file.returncode == 1 and "FAILED" in bad_file.stderr
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    res = cli("incidents", "verify", "--file", str(junk), config=cfg, check=False)
    assert res.returncode == 2 and "not an incident export" in res.stderr
