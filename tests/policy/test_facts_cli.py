"""Facts built from events, the empty policy at a broken start, and `policy list`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from prometheus_client import REGISTRY

from agent.config import PoliciesSection
from agent.events import (
    Artefact,
    CategoryMatch,
    Channel,
    FileAction,
    FileEvent,
    ProcessInfo,
    Tag,
)
from agent.policy import EMPTY_POLICY, PolicyHolder
from agent.policy.facts import file_facts
from tests.conftest import cli, write_config


def test_file_facts() -> None:
    when = datetime(2026, 11, 28, 23, 30).astimezone()  # a Saturday, local time
    artefact = Artefact(
        sha256=None,
        size=10,
        tags=(
            Tag("archive", "zip", {"format": "zip", "members": 3}),
            Tag("model_weights", "a", {"parameters": 5, "format": "gguf"}),
            Tag("model_weights", "b", {"parameters": 9, "dtype": "bf16"}),
            Tag("dataset", "csv", {"columns": ["id", "name"], "rows": 4}),
        ),
        matches=(CategoryMatch("A", 1), CategoryMatch("B", 3), CategoryMatch("A", 1)),
    )
    event = FileEvent(
        FileAction.MOVED,
        "/home/u/a.zip",
        Channel.CLOUD_SYNC,
        dest_path="/home/u/Nutstore/a.zip",
        process=ProcessInfo(exe="/usr/bin/rsync", user="alice"),
        artefact=artefact,
        time=when,
    )
    f = file_facts(event, {"A": 2, "B": 4})
    assert f["event"] == "file" and f["action"] == "moved" and f["channel"] == "cloud_sync"
    assert f["path"] == "/home/u/Nutstore/a.zip"
    assert f["hour"] == 23 and f["weekday"] == "sat"
    assert f["process.name"] == "rsync" and f["user"] == "alice"
    assert f["kinds"] == {"archive", "model_weights", "dataset"}
    assert f["model_weights.parameters"] == 9  # the largest of several tags of one kind
    assert f["model_weights.format"] == "gguf" and f["model_weights.dtype"] == "bf16"
    assert f["dataset.columns"] == {"id", "name"}
    assert f["matches.A"] == 2 and f["matches.B"] == 3
    assert f["categories"] == {"A"}  # B is below its min_count of 4


def test_broken_packs_at_start_leave_the_empty_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pack: {id: x}\n")
    holder = PolicyHolder(lambda: PoliciesSection(paths=[bad]))
    assert not holder.reload()
    assert holder.current is EMPTY_POLICY and holder.categories() == ()
    assert REGISTRY.get_sample_value("egress_agent_policy_last_reload_success") == 0
    assert holder.status()["policy"]["errors"][0].startswith(f"{bad}:1: ")


def test_policy_list(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    text = (Path(__file__).parents[2] / "policies" / "us-ear.yaml").read_text()
    (site / "us-ear.yaml").write_text(text.replace('version: "2025.05.13-1"', 'version: "s1"'))
    cfg = write_config(
        tmp_path / "agent.yaml",
        {"policies": {"paths": [str(site)], "disabled": ["eu-dual-use"]}},
    )
    rows = [json.loads(x) for x in cli("policy", "list", "--json", config=cfg).stdout.splitlines()]
    state = {(r["id"], r["origin"]): r["state"] for r in rows}
    assert state[("eu-dual-use", "shipped")] == "disabled"
    assert state[("us-ear", "shipped")] == "replaced"
    assert state[("us-ear", "site")] == "enabled"
    assert state[("cn-export-catalogue", "shipped")] == "enabled"
    cat = next(r for r in rows if r["id"] == "cn-export-catalogue")
    assert cat["rules"] == 12 and cat["categories"] == 22 and len(cat["sha256"]) == 64
    text_out = cli("policy", "list", config=cfg).stdout
    assert "disabled" in text_out and "replaced" in text_out and "policy version" in text_out
    # a broken configured pack: list says so and exits 2 with every problem
    (site / "bad.yaml").write_text("pack: [\n")
    res = cli("policy", "list", config=cfg, check=False)
    assert res.returncode == 2 and f"{site / 'bad.yaml'}:" in res.stderr


def test_policy_list_rules_with_status(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.yaml", {"agent": {"state_dir": str(tmp_path / "s")}})
    out = cli("policy", "list", "--rules", "--json", "--on", "2026-06-01", config=cfg).stdout
    rules = {r["id"]: r for r in map(json.loads, out.splitlines())}
    dual = rules["cn-dual-use-technology-leaving"]
    assert not dual["in_force"] and dual["action"] == "record"
    assert dual["state"] == "suspended"
    assert dual["why_not"].startswith("suspended 2025-11-08 to 2026-11-10 inclusive")
    after = cli("policy", "list", "--rules", "--json", "--on", "2026-11-20", config=cfg).stdout
    rules_after = {r["id"]: r for r in map(json.loads, after.splitlines())}
    assert rules_after["cn-dual-use-technology-leaving"]["in_force"]
    ear = rules_after["us-ear-model-weights-copied-out"]
    assert ear["state"] == "not_enforced" and ear["action"] == "record"
    assert ear["why_not"].startswith("not enforced since 2025-05-13") and ear["items"] == ["4E091"]
    assert all(r["tests"] >= 2 for r in rules_after.values())
