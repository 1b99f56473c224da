"""`run` turns the cyclic collector off while the daemon's modules load: it must come
back on, also when the start fails, and what loaded must be frozen out of collections."""

from __future__ import annotations

import gc
from pathlib import Path

from click.testing import CliRunner

from agent.cli import cli


def test_a_failed_start_leaves_the_collector_on(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("agent: [not, a, mapping]\n")
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        result = CliRunner().invoke(cli, ["--config", str(bad), "run"])
        assert result.exit_code == 2, result.output  # the config error, reported
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen  # what was loaded is frozen, not freed
    finally:
        gc.unfreeze()  # the rest of this test process is collected as before
