"""`egress-agent incidents`: list, show, ack, close, verify, export."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import click

from agent.cli._common import UserError, open_store, parse_since, print_json, settings_from
from agent.textsafe import shown

SEVERITY_CHOICE = click.Choice(["info", "low", "medium", "high", "critical"])


@click.group()
def incidents() -> None:
    """Correlated incidents: their evidence, lifecycle, tamper-evident log and exports."""


@incidents.command("list")
@click.option("--since", help="Updated since: ISO time or a span like 15m, 2h, 7d.")
@click.option("--severity", type=SEVERITY_CHOICE, help="Minimum severity.")
@click.option("--status", type=click.Choice(["open", "acknowledged", "closed"]))
@click.option("--rule", help="Rule id.")
@click.option("--host", help="Host id or name (fleet store).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_cmd(
    ctx: click.Context,
    since: str | None,
    severity: str | None,
    status: str | None,
    rule: str | None,
    host: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List incidents, most recently updated first."""
    from agent.incidents.queries import list_incidents

    engine = open_store(settings_from(ctx))
    rows = list_incidents(
        engine,
        since=parse_since(since),
        min_severity=severity,
        status=status,
        rule=rule,
        host=host,
        limit=limit,
    )
    for doc in rows:
        if as_json:
            print_json(doc)
        else:
            click.echo(
                shown(
                    f"{doc['id']:>6}  {doc['updated_at'][:19]}  {doc['severity']:<8} "
                    f"{doc['status']:<12} {doc['kind']:<16} {doc['rule_id']:<28} {doc['title']}"
                )
            )


def _find(engine: Any, ident: str) -> dict[str, Any]:
    from agent.incidents.queries import find_incident

    doc = find_incident(engine, ident)
    if doc is None:
        raise UserError(f"no incident {ident!r} (use the id from `incidents list`, or the uid)")
    return doc


@incidents.command("show")
@click.argument("ident")
@click.option("--json", "as_json", is_flag=True, help="The whole incident document.")
@click.pass_context
def show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """The whole evidence chain of one incident (by id or uid)."""
    from agent.incidents.render import render_incident

    doc = _find(open_store(settings_from(ctx)), ident)
    if as_json:
        print_json(doc)
    else:
        click.echo(render_incident(doc))


def _transition(
    ctx: click.Context, ident: str, status: str, note: str | None, by: str | None
) -> None:
    from agent.incidents.log import IncidentError, set_status

    engine = open_store(settings_from(ctx))
    doc = _find(engine, ident)
    try:
        new = set_status(engine, int(doc["id"]), status, by or _os_user(), note)
    except IncidentError as e:
        raise UserError(str(e)) from None
    click.echo(f"incident {doc['id']} {new['status']} by {new['acted_by']}")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@incidents.command("ack")
@click.argument("ident")
@click.option("--note", help="Why, what was done.")
@click.option("--by", help="Who (default: the OS user).")
@click.pass_context
def ack(ctx: click.Context, ident: str, note: str | None, by: str | None) -> None:
    """Acknowledge an open incident."""
    _transition(ctx, ident, "acknowledged", note, by)


@incidents.command("close")
@click.argument("ident")
@click.option("--note", help="The resolution.")
@click.option("--by", help="Who (default: the OS user).")
@click.pass_context
def close(ctx: click.Context, ident: str, note: str | None, by: str | None) -> None:
    """Close an open or acknowledged incident."""
    _transition(ctx, ident, "closed", note, by)


@incidents.command("verify")
@click.option(
    "--file",
    "file_",
    type=click.Path(exists=True, dir_okay=False),
    help="Verify an export file instead of the store.",
)
@click.option(
    "--witness",
    type=click.Path(exists=True, dir_okay=False),
    help="An earlier export: the store must still hold its records unchanged "
    "(catches a cut-off tail or a re-sealed chain).",
)
@click.option("--host", help="Only this host's chain (store only).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(
    ctx: click.Context, file_: str | None, witness: str | None, host: str | None, as_json: bool
) -> None:
    """Check the hash chain and every incident row against it; exit 1 on the first break."""
    from agent.incidents.chain import check_witness, verify_entries
    from agent.incidents.export import ExportFileError, describe, read_file, verify_file
    from agent.incidents.queries import chain_entries, incident_documents

    if file_:
        try:
            with open(file_, encoding="utf-8", newline="") as fp:
                fmt, report = verify_file(fp)
        except ExportFileError as e:
            raise UserError(f"{file_}: {e}") from None
        except UnicodeDecodeError:
            raise UserError(f"{file_}: not UTF-8 text") from None
        where = f"{file_} ({fmt})"
    else:
        engine = open_store(settings_from(ctx))
        entries = list(chain_entries(engine, host=host))
        report = verify_entries(entries, incident_documents(engine, host))
        where = "store"
        if witness:
            try:
                with open(witness, encoding="utf-8", newline="") as fp:
                    _fmt, wreport = verify_file(fp)
                    fp.seek(0)
                    witnessed = list(read_file(fp))
            except (ExportFileError, UnicodeDecodeError) as e:
                raise UserError(f"{witness}: {e}") from None
            if not wreport.ok:
                raise UserError(f"{witness}: the witness export does not verify itself")
            check_witness(report, {(e.host_id, e.seq): e.hash for e in entries}, witnessed)
            where = f"store against {witness}"
    summary = describe(report)
    if as_json:
        print_json({"source": where, **summary})
    else:
        first = report.first
        if first is None:
            click.echo(
                f"OK: {where}: {report.records} chain records, {report.incidents} incidents, "
                f"{report.hosts} host(s) verified"
            )
            for h, seq in report.anchors.items():
                if seq:
                    click.echo(f"  host {h}: starts at seq {seq}; its prev_hash is taken on trust")
            for h, n in report.unsealed.items():
                if n:
                    click.echo(f"  host {h}: {n} record(s) after the last checkpoint")
        else:
            click.echo(
                f"FAILED: {where}: first broken link at host {first.host_id} seq {first.seq}: "
                f"{first.why} ({len(report.problems)} problem(s) in all)",
                err=True,
            )
    if not report.ok:
        ctx.exit(1)


@incidents.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "ecs", "ocsf", "csv", "cef"]), default="jsonl"
)
@click.option("--since", help="ISO time or a span like 15m, 2h, 7d.")
@click.option("--until", help="ISO time or a span like 15m, 2h, 7d.")
@click.option("--severity", type=SEVERITY_CHOICE, help="Minimum severity.")
@click.option("--host", help="Host id or name (fleet store).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File (default stdout).")
@click.pass_context
def export(
    ctx: click.Context,
    fmt: str,
    since: str | None,
    until: str | None,
    severity: str | None,
    host: str | None,
    output: str | None,
) -> None:
    """Export the incident log (every change, with its chain fields) for SIEM, legal, audit."""
    from agent.incidents.export import select, write
    from agent.incidents.queries import chain_entries

    engine = open_store(settings_from(ctx))
    entries = select(
        chain_entries(engine, host=host), parse_since(since), parse_since(until), severity
    )
    if output:
        path = Path(output)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8", newline="") as out:
            n = write(entries, fmt, out)
        tmp.replace(path)
        click.echo(f"{n} records written to {path}", err=True)
    else:
        sys.stdout.reconfigure(newline="")  # type: ignore[union-attr]
        write(entries, fmt, sys.stdout)
