"""Errors a user can fix: one line on stderr and exit 2, never a traceback (issue 17, class 5).

Each case is what an operator can get wrong — in the config file, in the environment, on
the command line — and `config check` must refuse whatever `run` would refuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli

STATE_OK = "agent:\n  state_dir: {tmp}/state\n"

FILE_CASES = {
    "non-UTF-8 config": (b"\xff\xfe: x\n", "not UTF-8"),
    "10,000-deep config": (b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nested too deeply"),
    "non-string section": (b"1: x\n", "section names must be text"),
    "section not a mapping": (b"agent: [1, 2]\n", "agent"),
    "state dir that cannot be created": (
        b"agent:\n  state_dir: /proc/no-such-dir/state\n",
        "agent.state_dir",
    ),
    "state dir under a file": (b"agent:\n  state_dir: /etc/hostname/state\n", "not a directory"),
    "unknown database dialect": (b"database:\n  url: 'foo://x/y'\n", "unknown database dialect"),
    "listen address the host does not have": (
        b"metrics:\n  listen: '192.0.2.77:9813'\n",
        "metrics.listen",
    ),
}


def _one_line_exit_2(res: object, needle: str) -> None:
    stderr = res.stderr  # type: ignore[attr-defined]
    assert res.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert needle in lines[0], stderr


@pytest.mark.parametrize("case", sorted(FILE_CASES))
@pytest.mark.parametrize("verb", [("config", "check"), ("run",)])
def test_bad_config_is_one_line_exit_2(tmp_path: Path, case: str, verb: tuple[str, ...]) -> None:
    text, needle = FILE_CASES[case]
    cfg = tmp_path / "agent.yaml"
    if b"state_dir" not in text:
        text = STATE_OK.format(tmp=tmp_path).encode() + text
    cfg.write_bytes(text)
    res = cli(*verb, config=cfg, check=False, timeout=60)
    _one_line_exit_2(res, needle)


ENV_CASES = {
    "bad JSON": ("EGRESS_AGENT_FILES__ROOTS", "[oops", "not valid JSON"),
    "deeply nested JSON": (
        "EGRESS_AGENT_FILES__ROOTS",
        "[" * 5000 + "]" * 5000,
        "nested too deeply",
    ),
    "misspelled section": ("EGRESS_AGENT_FILE__ROOTS", '["/tmp"]', "unknown section 'file'"),
    "misspelled key": ("EGRESS_AGENT_FILES__ROOT", '["/tmp"]', "unknown key 'root'"),
}


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_bad_environment_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    name, value, needle = ENV_CASES[case]
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(STATE_OK.format(tmp=tmp_path))
    res = cli("config", "check", config=cfg, check=False, env={name: value})
    _one_line_exit_2(res, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("events", "list", "--since", "99999999999d"), "--since"),
        (("events", "list", "--since", "²h"), "--since"),
        (("incidents", "list", "--since", "9" * 40 + "w"), "--since"),
        (("incidents", "show", "9" * 30), "no incident"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(STATE_OK.format(tmp=tmp_path))
    cli("db", "upgrade", config=cfg)
    res = cli(*args, config=cfg, check=False)
    _one_line_exit_2(res, needle)
