"""`egress-agent replay FILE.pcap`: the network sensor's flow logic on a saved capture."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from agent.cli._common import UserError, existing_path, open_store, print_json, settings_from
from agent.events import Flow


def flow_doc(f: Flow) -> dict[str, Any]:
    doc = asdict(f)
    doc.pop("decisions", None)
    doc["start"] = f.start.isoformat()
    doc["end"] = f.end.isoformat()
    return doc


def _print_table(flows: list[Flow]) -> None:
    click.echo(
        f"{'start':<26} {'proto':<5} {'source':<28} {'destination':<40} "
        f"{'bytes out':>14} {'bytes in':>12} {'class':<9} {'cc':<3} {'close':<7} name"
    )
    for f in flows:
        src = f"{f.src_ip}:{f.src_port}"
        dst = f"{f.dst_ip}:{f.dst_port}"
        name = f"{f.name} ({f.name_source})" if f.name else "-"
        if f.service:
            name += f" [{f.service}, {f.service_category}]"
        click.echo(
            f"{f.start.isoformat(timespec='milliseconds'):<26} {f.protocol:<5} {src:<28} "
            f"{dst:<40} {f.bytes_out:>14} {f.bytes_in:>12} {f.dest_class:<9} "
            f"{f.country or '-':<3} {f.close_reason:<7} {name}"
        )


@click.command("replay")
@click.argument("pcap", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow, one a line.")
@click.option("--store", "to_store", is_flag=True, help="Write the flows to the configured store.")
@click.pass_context
def replay(ctx: click.Context, pcap: str, as_json: bool, to_store: bool) -> None:
    """Run the network sensor's flow logic on a pcap or pcapng file and print the flows."""
    from agent.sensors.network.geo import GeoDataError
    from agent.sensors.network.pcapfile import PcapError
    from agent.sensors.network.replay import replay_pcap
    from agent.sensors.network.services import ServicesError

    s = settings_from(ctx)
    path = existing_path(pcap)
    began = time.perf_counter()
    try:
        result = replay_pcap(Path(path), s.network)
    except (PcapError, GeoDataError, ServicesError) as e:
        raise UserError(str(e)) from None
    elapsed = time.perf_counter() - began
    flows = sorted(result.flows, key=lambda f: (f.start, f.src_port))
    if as_json:
        for f in flows:
            print_json(flow_doc(f))
    else:
        _print_table(flows)
    st = result.stats
    click.echo(
        f"{len(flows)} flows from {st.frames} frames in {elapsed:.2f} s; skipped: "
        f"{result.undecoded} not TCP/UDP or malformed, {st.truncated} truncated, "
        f"{st.bad_blocks} bad blocks, {st.resyncs} resyncs, {st.skipped_bytes} bytes skipped",
        err=True,
    )
    if to_store:
        _store(ctx, flows)


def _store(ctx: click.Context, flows: list[Flow]) -> None:
    from agent.store.db import host_identity, register_host
    from agent.store.writer import write_batch

    s = settings_from(ctx)
    engine = open_store(s, upgrade=True)
    try:
        host_id, hostname = host_identity(s.state_dir, s.agent.host_id, s.agent.hostname)
        register_host(engine, host_id, hostname)
        for i in range(0, len(flows), 1000):
            write_batch(engine, host_id, flows[i : i + 1000])
    except OSError as e:
        raise UserError(f"{s.state_dir}: {e.strerror or e}") from None
    finally:
        engine.dispose()
    click.echo(f"stored {len(flows)} flows in {engine.url.render_as_string()}", err=True)
