"""PolicyHolder: site packs, overrides, disabling, reloads that keep the last good policy,
file watching, the policy_versions table; and PolicyStage on real events."""

from __future__ import annotations

import ipaddress
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from agent.config import PoliciesSection, Settings
from agent.events import (
    Artefact,
    CategoryMatch,
    Channel,
    FileAction,
    FileEvent,
    Flow,
    ProcessInfo,
    Tag,
)
from agent.policy import SHIPPED_DIR, PolicyHolder, PolicyStage, attach_policy
from agent.runtime import NotAttached, Runtime
from agent.store.db import make_engine, upgrade
from agent.store.models import PolicyVersion
from tests.conftest import decision_labels, registry_value
from tests.policy.sitepacks import lab_pack

OVERRIDES = """\
overrides:
  - rule: us-ear-model-weights-copied-out
    status: in_force
    action: alert
    exceptions:
      - name: release_engineering
        users: [svc-release]
"""


def _site(version: str) -> str:
    return lab_pack(version, "site-any-weights-usb", "model_weights", "model weights", OVERRIDES)


def _holder(tmp_path: Path, **kw: object) -> tuple[PolicyHolder, Path]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "lab.yaml").write_text(_site("1"))
    section = PoliciesSection(paths=[site], **kw)  # type: ignore[arg-type]
    return PolicyHolder(lambda: section), site


def _weights_event(channel: Channel, params: int, user: str = "alice") -> FileEvent:
    artefact = Artefact(
        sha256="ab" * 32,
        size=4 * params,
        tags=(
            Tag("model_weights", "safetensors", {"format": "safetensors", "parameters": params}),
        ),
    )
    return FileEvent(
        FileAction.WRITTEN,
        "/media/usb/model.safetensors",
        channel,
        artefact=artefact,
        process=ProcessInfo(pid=1, exe="/usr/bin/cp", user=user),
    )


def test_broken_reload_keeps_last_good_policy(tmp_path: Path) -> None:
    holder, site = _holder(tmp_path)
    assert holder.reload()
    good = holder.current
    cats = holder.categories()
    assert registry_value("egress_agent_policy_last_reload_success") == 1
    failures = registry_value("egress_agent_policy_reloads_total", {"result": "failure"})
    (site / "lab.yaml").write_text(_site("2").replace("severity: low", "severity: urgent"))
    assert not holder.reload()
    assert holder.current is good
    assert holder.categories() is cats
    assert registry_value("egress_agent_policy_last_reload_success") == 0
    assert (
        registry_value("egress_agent_policy_reloads_total", {"result": "failure"}) == failures + 1
    )
    assert any("severity" in str(i) and ":15:" in str(i) for i in holder.errors)
    # fixed again: the new version replaces the old one, categories are a new object
    (site / "lab.yaml").write_text(_site("3"))
    assert holder.reload()
    assert holder.current.version != good.version
    assert registry_value("egress_agent_policy_last_reload_success") == 1


def test_pack_cut_before_its_rules_is_refused(tmp_path: Path) -> None:
    """A half-copied pack must not load as a valid pack that has no rules."""
    holder, site = _holder(tmp_path)
    assert holder.reload()
    good = holder.current
    text = _site("2")
    cut = text[: text.index("\nrules:") if "\nrules:" in text else text.index("\noverrides:")]
    (site / "lab.yaml").write_text(cut + "\n")
    assert not holder.reload()
    assert holder.current is good
    assert any("'rules:'" in str(i) for i in holder.errors), holder.errors
    assert registry_value("egress_agent_policy_last_reload_success") == 0


def test_site_overrides_and_exceptions(tmp_path: Path) -> None:
    holder, _ = _holder(tmp_path, model_parameter_threshold=1000)
    assert holder.reload(), holder.errors
    policy = holder.current
    decisions = {d.rule_id: d for d in policy.decide_file(_weights_event(Channel.REMOVABLE, 5000))}
    assert decisions["us-ear-model-weights-copied-out"].action == "alert"  # override: in force
    assert decisions["site-any-weights-usb"].severity == "low"
    # the exception added by the override
    by_release = policy.decide_file(_weights_event(Channel.REMOVABLE, 5000, user="svc-release"))
    assert "us-ear-model-weights-copied-out" not in {d.rule_id for d in by_release}
    assert policy.decide_file(_weights_event(Channel.LOCAL, 5000)) == []


def test_disable_and_replace_shipped_packs(tmp_path: Path) -> None:
    holder, site = _holder(tmp_path, disabled=["eu-dual-use"])
    # a site pack with a shipped pack's id replaces it
    replacement = (
        (SHIPPED_DIR / "us-ear.yaml")
        .read_text()
        .replace('version: "2025.05.13-1"', 'version: "site-1"')
    )
    (site / "us-ear.yaml").write_text(replacement)
    assert holder.reload(), holder.errors
    packs = {(p.id, p.origin): p for p in holder.current.packs}
    assert not packs[("eu-dual-use", "shipped")].enabled
    assert not packs[("us-ear", "shipped")].enabled
    assert packs[("us-ear", "shipped")].replaced_by == str(site / "us-ear.yaml")
    assert packs[("us-ear", "site")].enabled and packs[("us-ear", "site")].version == "site-1"
    assert not any(r.pack == "eu-dual-use" for r in holder.current.rules)
    assert sum(r.pack == "us-ear" for r in holder.current.rules) == 4


