"""Anchors for the incident chain head: the host key, the anchor file, head checks.

A hash chain proves that its records link, not that none were cut off its end: delete
the tail (or every record) and what is left still verifies. So the head (seq and hash)
is published where someone who can only edit the store cannot rewrite it: a Prometheus
gauge that the server keeps, a journal line per checkpoint, and an anchor file in the
state directory signed with the host's Ed25519 key. `check_head` compares a store's
chain with one such anchor. The same key signs the trailer of every export, so an
auditor who pinned its public key (`egress-agent keys show`) can tell a cut or extended
export from the one the agent wrote. Root on the host can re-sign anything with the key;
only the copies kept elsewhere (Prometheus, the forwarded journal, a pinned export)
catch that.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agent.errors import UserFacingError
from agent.incidents.chain import Problem, VerifyReport
from agent.incidents.model import canonical_json

KEY_FILE = "incident-signing.key"
PUBLIC_FILE = "incident-signing.pub"  # 0644: lets a user who may not read the key verify
ANCHOR_FILE = "incident-chain-anchor.json"
KEY_PREFIX = "ed25519:"
HASH_PREFIX_DIGITS = 12  # 48 bits: exact in a float64 gauge


class AnchorError(UserFacingError):
    """A key that cannot be read, parsed or created (one line for the user)."""


class AnchorUnreadable(AnchorError):
    """The key or anchor exists but this user may not read it: not evidence of tampering."""


@dataclass(frozen=True, slots=True)
class Head:
    """The last record of one host's chain, as anchored somewhere."""

    host_id: str
    seq: int
    hash: str  # full hex, a prefix (the gauge kept one), or "" when only the seq is known
    source: str  # where the anchor came from, for the message


