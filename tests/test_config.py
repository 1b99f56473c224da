"""Config: defaults, YAML, environment overrides, and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DEFAULT_METRICS_PORT, ConfigError, load_settings
from tests.conftest import cli


def test_defaults_are_safe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("agent.config.DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")
    s = load_settings()
    assert s.metrics.listen == f"127.0.0.1:{DEFAULT_METRICS_PORT}"
    assert s.database_url.startswith("sqlite:///")
    assert s.database_url.endswith("/agent.db")
    assert s.source is None


def test_yaml_then_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "database:\n  url: sqlite:////tmp/x.db\nmetrics:\n  listen: 127.0.0.1:1\n"
        "files:\n  roots: [/a, /b]\n  exclude: ['*.tmp']\nnetwork:\n  interfaces: [eth0]\n"
        "policies:\n  paths: [/etc/p]\n"
    )
    s = load_settings(cfg)
    assert s.database.url == "sqlite:////tmp/x.db"
    assert [str(p) for p in s.files.roots] == ["/a", "/b"]
    assert s.network.interfaces == ["eth0"]
    monkeypatch.setenv("EGRESS_AGENT_DATABASE__URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("EGRESS_AGENT_METRICS__LISTEN", "0.0.0.0:9999")
    monkeypatch.setenv("EGRESS_AGENT_FILES__ROOTS", '["/c"]')
    s = load_settings(cfg)
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert s.metrics.port == 9999 and s.metrics.host == "0.0.0.0"
    assert [str(p) for p in s.files.roots] == ["/c"]
    assert s.files.exclude == ["*.tmp"]  # untouched keys keep the file's values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics:\n  listen: nowhere\n", "key 'metrics.listen'"),
        ("files:\n  rootz: []\n", "key 'files.rootz'"),
        ("database:\n  batch_size: -3\n", "key 'database.batch_size'"),
        ("database:\n  url: '::not a url'\n", "key 'database.url'"),
        ("nonsense: 1\n", "key 'nonsense'"),
        ("- a list\n", "must be a mapping"),
        ("metrics: [unclosed\n", ":2: invalid YAML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert str(cfg) in str(err.value)
    assert expected in str(err.value)


def test_env_error_names_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EGRESS_AGENT_DATABASE__BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match="EGRESS_AGENT_DATABASE__BATCH_SIZE"):
        load_settings(None)


def test_cli_reports_config_error_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("metrics:\n  listen: nowhere\n")
    res = cli("status", config=cfg, check=False)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "metrics.listen" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_missing_config_file(tmp_path: Path) -> None:
    res = cli("status", config=tmp_path / "nope.yaml", check=False)
    assert res.returncode == 2
    assert "config file not found" in res.stderr


def test_every_key_is_documented_in_the_readme() -> None:
    """The README is the config reference users rely on: no key may be missing from it."""
    from agent.config import Settings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [
        f"{section}.{key}"
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
        if f"`{section}.{key}`" not in readme
    ]
    assert not missing, f"keys not documented in README.md: {missing}"
