"""Core verbs: run, db upgrade, status, events list, config check."""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from agent.cli._common import UserError, open_store, parse_since, print_json, settings_from
from agent.textsafe import shown

if TYPE_CHECKING:
    from pathlib import Path

    from agent.config import NetworkSection, Settings


@click.command("run")
@click.pass_context
def run_cmd(ctx: click.Context) -> None:
    """Run the agent in the foreground (SIGTERM/SIGINT stop, SIGHUP reloads)."""
    # The daemon's imports and config make about 100,000 objects that live as long as the
    # process: the cyclic collector would traverse them again and again while they load
    # (0.03-0.05 s of a start's CPU) and at every full collection after. It is off while
    # they load, and what they made is then frozen (gc.freeze: left out of every later
    # collection); objects made from here on are collected as usual.
    gc.disable()
    try:
        from agent import logs
        from agent.config import ConfigError
        from agent.daemon import run
        from agent.store.db import StoreError

        s = settings_from(ctx)
    finally:
        gc.freeze()
        gc.enable()
    _preflight(s)
    logs.setup(s.agent.log_level, s.agent.log_format)
    try:
        code = run(s, s.source)
    except (StoreError, ConfigError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        if e.errno == 98:  # EADDRINUSE
            raise UserError(f"metrics.listen {s.metrics.listen}: address already in use") from None
        raise
    ctx.exit(code)


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply Alembic migrations to the configured store."""
    from agent.store.db import StoreError, current_revision, make_engine, upgrade

    s = settings_from(ctx)
    engine = make_engine(s.database_url)
    try:
        upgrade(engine, revision)
    except StoreError as e:
        raise UserError(str(e)) from None
    click.echo(f"database at revision {current_revision(engine)}: {engine.url.render_as_string()}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--host", help="Counts of this host only (id or name; fleet store).")
@click.option("--hosts", "per_host", is_flag=True, help="Counts per host (fleet store).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, host: str | None, per_host: bool) -> None:
    """Store reachability, counts, the last event, and the running agent's sensors."""
    from agent.store.db import current_revision, is_central
    from agent.store.queries import counts, host_counts
    from agent.store.spool import read_stats

    s = settings_from(ctx)
    doc: dict[str, object] = {"config": str(s.source) if s.source else None}
    doc["database"] = (s.database.url and _redact(s.database_url)) or s.database_url
    try:
        engine = open_store(s)
        doc["store_reachable"] = True
        doc["schema_revision"] = current_revision(engine)
        doc["counts"] = asdict(counts(engine)) if doc["schema_revision"] else None
        if doc["schema_revision"] and (host or per_host):
            hosts = host_counts(engine, host)
            doc["hosts"] = [asdict(h) for h in hosts]
            if host and len(hosts) == 1:
                doc["counts"] = asdict(counts(engine, hosts[0].host_id))
    except UserError as e:
        doc["store_reachable"] = False
        doc["store_error"] = e.message
    if is_central(s.database_url):
        spool = read_stats(s.database.spool_path or s.state_dir / "spool.db")
        doc["spool"] = {"events": spool.events, "bytes": spool.bytes} if spool else None
    doc["destinations"] = _destinations(s.network)
    doc["signing_key"] = _signing_key(s.state_dir)
    status_file = s.state_dir / "status.json"
    try:
        daemon = json.loads(status_file.read_text())
        daemon["stale"] = time.time() - float(daemon.get("updated_at", 0)) > 30
        doc["daemon"] = daemon
    except (OSError, ValueError):
        doc["daemon"] = None
    if as_json:
        print_json(doc)
    else:
        _print_status(doc)
    if not doc["store_reachable"]:
        ctx.exit(1)
    if host and not doc.get("hosts"):
        raise UserError(f"--host {host}: no such host id or name in the store")


def _signing_key(state_dir: Path) -> dict[str, object] | None:
    """The host key that signs exports and the chain anchor, for an auditor to pin."""
    from agent.incidents.anchor import AnchorError, key_id, load_public, public_text

    try:
        key = load_public(state_dir)
    except AnchorError as e:
        return {"error": str(e)}
    if key is None:
        return None
    return {"public_key": public_text(key), "key_id": key_id(key)}


def _destinations(cfg: NetworkSection) -> dict[str, object]:
    """The country table and known-services list the network sensor would use, with the
    table's date: a stale table silently turns new foreign ranges into `unknown`."""
    from agent.sensors.network import geo, services

    doc: dict[str, object] = {}
    try:
        doc["country_data"] = geo.describe(cfg.country_db).as_dict(cfg.country_data_max_age_days)
    except geo.GeoDataError as e:
        doc["country_data"] = {"error": str(e)}
    try:
        index = services.build(cfg.services_file)
        doc["services"] = {
            "revision": index.revision,
            "domains": index.size,
            "files": list(index.sources),
        }
    except services.ServicesError as e:
        doc["services"] = {"error": str(e)}
    return doc


def _print_destinations(doc: object) -> None:
    if not isinstance(doc, dict):
        return
    geo = doc.get("country_data") or {}
    if geo.get("error"):
        click.echo(f"country:   UNUSABLE: {geo['error']}")
    else:
        age = geo.get("age_days")
        when = "date unknown"
        if age is not None:
            when = f"built {str(geo.get('built'))[:10]} ({age:.0f} days old)"
        click.echo(f"country:   {geo.get('description')} [{geo.get('source')}], {when}")
        if geo.get("stale"):
            click.echo(f"           STALE: {geo['stale']}")
    svc = doc.get("services") or {}
    if svc.get("error"):
        click.echo(f"services:  UNUSABLE: {svc['error']}")
    else:
        click.echo(
            f"services:  revision {svc.get('revision')}, {svc.get('domains')} domains "
            f"({', '.join(map(str, svc.get('files') or []))})"
        )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_hosts(hosts: object) -> None:
    if not isinstance(hosts, list) or not hosts:
        return
    click.echo(
        f"{'host':<24} {'file_events':>12} {'flows':>10} {'decisions':>10} "
        f"{'incidents':>9}  last event"
    )
    for h in hosts:
        name = h["hostname"] or h["host_id"]
        click.echo(
            f"{name:<24} {h['file_events']:>12} {h['flows']:>10} {h['decisions']:>10} "
            f"{h['incidents']:>9}  {h['last_event'] or '-'}"
        )


def _print_status(doc: dict[str, object]) -> None:
    click.echo(f"config:    {doc['config'] or 'built-in defaults'}")
    click.echo(f"store:     {doc['database']}")
    if not doc["store_reachable"]:
        click.echo(f"           UNREACHABLE: {doc.get('store_error')}")
    else:
        revision = doc.get("schema_revision") or "not created (run: egress-agent db upgrade)"
        click.echo(f"schema:    {revision}")
        c = doc.get("counts")
        if isinstance(c, dict):
            click.echo(
                "counts:    "
                + ", ".join(f"{k}={v}" for k, v in c.items() if not k.startswith("last_"))
            )
            click.echo(f"last file event: {c.get('last_file_event') or '-'}")
            click.echo(f"last flow:       {c.get('last_flow') or '-'}")
        _print_hosts(doc.get("hosts"))
    spool = doc.get("spool")
    if isinstance(spool, dict):
        click.echo(f"spool:     {spool['events']} events ({spool['bytes']} bytes) to forward")
    _print_destinations(doc.get("destinations"))
    key = doc.get("signing_key")
    if isinstance(key, dict):
        shown_key = key.get("error") or f"{key['public_key']} (key id {key['key_id']})"
        click.echo(f"signing key: {shown_key}")
    else:
        click.echo("signing key: none yet (made by the daemon or `egress-agent keys show`)")
    d = doc.get("daemon")
    if not isinstance(d, dict):
        click.echo("daemon:    no status file (not running here?)")
        return
    state = "running" if d.get("running") and not d.get("stale") else "not running"
    click.echo(f"daemon:    {state} (pid {d.get('pid')}, metrics {d.get('metrics')})")
    sensors = d.get("sensors") or {}
    if isinstance(sensors, dict):
        for name, st in sensors.items():
            click.echo(f"  sensor {name}: up {json.dumps(st, default=str)}")
    errors = d.get("sensor_errors") or {}
    if isinstance(errors, dict):
        for name, why in errors.items():
            click.echo(f"  sensor {name}: DOWN — {why}")
    fleet = d.get("fleet")
    if isinstance(fleet, dict):
        state = "connected"
        if not fleet.get("connected"):
            state = f"NOT connected ({fleet.get('last_error')})"
        click.echo(f"  central store: {state}; {fleet.get('forwarded')} events forwarded")


@click.group()
def events() -> None:
    """Recorded file events and flows."""


@events.command("list")
@click.option("--since", help="ISO time or a span like 15m, 2h, 7d.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--kind", help="file, flow, or a file action (created, written, moved, deleted).")
@click.option("--host", help="Host id or name (fleet store).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def events_list(
    ctx: click.Context,
    since: str | None,
    limit: int,
    kind: str | None,
    host: str | None,
    as_json: bool,
) -> None:
    """List events, newest first."""
    from agent.store.queries import list_events

    s = settings_from(ctx)
    engine = open_store(s)
    for ev in list_events(engine, since=parse_since(since), limit=limit, kind=kind, host=host):
        if as_json:
            print_json(ev)
        elif ev["kind"] == "file":
            subject = ev["path"] + (f" -> {ev['new_path']}" if ev.get("new_path") else "")
            kinds = ",".join(ev["kinds"]) or "-"
            click.echo(
                shown(f"{ev['time']}  {ev['type']:<8} {ev['channel']:<13} {kinds:<16} {subject}")
            )
        else:
            name = ev.get("name") or ev["dst_ip"]
            click.echo(
                shown(
                    f"{ev['time']}  flow     {ev['dest_class']:<13} {ev['bytes_out']:>12} B  "
                    f"{ev['src']} -> {name}:{ev['dst_port']}"
                    + (f" ({ev['country']})" if ev.get("country") else "")
                    + (f" [{ev['service']}, {ev['service_category']}]" if ev.get("service") else "")
                )
            )


@click.group()
def config() -> None:
    """Configuration."""


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the config and print the effective values as JSON."""
    s = settings_from(ctx)
    _preflight(s)
    click.echo(s.model_dump_json(indent=2))


def _preflight(s: Settings) -> None:
    """What `run` would refuse on this host, as one line and exit 2 (also `config check`)."""
    from agent.preflight import problems

    found = problems(s)
    if found:
        raise UserError("; ".join(found))
