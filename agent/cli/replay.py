"""`egress-agent replay FILE.pcap`: the network sensor's flow logic on a saved capture."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import click

from agent.cli._common import UserError, existing_path, open_store, print_json, settings_from
from agent.events import Flow

_DOC_FIELDS = tuple(f.name for f in fields(Flow) if f.name != "decisions")


def flow_doc(f: Flow) -> dict[str, Any]:
    """The flow as a JSON document (what `asdict` gave, at a fifth of its cost: asdict
    deep-copies every value, which was a third of a large replay's time)."""
    doc = {k: getattr(f, k) for k in _DOC_FIELDS}
    doc["start"] = f.start.isoformat()
    doc["end"] = f.end.isoformat()
    if f.process is not None:
        doc["process"] = asdict(f.process)
    return doc


TABLE_HEADER = (
    f"{'start':<26} {'proto':<5} {'source':<28} {'destination':<40} "
    f"{'bytes out':>14} {'bytes in':>12} {'class':<9} {'cc':<3} {'close':<7} name"
)
SORTED_UP_TO = 10_000  # flows printed in start order; past it, in the order they end
STORE_BATCH = 1000


def _row(f: Flow) -> str:
    src = f"{f.src_ip}:{f.src_port}"
    dst = f"{f.dst_ip}:{f.dst_port}"
    name = f"{f.name} ({f.name_source})" if f.name else "-"
    if f.service:
        name += f" [{f.service}, {f.service_category}]"
    return (
        f"{f.start.isoformat(timespec='milliseconds'):<26} {f.protocol:<5} {src:<28} "
        f"{dst:<40} {f.bytes_out:>14} {f.bytes_in:>12} {f.dest_class:<9} "
        f"{f.country or '-':<3} {f.close_reason:<7} {name}"
    )


class FlowSink:
    """Where replayed flows go as they end: printed (table or JSON lines) and stored.

    Memory stays bounded by the flow table, not by the capture: up to SORTED_UP_TO flows
    are held and printed in start order (what a person reading a small capture wants);
    a capture with more streams them in the order they end, and `--store` writes every
    STORE_BATCH flows as they come. (1 M flows held for a sort took most of 690 MB.)
    """

    def __init__(self, as_json: bool, store: Callable[[list[Flow]], None] | None) -> None:
        self.as_json = as_json
        self.store = store
        self.count = 0
        self._held: list[Flow] | None = []
        self._unstored: list[Flow] = []
        self._header_done = False

    def __call__(self, f: Flow) -> None:
        self.count += 1
        if self.store is not None:
            self._unstored.append(f)
            if len(self._unstored) >= STORE_BATCH:
                self.store(self._unstored)
                self._unstored = []
        if self._held is None:
            self._print(f)
            return
        self._held.append(f)
        if len(self._held) > SORTED_UP_TO:
            self._print_held()

    def close(self) -> None:
        if self._held is not None:
            self._print_held()
        if not self.as_json and not self._header_done:
            click.echo(TABLE_HEADER)  # an empty capture still shows what the columns are
            self._header_done = True
        if self.store is not None and self._unstored:
            self.store(self._unstored)
            self._unstored = []

    def _print_held(self) -> None:
        held, self._held = self._held or [], None
        for f in sorted(held, key=lambda f: (f.start, f.src_port)):
            self._print(f)

    def _print(self, f: Flow) -> None:
        if self.as_json:
            print_json(flow_doc(f))
            return
        if not self._header_done:
            click.echo(TABLE_HEADER)
            self._header_done = True
        click.echo(_row(f))


@click.command("replay")
@click.argument("pcap", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow, one a line.")
@click.option("--store", "to_store", is_flag=True, help="Write the flows to the configured store.")
@click.pass_context
def replay(ctx: click.Context, pcap: str, as_json: bool, to_store: bool) -> None:
    """Run the network sensor's flow logic on a saved pcap or pcapng file and print the
    flows (in start order; past 10,000 flows, in the order they end).

    Only a regular file is read: a FIFO or a device is refused with exit status 2 (save
    the stream to a file first)."""
    from agent.sensors.network.geo import GeoDataError
    from agent.sensors.network.pcapfile import PcapError
    from agent.sensors.network.replay import replay_pcap
    from agent.sensors.network.services import ServicesError

    s = settings_from(ctx)
    path = existing_path(pcap)
    with contextlib.ExitStack() as stack:
        store = _open_store(ctx, stack) if to_store else None
        sink = FlowSink(as_json, store)
        began = time.perf_counter()
        try:
            result = replay_pcap(Path(path), s.network, emit=sink)
        except (PcapError, GeoDataError, ServicesError) as e:
            raise UserError(str(e)) from None
        sink.close()
        elapsed = time.perf_counter() - began
    st = result.stats
    click.echo(
        f"{sink.count} flows from {st.frames} frames in {elapsed:.2f} s"
        + (f" ({result.evicted} evicted: network.max_flows)" if result.evicted else "")
        + "; skipped: "
        f"{result.undecoded} not TCP/UDP or malformed, {st.truncated} truncated, "
        f"{st.bad_blocks} bad blocks, {st.resyncs} resyncs, {st.skipped_bytes} bytes skipped",
        err=True,
    )
    if to_store:
        s_url = settings_from(ctx).database_url
        click.echo(f"stored {sink.count} flows in {_safe_url(s_url)}", err=True)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string()


def _open_store(ctx: click.Context, stack: contextlib.ExitStack) -> Callable[[list[Flow]], None]:
    """A function that writes one batch of flows to the configured store."""
    from agent.store.db import host_identity, register_host
    from agent.store.writer import write_batch

    s = settings_from(ctx)
    engine = open_store(s, upgrade=True)
    stack.callback(engine.dispose)
    try:
        host_id, hostname = host_identity(s.state_dir, s.agent.host_id, s.agent.hostname)
        register_host(engine, host_id, hostname)
    except OSError as e:
        raise UserError(f"{s.state_dir}: {e.strerror or e}") from None

    def store(batch: list[Flow]) -> None:
        write_batch(engine, host_id, batch)

    return store
