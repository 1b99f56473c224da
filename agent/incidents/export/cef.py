"""ArcSight Common Event Format (CEF:0), one event per chain record, for syslog SIEMs.

`CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`. Header fields
escape `\\` and `|` (line breaks become spaces: a header cannot hold them); extension
values escape `\\`, `=`, and line breaks as `\\n`/`\\r`; other control characters
(ESC, C1, bidi overrides) become `\\xNN`/`\\uNNNN` in both. Severity is 0–10 (0–3 low,
4–6 medium, 7–8 high, 9–10 very high). Standard keys carry the primary facts
(`fname filePath fileHash fsize dst dpt dhost out suser sproc spid act cat rt`); the
chain fields and the hashed payload travel in labelled custom strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from agent import __version__
from agent.incidents.chain import ChainEntry
from agent.incidents.export._view import basename, view, written_lines
from agent.textsafe import BEYOND_C0

NAME = "cef"
EXTENSION = "cef"
HEADER: str | None = None
VENDOR = "egress-agent"
PRODUCT = "egress-agent"
SEVERITY = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
_KEY = re.compile(r"(?:^| )([A-Za-z0-9_.\[\]-]+)=")


# other control characters (ESC, C1, bidi overrides): never raw in a syslog line, where
# a SIEM console or a terminal tailing the file would act on them
_CONTROL = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{BEYOND_C0}]")
_HEX_ESCAPE = re.compile(r"x([0-9a-f]{2})|u([0-9a-f]{4})")


def _hex(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_header(value: object) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return _CONTROL.sub(_hex, text)


def escape_value(value: object) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("=", "\\=")
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return _CONTROL.sub(_hex, text)


def unescape_value(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            code = _HEX_ESCAPE.match(text, i + 1)
            if code is not None:  # \xNN / \uNNNN: a control character we escaped
                out.append(chr(int(code.group(1) or code.group(2), 16)))
                i = code.end()
                continue
            out.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def split_header(line: str) -> tuple[list[str], str]:
    """The 7 header fields (unescaped) and the raw extension of a CEF line."""
    fields: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(line) and len(fields) < 7:
        c = line[i]
        if c == "\\" and i + 1 < len(line) and line[i + 1] in "\\|":
            cur.append(line[i + 1])
            i += 2
            continue
        if c == "\\" and (code := _HEX_ESCAPE.match(line, i + 1)) is not None:
            cur.append(chr(int(code.group(1) or code.group(2), 16)))
            i = code.end()
            continue
        if c == "|":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if len(fields) < 7:
        raise ValueError("not a CEF line: fewer than 8 '|'-separated fields")
    return fields, line[i:]


def parse_extension(ext: str) -> dict[str, str]:
    """key=value pairs; a value runs to the next unescaped ` key=`."""
    keys = list(_KEY.finditer(ext))
    out: dict[str, str] = {}
    for n, m in enumerate(keys):
        end = keys[n + 1].start() if n + 1 < len(keys) else len(ext)
        out[m.group(1)] = unescape_value(ext[m.end() : end])
    return out


def extension(entry: ChainEntry) -> list[tuple[str, object]]:
    v = view(entry)
    inc, f, fl, p = v.incident, v.file, v.flow, v.process
    pairs: list[tuple[str, object]] = [
        ("rt", v.time_ms),
        ("act", v.action),
        ("cat", inc.get("kind") or "chain"),
        ("externalId", entry.incident_uid),
        ("deviceExternalId", entry.host_id),
        ("dvchost", v.hostname),
        ("msg", inc.get("title")),
        ("fname", basename(v.path)),
        ("filePath", v.path),
        ("fileHash", f.get("sha256")),
        ("fsize", f.get("size")),
        ("src", fl.get("src_ip")),
        ("spt", fl.get("src_port")),
        ("dst", fl.get("dst_ip")),
        ("dpt", fl.get("dst_port")),
        ("dhost", fl.get("sni") or fl.get("name")),
        ("destinationServiceName", fl.get("service")),
        ("out", inc.get("bytes_out") if inc else None),
        ("suser", p.get("user")),
        ("suid", p.get("uid")),
        ("sproc", p.get("exe")),
        ("spid", p.get("pid")),
        ("cs1Label", "status"),
        ("cs1", inc.get("status")),
        ("cs2Label", "policyPack"),
        ("cs2", inc.get("pack")),
        ("cs3Label", "chainRecordType"),
        ("cs3", entry.record_type),
        ("cs4Label", "chainPrevHash"),
        ("cs4", entry.prev_hash),
        ("cs5Label", "chainHash"),
        ("cs5", entry.hash),
        ("cs6Label", "chainPayload"),
        ("cs6", entry.payload),
        ("cn1Label", "chainSeq"),
        ("cn1", entry.seq),
        ("flexString1Label", "chainTime"),
        ("flexString1", entry.time),
        ("flexString2Label", "countryIso"),
        ("flexString2", fl.get("country")),
    ]
    return [(k, val) for k, val in pairs if val is not None and val != ""]


def render(entry: ChainEntry) -> str:
    v = view(entry)
    inc = v.incident
    signature = inc.get("rule_id") or f"egress.chain.{'stub' if v.stub else entry.record_type}"
    name = inc.get("title") or v.action
    header = [
        "CEF:0",
        VENDOR,
        PRODUCT,
        __version__,
        signature,
        name,
        str(SEVERITY.get(v.severity, 1) if inc else 0),
    ]
    ext = " ".join(f"{k}={escape_value(val)}" for k, val in extension(entry))
    return "|".join(escape_header(h) if i else h for i, h in enumerate(header)) + "|" + ext


def read(lines: Iterable[str]) -> Iterator[tuple[ChainEntry, str]]:
    for line in written_lines(lines):
        _header, ext = split_header(line)
        x = parse_extension(ext)
        yield (
            ChainEntry(
                seq=int(x["cn1"]),
                host_id=x["deviceExternalId"],
                record_type=x["cs3"],
                time=x["flexString1"],
                incident_uid=x.get("externalId"),
                payload=x.get("cs6"),
                prev_hash=x["cs4"],
                hash=x["cs5"],
            ),
            line,
        )
