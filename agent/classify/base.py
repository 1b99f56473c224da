"""The small types every format parser shares: the bytes it reads, what it found, its errors.

A parser never sees a path: it gets a `Source` (a name, a size, the first bytes and a
seekable binary file over the content, which for an archive member may be only a
head), applies the `Limits`, and returns a `Finding` or raises `ParseError`. The engine
(`agent.classify.engine`) turns findings into an `Artefact`. Keeping the parsers pure
over a `Source` is what lets the same code classify a file, a member of a zip inside a
tar, and the random bytes of a property test.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from agent.events import Tag

HEAD_BYTES = 64 * 1024


class ParseError(Exception):
    """The content does not parse as the format its signature claimed (or hit a bound)."""


class LimitExceeded(ParseError):
    """A hard limit (depth, members, expanded bytes, ratio, header length) was reached."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """The classify.* bounds, as plain numbers for the parsers."""

    max_text_bytes: int = 4 << 20
    max_archive_depth: int = 3
    max_archive_members: int = 10_000
    max_archive_expanded_bytes: int = 2 << 30
    max_compression_ratio: float = 200.0
    max_header_bytes: int = 100_000_000  # safetensors' own MAX_HEADER_SIZE
    max_gguf_count: int = 1 << 20  # tensors or metadata keys in one GGUF
    max_member_inline: int = 16 << 20  # archive members kept whole for nested parsing


@dataclass(slots=True)
class Source:
    """Content to classify: a name (for extension hints only), size, head and a reader.

    `complete` is False when only the first bytes of a larger content are available
    (an archive member over `max_member_inline`): parsers that need more raise
    ParseError and the engine keeps the signature-level tag.
    """

    name: str
    size: int
    head: bytes
    opener: Callable[[], BinaryIO]
    complete: bool = True
    depth: int = 0

    @classmethod
    def from_bytes(cls, name: str, data: bytes, depth: int = 0, size: int | None = None) -> Source:
        full = size is None or size == len(data)
        return cls(
            name=name,
            size=len(data) if size is None else size,
            head=data[:HEAD_BYTES],
            opener=lambda: io.BytesIO(data),
            complete=full,
            depth=depth,
        )

    def open(self) -> BinaryIO:
        return self.opener()

    @property
    def ext(self) -> str:
        base = self.name.rsplit("/", 1)[-1].lower()
        return base.rsplit(".", 1)[-1] if "." in base else ""

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(slots=True)
class Member:
    """An archive member as classified: its hash (if read), size and what it is."""

    name: str
    size: int
    sha256: str | None
    tags: tuple[Tag, ...]
    nested: tuple[str, ...] = ()  # hashes of tagged members inside this member, any depth


@dataclass(slots=True)
class Finding:
    """What one parser found. `text` feeds the keyword matcher and is never stored."""

    content_type: str
    tags: list[Tag] = field(default_factory=list)
    text: str = ""
    members: list[Member] = field(default_factory=list)
    skipped: str | None = None  # reason the content was only partly read
    parents: list[str] = field(default_factory=list)  # tagged members' hashes, any depth


# the detail keys agent/categories.py promises to policy, with their "unknown" values
PROMISED_DETAILS: dict[str, dict[str, object]] = {
    "model_weights": {"format": None, "parameters": None, "tensors": None, "dtype": None},
    "dataset": {"format": None, "columns": [], "rows": None},
    "source_code": {"language": None, "git_remote": None, "git_commit": None},
    "archive": {"format": None, "members": None, "nested_kinds": []},
    "document": {"format": None, "chars": 0},
    "engineering": {"format": None},
    "secret": {"type": None},
}


def promised_tag(kind: str, evidence: str, **details: object) -> Tag:
    """A tag with every promised detail key present (unknown ones as None or empty)."""
    return Tag(kind, evidence, {**PROMISED_DETAILS.get(kind, {}), **details})


def human_count(n: int) -> str:
    """1.1e8 style for parameter counts, exact below ten thousand."""
    return f"{n:.1e}".replace("e+0", "e").replace("e+", "e") if n >= 10_000 else str(n)


def decode_text(data: bytes) -> str | None:
    """UTF-8 (or GB18030, common for Chinese documents) text, or None for binary."""
    if not data or b"\x00" in data[:8192]:
        return None
    for enc in ("utf-8", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError as e:
            # a multi-byte character cut by the read bound is still text
            if enc == "utf-8" and e.start >= len(data) - 4:
                return data[: e.start].decode(enc)
    return None
