"""End to end: a model checkpoint leaves the host, and the agent tells one story.

The real agent (`egress-agent run`, real file sensor with inotify + fanotify, classifier,
policy packs, network sensor with sock_diag) runs inside the sender namespace of a
two-namespace rig. A safetensors checkpoint is copied, renamed, packed into a tar.gz
and uploaded over TLS (with SNI) to the peer, whose address is configured as foreign
(country from an offline country table). The agent must record ONE exfiltration
incident naming the original file, the archive, the flow's bytes and SNI, the process
and the EAR rule; the same checkpoint copied onto a "removable" tmpfs makes a second
incident. Then `incidents verify` passes, exports verify, and one byte changed in the
database makes verify fail at that incident's chain record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli, is_root, store_rows, wait_until

for _component in (
    "agent.sensors.files.sensor",  # issue 3
    "agent.classify.stage",  # issue 4
    "agent.sensors.network.sensor",  # issue 5
    "agent.policy.stage",  # issue 6
):
    pytest.importorskip(_component, reason=f"{_component} is not in this checkout")

from tests.incidents.helpers import SITE_PACK, safetensors  # noqa: E402
from tests.sensors.network.peers import Sink, self_signed  # noqa: E402
from tests.sensors.network.rig import Rig  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SNI = "upload.example.org"


UPLOADER = textwrap.dedent(
    """
    import socket, ssl, sys
    path, host, port, sni = sys.argv[1:5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with open(path, "rb") as f:
        data = f.read()
    raw = socket.create_connection((host, int(port)))
    with ctx.wrap_socket(raw, server_hostname=sni) as s:
        s.sendall(data)
        assert s.recv(1) == b"k"
    """
)


@pytest.mark.skipif(not is_root(), reason="needs root: namespaces, fanotify, tmpfs mounts")
def test_checkpoint_upload_is_one_incident(rig: Rig, tmp_path: Path, sender_agent: Any) -> None:
    work = tmp_path / "work"
    (work / "ckpt").mkdir(parents=True)
    (work / "tmp").mkdir()
    usb = tmp_path / "usb"
    usb.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "e2e-usb", str(usb)], check=True)
    agent = None
    try:
        state = tmp_path / "state"
        site = tmp_path / "site"
        site.mkdir()
        (site / "lab.yaml").write_text(SITE_PACK)
        agent = sender_agent(
            "lab-ws-e2e",
            sensors=("files", "network"),
            files={
                "roots": [str(work), str(usb)],
                "removable": [str(usb)],
                "follow_mounts": False,
                "fanotify": "on",
            },
            policies={"paths": [str(site)], "model_parameter_threshold": 1000},
            incidents={"correlation_window": 300, "checkpoint_every": 50},
        )
        cfg = agent.config_path
        diag, status = agent.stderr, agent.status

        up = wait_until(
            lambda: {"files", "network"} <= set(status().get("sensors", {})), "sensors", why=diag
        )
        assert up and not status().get("sensor_errors"), status()

        # the peer: a TLS sink that acknowledges once the whole archive arrived
        db = state / "agent.db"
        ckpt = safetensors(work / "ckpt" / "model.safetensors")
        wait_until(
            lambda: store_rows(
                db,
                "SELECT 1 FROM file_events WHERE path = ? AND kinds LIKE ?",
                str(ckpt),
                "%model_weights%",
            ),
            "the checkpoint classified",
            why=diag,
        )
        subprocess.run(["cp", str(ckpt), str(work / "tmp" / "model-copy.safetensors")], check=True)
        os.rename(work / "tmp" / "model-copy.safetensors", work / "tmp" / "notes.bin")
        archive = work / "tmp" / "bundle.tgz"
        subprocess.run(
            ["tar", "czf", str(archive), "-C", str(work / "tmp"), "notes.bin"], check=True
        )
        wait_until(
            lambda: store_rows(
                db,
                "SELECT 1 FROM file_events WHERE path = ? AND sha256 IS NOT NULL AND kinds LIKE ?",
                str(archive),
                "%archive%",
            ),
            "the archive classified",
            why=diag,
        )
        # the archive became a path of interest: its opens are reported with the process
        wait_until(
            lambda: status().get("sensors", {}).get("files", {}).get("interesting_paths", 0) >= 2,
            "paths of interest",
            why=lambda: json.dumps(status(), indent=1),
        )

        sink = Sink(tls=self_signed(tmp_path), ack_after=archive.stat().st_size)
        rig.run_in(rig.peer_ns, sink.serve)
        assert sink.ready.wait(5)
        script = tmp_path / "uploader.py"
        script.write_text(UPLOADER)
        up_proc = rig.exec(
            rig.sender_ns,
            sys.executable,
            str(script),
            str(archive),
            rig.peer_v4,
            str(sink.port),
            SNI,
        )
        assert up_proc.wait(60) == 0
        uploader_pid = up_proc.pid
        sink.stop()

        def incidents() -> list[dict[str, Any]]:
            rows = store_rows(
                db,
                "SELECT kind, rule_id, pack, severity, evidence, bytes_out, title "
                "FROM incidents ORDER BY id",
            )
            return [
                {
                    "kind": k,
                    "rule_id": r,
                    "pack": p,
                    "severity": s,
                    "evidence": json.loads(e),
                    "bytes_out": b,
                    "title": t,
                }
                for k, r, p, s, e, b, t in rows
            ]

        exfil = wait_until(
            lambda: [i for i in incidents() if i["kind"] == "exfiltration"],
            "the exfiltration incident",
            45,
            why=lambda: diag() + json.dumps(store_rows(db, "SELECT * FROM flows"), default=str),
        )
        time.sleep(2)  # anything else it would (wrongly) open comes now
        exfil = [i for i in incidents() if i["kind"] == "exfiltration"]
        assert len(exfil) == 1, exfil
        inc = exfil[0]
        ev = inc["evidence"]
        paths = {f["path"] for f in ev["files"]} | {f.get("dest_path") for f in ev["files"]}
        assert str(ckpt) in paths, paths  # the original
        assert str(archive) in paths, paths  # the archive
        assert str(work / "tmp" / "notes.bin") in paths  # the renamed copy
        (flow,) = ev["flows"]
        assert flow["sni"] == SNI and flow["dst_ip"] == rig.peer_v4 and flow["country"] == "US"
        assert flow["dest_class"] == "foreign"
        size = archive.stat().st_size
        assert size < flow["bytes_out"] < size * 1.05  # TLS records around the archive
        assert inc["bytes_out"] == flow["bytes_out"]
        assert flow["process"]["pid"] == uploader_pid
        assert any(p["pid"] == uploader_pid for p in ev["processes"])
        assert inc["rule_id"] == "us-ear-model-weights-abroad" and inc["pack"] == "us-ear"
        assert inc["severity"] == "high"
        assert ev["correlation"]["method"] == "same_process"
        sha = store_rows(db, "SELECT sha256 FROM file_events WHERE path = ?", str(ckpt))[0][0]
        assert sha in ev["roots"]
        assert {
            "parent": sha,
            "child": store_rows(db, "SELECT sha256 FROM file_events WHERE path = ?", str(archive))[
                0
            ][0],
        } in ev["lineage"]

        # the same checkpoint onto the removable medium: an incident of its own
        subprocess.run(["cp", str(ckpt), str(usb / "model.safetensors")], check=True)
        usb_inc = wait_until(
            lambda: [i for i in incidents() if i["kind"] == "removable_copy"],
            "the removable-copy incident",
            why=diag,
        )
        assert len(usb_inc) == 1
        assert usb_inc[0]["rule_id"] == "us-ear-model-weights-copied-out"
        assert any(
            f["path"] == str(usb / "model.safetensors") for f in usb_inc[0]["evidence"]["files"]
        )
        assert len(incidents()) == 2, [(i["kind"], i["rule_id"], i["title"]) for i in incidents()]

        shown = cli("incidents", "show", "1", config=cfg).stdout
        assert SNI in shown and str(ckpt) in shown and "us-ear-model-weights-abroad" in shown

        assert agent.stop(timeout=60) == 0, diag()
        agent = None

        # the log verifies; so does every export; one changed byte is found at its record
        res = cli("incidents", "verify", config=cfg)
        assert res.stdout.startswith("OK:"), res.stdout
        types = [
            t for (t,) in store_rows(db, "SELECT record_type FROM incident_chain ORDER BY seq")
        ]
        assert types[0] == "genesis" and types[-1] == "checkpoint"
        for fmt in ("jsonl", "ecs", "ocsf", "csv", "cef"):
            out = tmp_path / f"incidents.{fmt}"
            cli("incidents", "export", "--format", fmt, "--output", str(out), config=cfg)
            assert json.loads(
                cli("incidents", "verify", "--file", str(out), "--json", config=cfg).stdout
            )["ok"], fmt
        ecs = [json.loads(x) for x in (tmp_path / "incidents.ecs").read_text().splitlines()]
        assert "egress_agent_export_trailer" in ecs[-1]  # the signed trailer ends the file
        opened = [d for d in ecs[:-1] if d["event"].get("action") == "incident-opened"]
        exfil_doc = next(d for d in opened if d["event"]["dataset"] == "egress.exfiltration")
        assert exfil_doc["tls"]["client"]["server_name"] == SNI
        assert exfil_doc["destination"]["geo"]["country_iso_code"] == "US"
        assert exfil_doc["file"]["path"] == str(archive)
        assert exfil_doc["rule"]["id"] == "us-ear-model-weights-abroad"

        with sqlite3.connect(db) as c:
            c.execute("UPDATE incidents SET bytes_out = bytes_out + 1 WHERE kind = 'exfiltration'")
            (seq,) = c.execute(
                "SELECT max(seq) FROM incident_chain WHERE incident_uid = "
                "(SELECT uid FROM incidents WHERE kind = 'exfiltration')"
            ).fetchone()
        bad = cli("incidents", "verify", config=cfg, check=False)
        assert bad.returncode == 1 and f"seq {seq}:" in bad.stderr, bad.stderr
    finally:
        if agent is not None:  # stopped before the namespaces and the mount go
            agent.stop_or_kill()
        subprocess.run(["umount", "-l", str(usb)], capture_output=True)
