"""The compiled policy kept between starts (agent/policy/cache.py): a hit is the policy
the packs give, any change to what built it is a miss, and a bad file is never used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.config import PoliciesSection
from agent.policy.cache import CACHE_NAME, CODE, load_cached
from agent.policy.holder import load_configured
from tests.policy.sitepacks import lab_pack


def _site(tmp_path: Path, version: str = "1") -> PoliciesSection:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "lab.yaml").write_text(lab_pack(version, "lab-weights-usb", "model_weights", "w"))
    return PoliciesSection(paths=[site])


def test_a_hit_is_the_policy_the_packs_give(tmp_path: Path) -> None:
    section = _site(tmp_path)
    fresh, issues = load_configured(section)
    assert fresh is not None and issues == []
    first, _ = load_configured(section, cache_dir=tmp_path)  # a miss: kept
    assert (tmp_path / CACHE_NAME).stat().st_mode & 0o777 == 0o600
    hit, issues = load_configured(section, cache_dir=tmp_path)
    assert hit is not None and issues == [] and hit is not first
    assert (hit.version, hit.packs, hit.rules, hit.categories) == (
        fresh.version,
        fresh.packs,
        fresh.rules,
        fresh.categories,
    )
    assert hit.category_info == fresh.category_info and hit.zones == fresh.zones
    assert hit.loaded_at >= first.loaded_at  # type: ignore[union-attr]
    facts = {"event": "file", "channel": "removable", "kinds": ["model_weights"]}
    assert [d.rule_id for d in hit.decide(facts)] == [d.rule_id for d in fresh.decide(facts)]
    assert "lab-weights-usb" in [d.rule_id for d in hit.decide(facts)]


def test_a_changed_pack_a_new_file_or_new_parameters_are_misses(tmp_path: Path) -> None:
    section = _site(tmp_path)
    one, _ = load_configured(section, cache_dir=tmp_path)
    _site(tmp_path, version="2")  # the same pack, edited
    two, _ = load_configured(section, cache_dir=tmp_path)
    assert one is not None and two is not None and two.version != one.version
    assert [p.version for p in two.packs if p.id == "site-lab"] == ["2"]
    extra = tmp_path / "site" / "other.yaml"
    extra.write_text(lab_pack("1", "lab-data-usb", "dataset", "d").replace("site-lab", "site-b"))
    three, _ = load_configured(section, cache_dir=tmp_path)
    assert three is not None and "site-b" in [p.id for p in three.packs]
    tuned = section.model_copy(update={"model_parameter_threshold": 5})
    four, _ = load_configured(tuned, cache_dir=tmp_path)
    assert four is not None and four.version != three.version
    off = section.model_copy(update={"disabled": ["site-b"]})
    five, _ = load_configured(off, cache_dir=tmp_path)
    assert five is not None and not [p for p in five.packs if p.id == "site-b" and p.enabled]


def test_a_broken_pack_is_not_served_from_the_cache(tmp_path: Path) -> None:
    section = _site(tmp_path)
    good, _ = load_configured(section, cache_dir=tmp_path)
    (tmp_path / "site" / "lab.yaml").write_text("pack: [unclosed\n")
    bad, issues = load_configured(section, cache_dir=tmp_path)
    assert good is not None and bad is None and issues


def test_a_garbled_or_foreign_writable_file_is_a_miss(tmp_path: Path) -> None:
    section = _site(tmp_path)
    load_configured(section, cache_dir=tmp_path)
    cache = tmp_path / CACHE_NAME
    data = cache.read_bytes()
    for garbage in (b"", b"\x80\x05garbage", data[: len(data) // 2], os.urandom(4096)):
        cache.write_bytes(garbage)
        policy, issues = load_configured(section, cache_dir=tmp_path)
        assert policy is not None and issues == []  # read from the packs, and kept again
        assert cache.read_bytes() != garbage
    key_and_policy = cache.read_bytes()
    cache.chmod(0o620)  # writable by the group: not trusted, whatever it holds
    assert load_cached(tmp_path, "any key") is None
    from agent.policy.cache import cache_key, code_fingerprint

    shipped = [Path(__file__).resolve().parents[2] / "policies"]
    key = cache_key(shipped, section.paths, [], section.pack_parameters(), code_fingerprint())
    assert load_cached(tmp_path, key) is None
    cache.chmod(0o600)
    assert cache.read_bytes() == key_and_policy and load_cached(tmp_path, key) is not None


PROBE = """
import json, sys
from pathlib import Path
from agent.config import PoliciesSection
from agent.policy.holder import load_configured
section = PoliciesSection(paths=[Path(sys.argv[2])])
policy, issues = load_configured(section, cache_dir=Path(sys.argv[1]))
parser = sorted(m for m in ("agent.policy.build", "agent.policy.loader", "agent.policy.schema")
                if m in sys.modules)
print(json.dumps([policy.version if policy else None, parser]))
"""


def test_a_start_with_a_cached_policy_does_not_import_the_pack_parser(tmp_path: Path) -> None:
    """The point of the cache (0.09 s of a start's CPU): guards against the parser's
    import creeping back into the daemon's path."""
    _site(tmp_path)
    args = [sys.executable, "-c", PROBE, str(tmp_path), str(tmp_path / "site")]
    runs = [json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)]
    runs.append(json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout))
    (version1, parser1), (version2, parser2) = runs
    assert version1 == version2 is not None
    assert parser1 == ["agent.policy.build", "agent.policy.loader", "agent.policy.schema"]
    assert parser2 == []


def test_the_code_key_covers_every_module_that_builds_a_policy() -> None:
    probe = "import sys, agent.policy.build; print(' '.join(m for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    agent_dir = Path(__file__).resolve().parents[2] / "agent"
    covered = {agent_dir / c for c in CODE}
    for name in out.stdout.split():
        if name == "agent" or not name.startswith("agent."):
            continue
        parts = name.split(".")[1:]
        module = agent_dir.joinpath(*parts)
        assert (
            module in covered or module.parent in covered or module.with_suffix(".py") in (covered)
        ), f"{name} builds a policy but is not in agent.policy.cache.CODE"
