"""Publishing the incident chain head after each write (the I/O shell of anchor.py).

The gauges `egress_agent_incident_chain_head_seq` / `..._hash_prefix`, a journal line
"incident chain head seq=N hash=H" at start and each checkpoint, and the signed anchor
file in the state directory. The anchor only moves forward along the same chain: once
the chain no longer reaches it (records deleted before a restart, a store emptied and a
new chain begun, a tail cut under the running daemon) it stays where it is, so the
evidence is not overwritten and `incidents verify` keeps failing; that is logged once.
The gauges always show the truth, and the `EgressAgentIncidentChainWentBack` alert
watches them. On a fleet store (PostgreSQL) the same signed head is also kept centrally,
in `job_state` (name `incident_chain_head`, one row per host), so `incidents verify` run
centrally checks every host's chain without the hosts' state directories.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from agent import metrics
from agent.incidents import anchor
from agent.store import incidents as store
from agent.store import jobstate

log = logging.getLogger("agent.incidents.log")
CENTRAL = "incident_chain_head"  # job_state name of a host's head record (fleet store)


def chain_head(engine: Engine, host_id: str) -> tuple[int, str] | None:
    """(seq, hash) of the last record of `host_id`'s chain, None when it has none."""
    return store.chain_head_now(engine, host_id)


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
            if self.engine.dialect.name == "postgresql":
                self._publish_central(seq, hsh)
        return found

    def _publish_central(self, seq: int, hsh: str) -> None:
        assert self._key is not None
        fields: dict[str, object] = {"host_id": self.host_id, "seq": seq, "hash": hsh}
        value = {
            **fields,
            "public_key": anchor.public_text(self._key.public_key()),
            "signature": anchor.sign(self._key, fields),
        }
        try:
            jobstate.put_job_value(self.engine, CENTRAL, self.host_id, value)
        except SQLAlchemyError as e:  # the next write publishes again
            log.warning("could not keep the incident chain head in the fleet store: %s", e)

    def _hold_if_cut(self, seq: int, hsh: str) -> None:
        if self._anchored is None or self.held is not None:
            return
        old_seq, old_hash = self._anchored
        if seq < old_seq:
            why = f"the chain head is seq {seq}, below the anchored head seq {old_seq}"
        elif store.hash_at(self.engine, self.host_id, old_seq) != old_hash:
            why = f"record {old_seq} no longer has the anchored hash {old_hash[:12]}"
        else:
            return
        self.held = why
        log.error(
            "incident chain tampered: %s; the anchor stays at seq %d (see incidents verify)",
            why,
            old_seq,
        )


def central_heads(
    engine: Engine, host: str | None, pinned: Ed25519PublicKey | None
) -> list[anchor.Head | str]:
    """The head records the fleet store keeps (a str: why one cannot be trusted).

    Each is checked with `pinned` when given, else with the key it names: that catches
    an edit by someone without the host's key, not a record replaced whole.
    """
    out: list[anchor.Head | str] = []
    for host_id, value in jobstate.job_values(engine, CENTRAL, host):
        where = f"fleet store head record of host {host_id}"
        try:
            seq, hsh = int(value["seq"]), str(value["hash"])
            fields = {"host_id": str(value["host_id"]), "seq": seq, "hash": hsh}
            key = pinned or anchor.parse_public(str(value["public_key"]))
            ok = fields["host_id"] == host_id and anchor.signature_ok(
                key, fields, str(value["signature"])
            )
        except (KeyError, TypeError, ValueError, anchor.AnchorError):
            ok = False
        if not ok:
            out.append(f"the {where} does not verify: it was edited")
            continue
        out.append(anchor.Head(host_id, seq, hsh, where))
    return out
