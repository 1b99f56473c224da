"""The signed trailer that ends every export: what the agent wrote, and nothing else.

A chain verifies line by line, so an export with its last lines removed, or with a
forged record appended (hashes recomputed: anyone can), still links. The trailer is the
export's last line: the number of records, the first and last seq, the last hash, the
export time and the sha256 of every byte before it, signed with the host's Ed25519 key
(agent/incidents/anchor.py). With the signer's public key pinned, a removed tail (the
trailer goes with it, or the content hash no longer matches), an appended line (after
the trailer, or before it: the hash again) and a re-signed file (another key) all fail.

The trailer is shaped like its format's lines so a SIEM ingesting the file skips or
files it instead of choking: a JSON object (jsonl, ecs, ocsf), a two-cell CSV row, a
CEF event. It is recognised by its prefix only, never by a string a record could hold.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import __version__
from agent.incidents.anchor import key_id, sign, signature_ok
from agent.incidents.chain import ChainEntry, Problem, VerifyReport
from agent.incidents.export.cef import escape_value, unescape_value
from agent.incidents.model import canonical_json, iso

TRAILER = "egress_agent_export_trailer"
_JSON_PREFIX = '{"' + TRAILER + '":'
_CSV_PREFIX = '"#' + TRAILER + '",'
_CEF_HEAD = "CEF:0|egress-agent|egress-agent|"
_CEF_MARK = "|egress.export.trailer|incident export trailer|0|cs1Label=exportTrailer cs1="
_CEF_TRAILER = re.compile(re.escape(_CEF_HEAD) + r"[^|\\]*" + re.escape(_CEF_MARK))


@dataclass
class _Tee:
    """Passes writes on to `out` and hashes them: the content the trailer signs."""

    out: IO[str]
    digest: Any = field(default_factory=hashlib.sha256)

    def write(self, text: str) -> int:
        self.digest.update(text.encode("utf-8"))
        return self.out.write(text)


def render(fmt: str, doc: dict[str, Any]) -> str:
    body = canonical_json(doc)
    if fmt == "csv":
        return _CSV_PREFIX + '"' + body.replace('"', '""') + '"'
    if fmt == "cef":
        return _CEF_HEAD + __version__ + _CEF_MARK + escape_value(body)
    return _JSON_PREFIX + body + "}"


def parse(line: str) -> dict[str, Any] | None:
    """The trailer document if `line` is a trailer line (of any format), else None."""
    text = line.rstrip("\r\n")
    if text.startswith(_JSON_PREFIX):
        doc = json.loads(text)[TRAILER]
    elif text.startswith(_CSV_PREFIX):
        cell = text[len(_CSV_PREFIX) :]
        if not (cell.startswith('"') and cell.endswith('"')):
            raise ValueError("malformed CSV trailer")
        doc = json.loads(cell[1:-1].replace('""', '"'))
    elif m := _CEF_TRAILER.match(text):
        doc = json.loads(unescape_value(text[m.end() :]))
    else:
        return None
    if not isinstance(doc, dict):
        raise ValueError("the trailer is not an object")
    return doc


def write_signed(
    entries: Iterable[ChainEntry],
    fmt: str,
    out: IO[str],
    key: Ed25519PrivateKey,
    now: datetime,
) -> int:
    """Write the export like `export.write`, then its signed trailer; returns the count."""
    from agent.incidents.export import write

    tee = _Tee(out)
    seen: list[ChainEntry] = []

    def track() -> Iterator[ChainEntry]:
        for e in entries:
            if len(seen) < 2:
                seen.append(e)
            else:
                seen[1] = e
            yield e

    n = write(track(), fmt, cast(IO[str], tee))
    first = seen[0] if seen else None
    last = seen[-1] if seen else None
    fields: dict[str, Any] = {
        "v": 1,
        "format": fmt,
        "records": n,
        "first_seq": first.seq if first else None,
        "last_seq": last.seq if last else None,
        "last_host_id": last.host_id if last else None,
        "last_hash": last.hash if last else None,
        "exported_at": iso(now),
        "content_sha256": tee.digest.hexdigest(),
        "key_id": key_id(key.public_key()),
    }
    doc = {**fields, "signature": sign(key, fields)}
    out.write(render(fmt, doc) + ("\r\n" if fmt == "csv" else "\n"))
    return n


@dataclass(frozen=True, slots=True)
class Split:
    body: list[str]
    trailer: dict[str, Any] | None
    after: int  # non-empty lines after the trailer
    broken: str | None = None  # why a line shaped like a trailer could not be read


def split(lines: list[str]) -> Split:
    """The lines before the (first) trailer, the trailer, and how many lines follow it."""
    for i, line in enumerate(lines):
        try:
            doc = parse(line)
        except (ValueError, KeyError, TypeError) as e:
            after = sum(1 for ln in lines[i + 1 :] if ln.strip())
            return Split(lines[:i], {}, after, f"{type(e).__name__}: {e}")
        if doc is not None:
            after = sum(1 for ln in lines[i + 1 :] if ln.strip())
            return Split(lines[:i], doc, after)
    return Split(lines, None, 0)


def check(
    report: VerifyReport,
    parts: Split,
    last: ChainEntry | None,
    key: Ed25519PublicKey | None,
    required: bool,
) -> None:
    """Hold the verified lines against the trailer; with `key`, its signature too."""
    host = last.host_id if last else ""
    seq = last.seq if last else -1

    def fail(why: str) -> None:
        report.problems.append(Problem(host, seq, why, report.records))

    doc = parts.trailer
    if doc is None:
        report.signature = "absent"
        if required:
            fail(
                "the export has no signed trailer: lines were removed at its end, "
                "or it was exported unsigned (--unsigned-ok accepts that)"
            )
        return
    if parts.broken is not None:
        report.signature = "invalid"
        fail(f"the signed trailer cannot be read ({parts.broken[:200]}): it was edited")
        return
    if parts.after:
        fail(f"{parts.after} line(s) follow the signed trailer: appended after signing")
    signature = str(doc.get("signature", ""))
    fields = {k: v for k, v in doc.items() if k != "signature"}
    if key is None:
        report.signature = f"unchecked (key id {fields.get('key_id')}; pin it with --public-key)"
    elif fields.get("key_id") != key_id(key) or not signature_ok(key, fields, signature):
        report.signature = "invalid"
        fail(
            f"the trailer is not signed by the pinned key {key_id(key)} "
            f"(it names key {fields.get('key_id')!r}): forged or re-signed"
        )
        return
    else:
        report.signature = f"verified (key id {key_id(key)})"
    content = hashlib.sha256("".join(parts.body).encode("utf-8")).hexdigest()
    if content != fields.get("content_sha256"):
        fail(
            "the lines before the trailer are not the ones it signed: "
            "lines were removed, added or edited"
        )
    elif fields.get("records") != report.records:
        fail(f"the trailer counts {fields.get('records')} records, the file has {report.records}")
    elif last is not None and (fields.get("last_seq"), fields.get("last_hash")) != (
        last.seq,
        last.hash,
    ):
        fail(f"the trailer ends at seq {fields.get('last_seq')}, the file at seq {last.seq}")
