"""Opening the store: engine, SQLite pragmas, migrations, and this host's identity."""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from agent import __version__
from agent.errors import AgentError
from agent.store.tables import hosts

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


class StoreError(AgentError):
    """The store cannot be reached or upgraded; the message says which and why."""


def make_engine(url: str, sqlite_busy_ms: int = 30_000, **kwargs: Any) -> Engine:
    """An engine with the settings each backend needs (WAL and a busy timeout on SQLite)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": sqlite_busy_ms / 1000, "check_same_thread": False},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(sqlite_busy_ms)}")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if u.get_backend_name() == "postgresql":
        kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(url, **kwargs)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


_UPGRADE_LOCK = 0x6567_7265_7373  # pg_advisory_xact_lock key ("egress")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` in-process, on this engine's connection."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # a fleet's agents may start together: they migrate one at a time
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot upgrade the database at {engine.url!r}: {getattr(e, 'orig', None) or e}"
        ) from None


_REVISION = re.compile(
    r"""^(down_revision|revision)(?:\s*:[^=]+)?\s*=\s*['"]?([^'"\s]*)['"]?\s*$""", re.M
)


def head_revision(versions: Path = MIGRATIONS_DIR / "versions") -> str | None:
    """The one head of the migration scripts, read from their `revision` lines without
    importing Alembic (a third of the daemon's start-up CPU); None when it is not plain
    (several heads, a script it cannot read): then `upgrade` decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        scripts = sorted(versions.glob("*.py"))
        for script in scripts:
            text = script.read_text("utf-8")
            found = {m.group(1): m.group(2) for m in _REVISION.finditer(text)}
            if "revision" not in found:
                return None
            revisions.add(found["revision"])
            if found.get("down_revision") not in (None, "", "None"):
                parents.add(found["down_revision"])
    except OSError:
        return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and len(revisions) == len(scripts) else None


def schema_is_current(engine: Engine) -> bool:
    """True when the store is at the scripts' head: `run` then skips `upgrade` and its
    Alembic import. Any doubt (no version table, a newer or unknown revision) is False."""
    head = head_revision()
    if head is None:
        return False
    try:
        return current_revision(engine) == head
    except SQLAlchemyError:
        return False


def is_central(url: str) -> bool:
    """A database other than SQLite is a central store, reached through the spool."""
    return make_url(url).get_backend_name() != "sqlite"


def current_revision(engine: Engine) -> str | None:
    if not inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def host_identity(state_dir: Path, host_id: str | None, hostname: str | None) -> tuple[str, str]:
    """A stable host id (kept in state_dir/host_id) and the host name."""
    name = hostname or socket.gethostname()
    if host_id:
        return host_id, name
    path = state_dir / "host_id"
    try:
        existing = path.read_text().strip()
        if existing:
            return existing, name
    except FileNotFoundError:
        pass
    new = uuid.uuid4().hex
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new, name


def register_host(engine: Engine, host_id: str, hostname: str) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(select(hosts.c.id).where(hosts.c.id == host_id)).first()
        if row is None:
            conn.execute(
                insert(hosts).values(
                    id=host_id,
                    hostname=hostname,
                    agent_version=__version__,
                    first_seen=now,
                    last_seen=now,
                )
            )
        else:
            conn.execute(
                update(hosts)
                .where(hosts.c.id == host_id)
                .values(hostname=hostname, agent_version=__version__, last_seen=now)
            )