def test_builtin_off_means_only_site_packs(tmp_path: Path) -> None:
    site = tmp_path / "only"
    site.mkdir()
    text = _site("1").split("overrides:")[0]
    (site / "lab.yaml").write_text(text)
    holder = PolicyHolder(lambda: PoliciesSection(paths=[site], builtin=False))
    assert holder.reload(), holder.errors
    assert [r.id for r in holder.current.rules] == ["site-any-weights-usb"]
    assert holder.categories() == ()


def test_file_change_triggers_reload(tmp_path: Path) -> None:
    holder, site = _holder(tmp_path)
    assert holder.reload()
    first = holder.current.version
    holder.start_watching(0.05)
    try:
        (site / "lab.yaml").write_text(_site("changed"))
        deadline = time.monotonic() + 10
        while holder.current.version == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.current.version != first
        # a new file in the site directory is noticed too
        second = holder.current.version
        (site / "zz.yaml").write_text("pack: [")
        deadline = time.monotonic() + 10
        while not holder.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.errors and holder.current.version == second
    finally:
        holder.stop()
    assert holder._thread is None


def _check_versions_recorded(url: str, tmp_path: Path) -> None:
    engine = make_engine(url)
    upgrade(engine)
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "lab.yaml").write_text(_site("1"))
    section = PoliciesSection(paths=[site])
    holder = PolicyHolder(lambda: section, engine)
    assert holder.reload() and holder.reload()  # the same version is recorded once
    v1 = holder.current.version
    (site / "lab.yaml").write_text(_site("2"))
    assert holder.reload()
    with engine.connect() as c:
        rows = c.execute(select(PolicyVersion.version, PolicyVersion.packs)).all()
    assert {r.version for r in rows} == {v1, holder.current.version}
    packs = next(r.packs for r in rows if r.version == v1)
    assert {"id": "site-lab", "version": "1"}.items() <= next(
        p for p in packs if p["id"] == "site-lab"
    ).items()
    engine.dispose()


def test_policy_versions_sqlite(tmp_path: Path) -> None:
    _check_versions_recorded(f"sqlite:///{tmp_path / 'agent.db'}", tmp_path)


def test_policy_versions_postgresql(pg_url: str, tmp_path: Path) -> None:
    _check_versions_recorded(pg_url, tmp_path)


def test_stage_decides_and_counts(tmp_path: Path) -> None:
    holder = PolicyHolder(lambda: PoliciesSection())
    assert holder.reload()
    stage = PolicyStage(holder)
    artefact = Artefact(
        sha256="cd" * 32,
        size=30_000,
        tags=(Tag("document", "docx", {"format": "docx", "chars": 900}),),
        matches=(
            CategoryMatch("CN-CAT-RE-REFINING", 7, "cn-export-catalogue"),
            CategoryMatch("CN-CAT-RE-CONTEXT", 5, "cn-export-catalogue"),
        ),
    )
    labels = decision_labels("cn-export-catalogue", "cn-cat-prohibited-removable", "critical", "")
    before = registry_value("egress_agent_decisions_total", labels)
    ev = FileEvent(FileAction.CREATED, "/media/usb/稀土.docx", Channel.REMOVABLE, artefact=artefact)
    out = stage(ev)
    assert isinstance(out, FileEvent) and out.uid == ev.uid
    (d,) = out.decisions
    assert d.rule_id == "cn-cat-prohibited-removable" and d.categories == ("CN-CAT-RE-REFINING",)
    assert d.policy_version == holder.current.version
    assert "053302J" in d.reason and "稀土的提炼、加工、利用技术" in d.reason
    assert registry_value("egress_agent_decisions_total", labels) == before + 1
    # no artefact, local channel: nothing to decide, the same object comes back
    plain = FileEvent(FileAction.CREATED, "/home/a/x.txt", Channel.LOCAL)
    assert stage(plain) is plain
    now = datetime.now(UTC)
    flow = Flow(
        "tcp",
        "10.0.0.5",
        40000,
        "203.0.113.7",
        443,
        now,
        now,
        bytes_out=3 << 30,
        dest_class="foreign",
        country="US",
    )
    (fd,) = stage(flow).decisions
    assert fd.rule_id == "cn-bulk-upload-foreign" and fd.action == "record"
    flow_labels = decision_labels(
        "cn-cross-border-data", "cn-bulk-upload-foreign", "medium", "foreign"
    )
    assert registry_value("egress_agent_decisions_total", flow_labels) >= 1


