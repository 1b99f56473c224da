"""The environment over the YAML file, as pydantic-settings laid it (see config_env)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_settings
from agent.config_env import env_layer, merge


def test_env_keys_win_key_by_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("files:\n  roots: [/a]\n  exclude: ['*.tmp']\ndatabase:\n  batch_size: 10\n")
    monkeypatch.setenv("egress_agent_files__roots", '["/b", "/c"]')  # any case
    monkeypatch.setenv("EGRESS_AGENT_DATABASE__FLUSH_INTERVAL", "2.5")  # a plain value
    monkeypatch.setenv("EGRESS_AGENT_CONFIG", "/not/a/key")
    s = load_settings(cfg)
    assert [str(p) for p in s.files.roots] == ["/b", "/c"]
    assert s.files.exclude == ["*.tmp"]
    assert s.database.batch_size == 10 and s.database.flush_interval == 2.5


def test_a_whole_section_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_AGENT_NETWORK", '{"interfaces": ["lo"], "max_flows": 64}')
    monkeypatch.setenv("EGRESS_AGENT_NETWORK__IDLE_TIMEOUT", "7")
    s = load_settings(None)
    assert s.network.interfaces == ["lo"] and s.network.max_flows == 64
    assert s.network.idle_timeout == 7.0


def test_optional_plain_value_is_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_AGENT_DATABASE__URL", "sqlite:////tmp/x.db")
    monkeypatch.setenv("EGRESS_AGENT_AGENT__HOSTNAME", "123")  # str | None: stays text
    s = load_settings(None)
    assert s.database.url == "sqlite:////tmp/x.db" and s.agent.hostname == "123"


def test_bad_json_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_AGENT_FILES__EXCLUDE", "[oops")
    with pytest.raises(ConfigError, match="EGRESS_AGENT_FILES__EXCLUDE: not valid JSON"):
        load_settings(None)


def test_layer_and_merge_are_plain_dicts() -> None:
    from agent.config import Settings

    env = {"EGRESS_AGENT_FILES__ROOTS": '["/x"]', "OTHER": "1", "EGRESS_AGENT_FILES__": "x"}
    layer = env_layer(Settings, env, "EGRESS_AGENT_", frozenset())
    assert layer == {"files": {"roots": ["/x"]}}
    assert merge({"files": {"roots": ["/a"], "exclude": []}, "x": 1}, layer) == {
        "files": {"roots": ["/x"], "exclude": []},
        "x": 1,
    }
