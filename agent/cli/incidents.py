"""`egress-agent incidents`: list, show, ack, close, verify, export."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import click

from agent.cli import incident_heads
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


def _status_command(name: str, status: str, summary: str, note_help: str) -> click.Command:
    """`incidents <name> IDENT [--note] [--by]`: the lifecycle commands differ only in these."""

    @incidents.command(name, help=summary)
    @click.argument("ident")
    @click.option("--note", help=note_help)
    @click.option("--by", help="Who (default: the OS user).")
    @click.pass_context
    def command(ctx: click.Context, ident: str, note: str | None, by: str | None) -> None:
        _transition(ctx, ident, status, note, by)

    return command


ack = _status_command("ack", "acknowledged", "Acknowledge an open incident.", "Why, what was done.")
close = _status_command(
    "close", "closed", "Close an open or acknowledged incident.", "The resolution."
)


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
@click.option(
    "--public-key",
    help="The signer's public key (ed25519:..., or a file; default: this host's key): "
    "an export's trailer must verify with it; the anchor file too.",
)
@click.option(
    "--unsigned-ok", is_flag=True, help="Accept an export without a signed trailer (older ones)."
)
@click.option(
    "--expect-seq",
    type=click.IntRange(0),
    help="The chain must reach this seq (egress_agent_incident_chain_head_seq, a journal line).",
)
@click.option(
    "--expect-head",
    help="...and seq --expect-seq must have this hash: hex (a prefix will do) or the value of "
    "egress_agent_incident_chain_head_hash_prefix.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(
    ctx: click.Context,
    file_: str | None,
    witness: str | None,
    host: str | None,
    public_key: str | None,
    unsigned_ok: bool,
    expect_seq: int | None,
    expect_head: str | None,
    as_json: bool,
) -> None:
    """Check the hash chain and every incident row against it; exit 1 on the first break.

    The store's chain must also still reach its last anchored head (the state
    directory's signed anchor file, and --expect-seq/--expect-head as read from
    Prometheus or the journal), so a deleted tail or an emptied store fails.
    """
    from agent.incidents.anchor import AnchorError, parse_public
    from agent.incidents.chain import check_witness, verify_entries
    from agent.incidents.export import ExportFileError, describe, read_file, verify_file
    from agent.incidents.queries import chain_entries, incident_documents

    if expect_head is not None and expect_seq is None:
        raise UserError("--expect-head needs --expect-seq (the seq that hash belongs to)")
    if file_ and expect_seq is not None:
        raise UserError("--expect-seq/--expect-head check the store, not an export file")
    if expect_head is not None:
        from agent.incidents.anchor import hash_prefixes

        if not hash_prefixes(expect_head):
            raise UserError(
                "--expect-head: give at least 12 hex digits of the hash, or the decimal value "
                "of egress_agent_incident_chain_head_hash_prefix"
            )
    settings = settings_from(ctx)
    try:
        pinned = parse_public(public_key) if public_key else None
    except AnchorError as e:
        raise UserError(f"--public-key: {e}") from None
    notes: list[str] = []
    if file_:
        key = pinned or incident_heads.local_public_key(settings.state_dir, notes)
        try:
            with open(file_, encoding="utf-8", newline="") as fp:
                fmt, report = verify_file(
                    fp, public_key=key, require_signature=key is not None and not unsigned_ok
                )
        except ExportFileError as e:
            raise UserError(f"{file_}: {e}") from None
        except UnicodeDecodeError:
            raise UserError(f"{file_}: not UTF-8 text") from None
        where = f"{file_} ({fmt})"
    else:
        engine = open_store(settings)
        # before the chain: the daemon may append meanwhile, and the chain only grows
        anchored = incident_heads.anchored_head(settings.state_dir, pinned, notes)
        entries = list(chain_entries(engine, host=host))
        report = verify_entries(entries, incident_documents(engine, host))
        where = "store"
        stored = {(e.host_id, e.seq): e.hash for e in entries}
        local = incident_heads.local_host_id(settings.state_dir)
        incident_heads.check_anchors(report, stored, anchored, local, host, expect_seq, expect_head)
        incident_heads.check_central(report, stored, engine, host, pinned)
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
    report.notes.extend(notes)
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
            if report.signature:
                click.echo(f"  signed trailer: {report.signature}")
            for note in report.notes:
                click.echo(f"  not checked: {note}")
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
@click.option("--unsigned", is_flag=True, help="No signed trailer (the host key is not needed).")
@click.pass_context
def export(
    ctx: click.Context,
    fmt: str,
    since: str | None,
    until: str | None,
    severity: str | None,
    host: str | None,
    output: str | None,
    unsigned: bool,
) -> None:
    """Export the incident log (every change, with its chain fields) for SIEM, legal, audit.

    The file ends with a trailer signed by the host key (`egress-agent keys show`), so
    `incidents verify --file F --public-key K` fails on a file cut short or extended.
    """
    from datetime import UTC, datetime

    from agent.incidents.anchor import AnchorError, load_or_create_key
    from agent.incidents.export import select, write
    from agent.incidents.export.trailer import write_signed
    from agent.incidents.queries import chain_entries

    settings = settings_from(ctx)
    key = None
    if not unsigned:
        try:
            key = load_or_create_key(settings.state_dir)
        except AnchorError as e:
            raise UserError(f"cannot sign the export: {e} (or export --unsigned)") from None
    engine = open_store(settings)
    entries = select(
        chain_entries(engine, host=host), parse_since(since), parse_since(until), severity
    )

    def emit(out: Any) -> int:
        if key is None:
            return write(entries, fmt, out)
        return write_signed(entries, fmt, out, key, datetime.now(UTC))

    if output:
        path = Path(output)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8", newline="") as out:
            n = emit(out)
        tmp.replace(path)
        click.echo(f"{n} records written to {path}", err=True)
    else:
        sys.stdout.reconfigure(newline="")  # type: ignore[union-attr]
        emit(sys.stdout)