# --- the host key -----------------------------------------------------------------------
def load_key(state_dir: Path) -> Ed25519PrivateKey | None:
    """The host's signing key, or None when it was never created."""
    path = state_dir / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as e:
        raise AnchorUnreadable(f"{path}: {e.strerror or e}") from None
    except OSError as e:
        raise AnchorError(f"{path}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise AnchorError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AnchorError(f"{path}: not an Ed25519 key")
    return key


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    """The host's signing key, generated once (mode 0600) on first use; its public half
    is kept beside it (0644) for verifiers who may not read the key."""
    key = _load_or_create(state_dir)
    _write_public(state_dir, key.public_key())
    return key


def load_public(state_dir: Path) -> Ed25519PublicKey | None:
    """This host's public key: the public file, else from the key; None when neither is."""
    path = state_dir / PUBLIC_FILE
    try:
        with path.open("rb") as f:
            text = f.read(4096).decode("ascii", "replace")
    except FileNotFoundError:
        key = load_key(state_dir)
        return key.public_key() if key is not None else None
    except PermissionError as e:
        raise AnchorUnreadable(f"{path}: {e.strerror or e}") from None
    except OSError as e:
        raise AnchorError(f"{path}: {e.strerror or e}") from None
    if not text.strip().startswith(KEY_PREFIX):
        raise AnchorError(f"{path}: not an ed25519: public key (edited?)")
    return parse_public(text)


def _write_public(state_dir: Path, key: Ed25519PublicKey) -> None:
    path = state_dir / PUBLIC_FILE
    want = public_text(key) + "\n"
    try:
        if path.read_text(encoding="ascii", errors="replace") == want:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{PUBLIC_FILE}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(want)
        _give_to_owner_of(state_dir, tmp)
        os.replace(tmp, path)
    except OSError:  # a reader without write access: the key itself still verifies
        return


def _load_or_create(state_dir: Path) -> Ed25519PrivateKey:
    key = load_key(state_dir)
    if key is not None:
        return key
    path = state_dir / KEY_FILE
    new = Ed25519PrivateKey.generate()
    pem = new.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        key = load_key(state_dir)
        if key is None:
            raise AnchorError(f"{path}: vanished while being created") from None
        return key
    except OSError as e:
        raise AnchorError(f"{path}: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    _give_to_owner_of(state_dir, path)
    return new


def _give_to_owner_of(state_dir: Path, path: Path) -> None:
    """Root (an admin's `keys show` or `export` before the first start) makes the key
    for the agent's user, who owns the state directory: never one it cannot use."""
    if os.geteuid() != 0:
        return
    st = state_dir.stat()
    if st.st_uid != 0:
        os.chown(path, st.st_uid, st.st_gid)


def public_text(key: Ed25519PublicKey) -> str:
    """The form an auditor pins: `ed25519:<base64 of the 32 raw bytes>`."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public(text: str) -> Ed25519PublicKey:
    """A pinned public key: `ed25519:<base64>`, or a PEM public key, or a file of either."""
    value = text.strip()
    if not value.startswith(KEY_PREFIX) and "BEGIN" not in value:
        try:
            value = Path(value).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            why = f"neither a public key nor a readable key file ({e})"
            raise AnchorError(f"{text}: {why}") from None
    if value.startswith(KEY_PREFIX):
        try:
            raw = base64.b64decode(value[len(KEY_PREFIX) :], validate=True)
            return Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise AnchorError("the public key is not 32 bytes of base64 after ed25519:") from None
    try:
        key = serialization.load_pem_public_key(value.encode("ascii", "replace"))
    except ValueError:
        raise AnchorError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AnchorError("the public key is not Ed25519")
    return key


def sign(key: Ed25519PrivateKey, fields: Mapping[str, object]) -> str:
    return key.sign(canonical_json(dict(fields)).encode("utf-8")).hex()


def signature_ok(key: Ed25519PublicKey, fields: Mapping[str, object], signature: str) -> bool:
    try:
        key.verify(bytes.fromhex(signature), canonical_json(dict(fields)).encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- the anchor file --------------------------------------------------------------------
def write_anchor(state_dir: Path, key: Ed25519PrivateKey, host_id: str, seq: int, hsh: str) -> None:
    """Replace the state directory's anchor with this head, signed (atomic rename)."""
    fields: dict[str, object] = {"host_id": host_id, "seq": seq, "hash": hsh}
    doc = {**fields, "key_id": key_id(key.public_key()), "signature": sign(key, fields)}
    path = state_dir / ANCHOR_FILE
    tmp = path.with_name(f".{ANCHOR_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)  # signed, not secret
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_anchor(state_dir: Path, key: Ed25519PublicKey | None) -> Head | None:
    """The last anchored head, or None when the host never anchored one.

    Raises AnchorError when the file is there but unreadable or its signature fails: an
    anchor that was edited is itself evidence of tampering.
    """
    path = state_dir / ANCHOR_FILE
    try:
        with path.open("rb") as f:
            text = f.read(4096).decode("utf-8")
    except FileNotFoundError:
        return None
    except PermissionError as e:
        raise AnchorUnreadable(f"{path}: {e.strerror or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnchorError(f"{path}: unreadable ({e})") from None
    try:
        doc = json.loads(text)
        host_id, seq, hsh = str(doc["host_id"]), int(doc["seq"]), str(doc["hash"])
        signature = str(doc["signature"])
    except (ValueError, KeyError, TypeError):
        raise AnchorError(f"{path}: not an anchor file (edited?)") from None
    if key is None:
        raise AnchorError(f"{path}: anchor present but the host key is missing: cannot trust it")
    if not signature_ok(key, {"host_id": host_id, "seq": seq, "hash": hsh}, signature):
        raise AnchorError(f"{path}: the anchor's signature does not verify: it was edited")
    return Head(host_id, seq, hsh, f"anchor file {path}")


# --- checks ---------------------------------------------------------------------------
def hash_prefixes(value: str) -> tuple[str, ...]:
    """The hash prefixes `value` may stand for: hex digits, or the decimal value of the
    `egress_agent_incident_chain_head_hash_prefix` gauge (12 hex digits as an integer)."""
    v = value.strip().lower().removeprefix("0x")
    out: list[str] = []
    if v.isdigit() and len(v) <= 15 and int(v) < 16**HASH_PREFIX_DIGITS:
        out.append(f"{int(v):0{HASH_PREFIX_DIGITS}x}")
    if len(v) >= HASH_PREFIX_DIGITS and all(c in "0123456789abcdef" for c in v):
        out.append(v)  # fewer hex digits would match too many hashes to mean anything
    return tuple(out)


def hash_gauge_value(hsh: str) -> int:
    return int(hsh[:HASH_PREFIX_DIGITS], 16)


def check_head(report: VerifyReport, stored: Mapping[tuple[str, int], str], head: Head) -> None:
    """The store's chain must still hold the anchored head record, unchanged."""
    seqs = [seq for (host, seq) in stored if host == head.host_id]
    prefixes = hash_prefixes(head.hash)
    if head.hash and not prefixes:
        report.problems.append(
            Problem(head.host_id, head.seq, f"the expected head hash {head.hash!r} is not hex")
        )
        return
    if not seqs:
        why = f"chain is empty but the last anchored head was seq {head.seq} ({head.source})"
    elif max(seqs) < head.seq:
        why = (
            f"the chain ends at seq {max(seqs)} but the last anchored head was seq {head.seq} "
            f"({head.source}): its tail was cut off"
        )
    elif head.hash and not any(
        stored.get((head.host_id, head.seq), "").startswith(p) for p in prefixes
    ):
        why = (
            f"record {head.seq} has another hash than the anchored head ({head.source}): "
            "rewritten and re-sealed"
        )
    else:
        return
    report.problems.append(Problem(head.host_id, head.seq, why, report.records))
