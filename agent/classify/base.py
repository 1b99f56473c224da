"""The small types every format parser shares: the bytes it reads, what it found, its errors.

A parser never sees a path: it gets a `Source` (a name, a size, the first bytes and a
seekable binary file over the content, which for an archive member may be only a
head), applies the `Limits`, and returns a `Finding` or raises `ParseError`. The content
tiers (`agent.classify.tiers`) choose and run them, and the classifier turns their findings
into an `Artefact`. Keeping the parsers pure
over a `Source` is what lets the same code classify a file, a member of a zip inside a
tar, and the random bytes of a property test.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from agent.errors import AgentError
from agent.events import Tag

HEAD_BYTES = 64 * 1024


class ParseError(AgentError):
    """The content does not parse as the format its signature claimed (or hit a bound)."""


class LimitExceeded(ParseError):
    """A hard limit (depth, members, expanded bytes, ratio, header length) was reached."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExceeded(LimitExceeded):
    """The file's classification deadline passed: work stops where it is (`timeout`)."""

    def __init__(self, where: str) -> None:
        super().__init__("timeout", f"classification deadline passed during {where}")
        self.where = where


class Deadline:
    """The cooperative time budget of one file's classification.

    Every parser loop calls `check()` (reads through `Source.open()` do it for them), so
    work on hostile content stops at the deadline instead of holding a classify worker:
    a parser cannot be killed from outside a thread, so it must stop itself. `where`
    names the tier reached ("content", "archive member 12"...) for the artefact and the
    log. `Deadline(None)` never expires (property tests, direct parser calls).
    """

    __slots__ = ("at", "where")

    def __init__(self, seconds: float | None = None, where: str = "content") -> None:
        self.at = math.inf if seconds is None else time.monotonic() + seconds
        self.where = where

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.at

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise DeadlineExceeded(self.where)


MAX_EMPTY_READS = 64  # reads at end of file in a row: a parser looping on nothing


class GuardedFile(io.BufferedIOBase):
    """A read-only file object for third-party parsers (tarfile, zipfile, py7zr, pyarrow,
    h5py) that cannot spin: every read and seek checks the deadline, a seek past the
    real end of the content is refused, and a reader that keeps reading at the end of
    the file (tarfile skipping a member that claims 2^62 bytes) is stopped.
    """

    def __init__(self, inner: BinaryIO, size: int, deadline: Deadline) -> None:
        super().__init__()
        self._f = inner
        self._size = size
        self._deadline = deadline
        self._empty = 0
        self.name = getattr(inner, "name", None)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def _after(self, got: int, wanted: int | None) -> None:
        if got or wanted == 0:
            self._empty = 0
            return
        self._empty += 1
        if self._empty > MAX_EMPTY_READS:
            raise ParseError("the parser keeps reading past the end of the content")

    def read(self, n: int | None = -1) -> bytes:
        self._deadline.check()
        data = self._f.read(-1 if n is None else n)
        self._after(len(data), n)
        return data

    def read1(self, n: int = -1) -> bytes:
        return self.read(n)

    def readinto(self, b: Any) -> int:
        self._deadline.check()
        got = cast(Any, self._f).readinto(b) or 0
        self._after(got, len(b))
        return int(got)

    def readinto1(self, b: Any) -> int:
        return self.readinto(b)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self._deadline.check()
        if whence == io.SEEK_SET:
            target = pos
        elif whence == io.SEEK_CUR:
            target = self._f.tell() + pos
        else:
            target = self._size + pos
        if target > self._size:
            raise ParseError(f"seek to {target}, past the end of the content ({self._size})")
        return self._f.seek(target)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


@dataclass(frozen=True, slots=True)
class Limits:
    """The classify.* bounds, as plain numbers for the parsers."""

    max_text_bytes: int = 4 << 20
    max_archive_depth: int = 3
    max_archive_members: int = 10_000
    max_archive_expanded_bytes: int = 2 << 30
    max_compression_ratio: float = 200.0
    # safetensors' own MAX_HEADER_SIZE is 100 MB; a header is parsed whole (json) and 32 MiB
    # already holds more than max_tensors entries, so more is only memory for an attacker
    max_header_bytes: int = 32 << 20
    max_gguf_count: int = 1 << 20  # tensors or metadata keys in one GGUF
    max_member_inline: int = 16 << 20  # archive members kept whole for nested parsing
    max_tensors: int = 1 << 17  # tensors in one safetensors/ONNX/pickle (real: < 20,000)
    max_dims: int = 64  # dimensions of one tensor shape (real: < 10)
    max_json_values: int = 1 << 21  # values in one JSON header, counted before parsing


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
    deadline: Deadline = field(default_factory=Deadline)

    @classmethod
    def from_bytes(
        cls,
        name: str,
        data: bytes,
        depth: int = 0,
        size: int | None = None,
        deadline: Deadline | None = None,
    ) -> Source:
        full = size is None or size == len(data)
        return cls(
            name=name,
            size=len(data) if size is None else size,
            head=data[:HEAD_BYTES],
            opener=lambda: io.BytesIO(data),
            complete=full,
            depth=depth,
            deadline=deadline or Deadline(),
        )

    def open(self) -> BinaryIO:
        """The content as a `GuardedFile`: reads check the deadline, seeks stay inside.

        The bound is what is really there (the bytes kept for a member cut at
        `max_member_inline`), not the size the container declared.
        """
        inner = self.opener()
        real = self.size
        if isinstance(inner, io.BytesIO):
            real = inner.seek(0, io.SEEK_END)
            inner.seek(0)
        return cast(BinaryIO, GuardedFile(inner, real, self.deadline))

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
    cut_at: str | None = None  # with skipped="timeout": the tier reached (Deadline.where)
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


def first_lines(text: str, n: int) -> list[str]:
    """`text.splitlines()[:n]` without splitting all of it: 4 MB of short lines is a
    million strings (80 MB) to look at the first twenty."""
    size = 4096
    while True:
        lines = text[:size].splitlines()
        if len(lines) > n or size >= len(text):  # line n is complete when n+1 exists
            return lines[:n]
        size *= 4


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
