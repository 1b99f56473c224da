"""The budget of one classification, and the bounded readers that spend it.

`Budget` is shared by everything one top-level file leads to (tiers, nested archives,
their members) so that the limits on member count and expanded bytes are global and a
partial result says why. The readers here enforce it while bytes stream: `Expanding`
stops a decompressor at the byte budget or the compression ratio, `read_member` hashes a
whole member and keeps only its head. They sit below `archives` (the walkers of each
format) and `tiers`, which only need a budget to pass down.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast

from agent import metrics
from agent.classify.base import LimitExceeded, Limits, ParseError, Source

CHUNK = 1 << 20


@dataclass(slots=True)
class Budget:
    """Limits shared across one recursive walk; `reasons` collects why it was partial."""

    limits: Limits
    members: int = 0
    expanded: int = 0
    ancestors: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    magika: bool = True  # run magika on a still-unknown top-level content now

    def partial(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)


class Counting:
    """A reader that counts what it has read (the compressed side of a stream)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True


class Expanding:
    """A decompressed stream that stops at the expanded-bytes budget or the ratio bound."""

    def __init__(self, inner: BinaryIO, raw: Counting, budget: Budget, slack: int) -> None:
        self.inner = inner
        self.raw = raw
        self.budget = budget
        self.out = 0
        self.slack = slack

    def read(self, n: int = -1) -> bytes:
        lim = self.budget.limits
        data = self.inner.read(CHUNK if n is None or n < 0 else min(n, CHUNK * 4))
        self.out += len(data)
        self.budget.expanded += len(data)
        if self.budget.expanded > lim.max_archive_expanded_bytes:
            raise LimitExceeded("expanded_limit", "archive expands past the byte limit")
        if self.out > self.slack and self.out > lim.max_compression_ratio * max(self.raw.count, 1):
            raise LimitExceeded("compression_ratio", "archive expands past the ratio limit")
        return data


def decompressor(fmt: str, raw: Counting) -> BinaryIO:
    if fmt == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=cast(BinaryIO, raw), mode="rb"))
    if fmt == "bzip2":
        return cast(BinaryIO, bz2.BZ2File(cast(BinaryIO, raw), "rb"))
    if fmt == "xz":
        return cast(BinaryIO, lzma.LZMAFile(cast(BinaryIO, raw), "rb"))
    if fmt == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ParseError("zstandard not installed") from None
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, raw)))
    raise ParseError(f"no decompressor for {fmt}")


READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
    tarfile.TarError,
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def read_member(fh: Readable, name: str, src: Source, budget: Budget) -> tuple[Source, str]:
    """Stream one member: hash all of it, keep it whole if small, else only its head."""
    lim = budget.limits
    h = hashlib.sha256()
    keep = bytearray()
    total = 0
    while True:
        src.deadline.check()
        chunk = fh.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        h.update(chunk)
        if len(keep) < lim.max_member_inline:
            keep += chunk[: lim.max_member_inline - len(keep)]
    metrics.HASHED_BYTES.inc(total)
    member = Source.from_bytes(
        name, bytes(keep), depth=src.depth + 1, size=total, deadline=src.deadline
    )
    return member, h.hexdigest()
