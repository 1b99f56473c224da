"""Helpers shared by the CLI verbs: settings from the context, one-line errors, output."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.errors import UserFacingError

if TYPE_CHECKING:  # sqlalchemy, pydantic: imported by the verbs that need them, not at start-up
    from sqlalchemy import Engine

    from agent.config import Settings


class UserError(click.ClickException, UserFacingError):
    """One clear line for the user, exit 2."""

    exit_code = 2


def settings_from(ctx: click.Context) -> Settings:
    from agent.config import ConfigError, load_settings  # pydantic: 0.1 s to import

    obj = ctx.find_root().obj or {}
    try:
        s = load_settings(obj.get("config_path"))
    except ConfigError as e:
        raise UserError(str(e)) from None
    if obj.get("log_format"):
        s.agent.log_format = obj["log_format"]
    if obj.get("log_level"):
        s.agent.log_level = obj["log_level"]
    from agent import logs

    logs.setup(s.agent.log_level if obj.get("log_level") else "warning", s.agent.log_format)
    return s


def open_store(settings: Settings, upgrade: bool = False) -> Engine:
    from sqlalchemy.exc import SQLAlchemyError

    from agent.store.db import StoreError, make_engine
    from agent.store.db import upgrade as do_upgrade

    engine = make_engine(settings.database_url)
    try:
        if upgrade:
            do_upgrade(engine)
        with engine.connect():
            pass
    except (StoreError, SQLAlchemyError) as e:
        raise UserError(f"store {engine.url.render_as_string()}: {_short(e)}") from None
    return engine


def _store_outage(e: BaseException) -> bool:
    """A store that went away under a verb (SQLAlchemy's OperationalError).

    Looked up where sqlalchemy already is: a CLI that never opened a store does not pay
    for importing it, and no instance of its error can exist before it is imported.
    """
    exc = sys.modules.get("sqlalchemy.exc")
    return exc is not None and isinstance(e, exc.OperationalError)


def _short(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    return str(orig or e).strip().splitlines()[0] if str(orig or e).strip() else type(e).__name__


def parse_since(value: str | None) -> datetime | None:
    """ISO time, or a relative span like 15m, 2h, 7d."""
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number = value[:-1]
    if value[-1:] in units and number.isascii() and number.isdigit():  # "²h" is not a span
        try:
            return datetime.now(UTC) - timedelta(seconds=int(number) * units[value[-1]])
        except OverflowError:
            raise UserError(
                f"--since/--until: {value!r} reaches before the year 1; use a shorter span"
            ) from None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(
            f"--since/--until: {value!r} is neither an ISO time nor like 15m, 2h, 7d"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


def run_cli(group: click.Group) -> int:
    try:
        # without standalone mode, click returns ctx.exit(code)'s code instead of raising
        rc = group.main(standalone_mode=False, prog_name="egress-agent")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except BrokenPipeError:
        return 0
    except UserFacingError as e:  # one a verb did not word itself: its message is the line
        UserError(str(e)).show()
        return UserError.exit_code
    except Exception as e:
        if not _store_outage(e):
            raise
        click.echo(f"error: store unavailable: {_short(e)}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return rc if isinstance(rc, int) else 0


def existing_path(p: str) -> Path:
    path = Path(p)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{p}: no such file or directory")
    return path
