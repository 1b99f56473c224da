"""Publishing the incident chain head after each write (the I/O shell of anchor.py).

The gauges `egress_agent_incident_chain_head_seq` / `..._hash_prefix`, a journal line
"incident chain head seq=N hash=H" at start and each checkpoint, and the signed anchor
file in the state directory. The anchor only moves forward along the same chain: once
the chain no longer reaches it (records deleted before a restart, a store emptied and a
new chain begun, a tail cut under the running daemon) it stays where it is, so the
evidence is not overwritten and `incidents verify` keeps failing; that is logged once.
The gauges always show the truth, and the `EgressAgentIncidentChainWentBack` alert
watches them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, select

from agent import metrics
from agent.incidents import anchor
from agent.store.models import ChainRecord

log = logging.getLogger("agent.incidents.log")


def chain_head(engine: Engine, host_id: str) -> tuple[int, str] | None:
    """(seq, hash) of the last record of `host_id`'s chain, None when it has none."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ChainRecord.seq, ChainRecord.hash)
            .where(ChainRecord.host_id == host_id)
            .order_by(ChainRecord.seq.desc())
            .limit(1)
        ).first()
    return (int(row.seq), str(row.hash)) if row is not None else None


def hash_at(engine: Engine, host_id: str, seq: int) -> str | None:
    with engine.connect() as conn:
        value = conn.execute(
            select(ChainRecord.hash).where(ChainRecord.host_id == host_id, ChainRecord.seq == seq)
        ).scalar()
    return str(value) if value is not None else None


class HeadPublisher:
    """One host's chain head: gauges, journal line and (with `anchor_dir`) anchor file."""

    def __init__(self, engine: Engine, host_id: str, anchor_dir: Path | None) -> None:
        self.engine = engine
        self.host_id = host_id
        self.anchor_dir = anchor_dir
        self._key = None
        self._anchored: tuple[int, str] | None = None  # the head the anchor file holds
        self.held: str | None = None  # why the anchor file must not move any more
        if anchor_dir is None:
            return
        try:
            self._key = anchor.load_or_create_key(anchor_dir)
            head = anchor.read_anchor(anchor_dir, self._key.public_key())
        except anchor.AnchorError as e:  # the gauges and journal still anchor the head
            log.error("incident chain head not anchored in the state directory: %s", e)
            self._key = None
            return
        if head is not None and head.host_id == host_id:
            self._anchored = (head.seq, head.hash)

    def publish(self, journal: bool = False) -> tuple[int, str] | None:
        found = chain_head(self.engine, self.host_id)
        if found is None:
            return None
        seq, hsh = found
        metrics.CHAIN_HEAD_SEQ.set(seq)
        metrics.CHAIN_HEAD_HASH.set(anchor.hash_gauge_value(hsh))
        if journal:
            log.info("incident chain head seq=%d hash=%s host=%s", seq, hsh, self.host_id)
        if self.anchor_dir is None or self._key is None:
            return found
        self._hold_if_cut(seq, hsh)
        if self.held is None:
            try:
                anchor.write_anchor(self.anchor_dir, self._key, self.host_id, seq, hsh)
                self._anchored = (seq, hsh)
            except OSError as e:
                log.error("could not write the incident chain anchor: %s", e)
        return found

    def _hold_if_cut(self, seq: int, hsh: str) -> None:
        if self._anchored is None or self.held is not None:
            return
        old_seq, old_hash = self._anchored
        if seq < old_seq:
            why = f"the chain head is seq {seq}, below the anchored head seq {old_seq}"
        elif hash_at(self.engine, self.host_id, old_seq) != old_hash:
            why = f"record {old_seq} no longer has the anchored hash {old_hash[:12]}"
        else:
            return
        self.held = why
        log.error(
            "incident chain tampered: %s; the anchor stays at seq %d (see incidents verify)",
            why,
            old_seq,
        )
