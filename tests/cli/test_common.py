"""How the CLI ends on errors: by the error's type, one line each, never by its name."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from sqlalchemy import create_engine, text

from agent.cli._common import run_cli
from agent.errors import AgentError, UserFacingError
from agent.incidents.log import IncidentError


def _group(fail: BaseException | None = None, store: Path | None = None) -> click.Group:
    @click.group()
    def cli() -> None:
        pass

    @cli.command()
    def verb() -> None:
        if store is not None:  # a store that is not there: SQLAlchemy's OperationalError
            with create_engine(f"sqlite:///{store}").connect() as conn:
                conn.execute(text("select 1"))
        if fail is not None:
            raise fail

    return cli


def test_a_user_facing_error_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["egress-agent", "verb"])
    rc = run_cli(
        _group(IncidentError("incident 7 is closed; it can be acknowledged only when open"))
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert err.strip() == "Error: incident 7 is closed; it can be acknowledged only when open"


def test_a_store_that_went_away_is_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["egress-agent", "verb"])
    rc = run_cli(_group(store=tmp_path / "missing-dir" / "store.db"))
    assert rc == 1
    assert capsys.readouterr().err.startswith("error: store unavailable: ")


def test_an_internal_error_is_not_dressed_as_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["egress-agent", "verb"])
    with pytest.raises(AgentError, match="parser refused"):
        run_cli(_group(AgentError("parser refused")))
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        run_cli(_group(RuntimeError("bug")))


def test_the_agents_errors_share_one_root() -> None:
    from agent.config import ConfigError
    from agent.fingerprint import Abandoned, FileChanged
    from agent.incidents.anchor import AnchorError, AnchorUnreadable
    from agent.incidents.export import ExportFileError
    from agent.linear_regex import PatternRefused
    from agent.policy.evalset import ManifestError
    from agent.policy.loader import PolicyError

    for cls in (ConfigError, AnchorError, AnchorUnreadable, ExportFileError, ManifestError):
        assert issubclass(cls, UserFacingError)
    assert issubclass(PolicyError, UserFacingError) and issubclass(IncidentError, UserFacingError)
    assert issubclass(PatternRefused, UserFacingError) and issubclass(PatternRefused, ValueError)
    assert issubclass(FileChanged, AgentError) and not issubclass(FileChanged, UserFacingError)
    assert issubclass(Abandoned, AgentError)


def test_the_sensors_store_and_classifier_errors_share_it_too() -> None:
    from agent.classify.base import LimitExceeded, ParseError
    from agent.sensors import SensorUnavailable
    from agent.sensors.network.destinations import CountryTableError
    from agent.sensors.network.geo import GeoDataError
    from agent.sensors.network.pcapfile import PcapError
    from agent.sensors.network.services import ServicesError
    from agent.store.codec import CodecError
    from agent.store.db import StoreError

    for cls in (PcapError, GeoDataError, CountryTableError, ServicesError):
        assert issubclass(cls, UserFacingError)  # a file the user gave: one line
    for cls in (ParseError, LimitExceeded, SensorUnavailable, CodecError, StoreError):
        assert issubclass(cls, AgentError) and not issubclass(cls, UserFacingError)
    assert issubclass(GeoDataError, ValueError) and issubclass(CodecError, ValueError)