def test_attach_policy_gives_the_runtime_its_holder_and_hooks(tmp_path: Path) -> None:
    """The daemon's wiring: before attach_policy the runtime refuses to hand out a policy;
    after it, the holder is the runtime's, reports in status, reloads and stops by hooks."""
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(engine)
    rt = Runtime(Settings(agent={"state_dir": str(tmp_path)}), engine, "host-1", "host")
    with pytest.raises(NotAttached, match="attach_policy"):
        rt.policy()
    holder = attach_policy(rt)
    try:
        assert rt.policy() is holder
        assert rt.status()["policy"]["version"] == holder.current.version
        before = holder.current
        rt.run_reload_hooks()
        assert holder.current is not before  # read again (same packs, a new load)
        assert holder._thread is not None  # watching the pack files
    finally:
        rt.run_stop_hooks()
    assert holder._thread is None
    engine.dispose()


def test_shipped_dir_copy_is_watched(tmp_path: Path) -> None:
    """A holder over a copy of the shipped packs notices edits to them as well."""
    shipped = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR, shipped)
    holder = PolicyHolder(lambda: PoliciesSection(), shipped_dir=shipped)
    assert holder.reload()
    snap = holder._take_snapshot()
    (shipped / "us-ear.yaml").write_text((shipped / "us-ear.yaml").read_text() + "\n# edit\n")
    assert holder._take_snapshot() != snap


_details = st.dictionaries(
    st.sampled_from(["parameters", "rows", "format", "columns", "members", "chars", "x"]),
    st.one_of(
        st.none(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=6),
        st.lists(st.one_of(st.text(max_size=3), st.integers()), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.builds(
            Tag,
            st.sampled_from(["model_weights", "dataset", "document", "archive", "weird"]),
            st.text(max_size=5),
            _details,
        ),
        max_size=4,
    ),
    st.lists(
        st.builds(
            CategoryMatch,
            st.sampled_from(
                ["CN-CAT-RE-REFINING", "CN-CAT-RE-CONTEXT", "PI-PRC-RESIDENT-ID", "??"]
            ),
            st.integers(-5, 50_000),
        ),
        max_size=4,
    ),
    st.sampled_from(list(Channel)),
    st.sampled_from(list(FileAction)),
)
def test_stage_survives_any_artefact(
    tags: list[Tag], matches: list[CategoryMatch], channel: Channel, action: FileAction
) -> None:
    stage = _STAGE
    artefact = Artefact(sha256=None, size=1, tags=tuple(tags), matches=tuple(matches))
    out = stage(FileEvent(action, "/x", channel, artefact=artefact))
    assert isinstance(out.decisions, tuple)
    policy = _STAGE.holder.current
    now = datetime.now(UTC)
    flow = Flow("tcp", "10.0.0.1", 1, "::1", 443, now, now, bytes_out=5, dest_class="foreign")
    assert isinstance(policy.decide_transfer(artefact, flow), list)


_HOLDER = PolicyHolder(lambda: PoliciesSection())
_HOLDER.reload()
_STAGE = PolicyStage(_HOLDER)


def test_exception_destinations() -> None:
    from agent.policy.rule_exceptions import RuleException

    ex = RuleException(
        "approved",
        networks=(ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("2001:db8::/32")),
        hosts=("*.release.example.cn",),
    )
    assert ex.matches({"dst_ip": "10.20.3.4"})
    assert ex.matches({"dst_ip": "2001:db8::5"})
    assert ex.matches({"dst_ip": "203.0.113.1", "name": "Models.Release.Example.CN."})
    assert ex.matches({"sni": "a.release.example.cn"})
    assert not ex.matches({"dst_ip": "203.0.113.1", "name": "release.example.cn.evil.com"})
    assert not ex.matches({})
    both = RuleException("svc", users=("svc-release",), processes=("/opt/release/*",))
    assert both.matches({"user": "svc-release", "process.exe": "/opt/release/bin/push"})
    assert not both.matches({"user": "svc-release", "process.exe": "/usr/bin/curl"})


def test_a_replaced_site_directory_is_noticed(tmp_path: Path) -> None:
    """The watch is on each path's parent too: a pack directory swapped for a new one (a
    deployment tool's rename) is seen at once, without a poll."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "lab.yaml").write_text(_site("1").split("overrides:")[0])
    holder = PolicyHolder(lambda: PoliciesSection(paths=[site], builtin=False))
    assert holder.reload(), holder.errors
    first = holder.current.version
    holder.start_watching(3600)  # a poll this slow would never see it within the test
    try:
        new = tmp_path / "site.new"
        new.mkdir()
        (new / "lab.yaml").write_text(_site("2").split("overrides:")[0])
        site.rename(tmp_path / "site.old")
        new.rename(site)
        deadline = time.monotonic() + 20
        while holder.current.version == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.current.version != first
        assert [p.version for p in holder.current.packs if p.enabled] == ["2"]
    finally:
        holder.stop()
