"""Archives: zip, tar (gz, bz2, xz, zst), single compressed files and 7z, with hard limits.

Members are read as streams (never extracted to disk), hashed, and classified by the
engine through the `classify` callback with their name and bytes; nested archives
recurse until `classify.max_archive_depth`. One `Budget` (agent/classify/budget.py) is
shared by the whole walk of a top-level file so the limits on member count and expanded
bytes are global, and every decompressing reader checks the expansion ratio as it goes —
a zip bomb, 42.zip or an overlapping-entry quine ends as a partial tag with a counted
reason, not as gigabytes in memory. 7z is listed from its header (py7zr) and classified
by name only.
"""

from __future__ import annotations

import itertools
import struct
import tarfile
import zipfile
from collections.abc import Callable
from typing import BinaryIO, cast

from agent.classify.base import (
    DeadlineExceeded,
    Finding,
    LimitExceeded,
    Limits,
    Member,
    ParseError,
    Source,
)
from agent.classify.budget import (
    CHUNK,
    READ_ERRORS,
    Budget,
    Counting,
    Expanding,
    Readable,
    decompressor,
    read_member,
)
from agent.events import Tag

Classify = Callable[[Source], Finding]
MAX_MEMBER_TAGS = 32


def walk_zip(src: Source, budget: Budget, classify: Classify, name_tags: NameTags) -> Finding:
    lim = budget.limits
    members: list[Member] = []
    texts = _Texts(lim.max_text_bytes)
    with src.open() as f:
        zf = open_zip(f, lim)
        infos = zf.infolist()
        _check_overlap(infos)
        for info in infos:
            if info.is_dir():
                continue
            if budget.members >= lim.max_archive_members:
                budget.partial("member_limit")
                break
            if src.deadline.expired:
                budget.partial("timeout")
                break
            budget.members += 1
            src.deadline.where = f"archive member {budget.members}"
            name = info.filename
            ratio = info.file_size / info.compress_size if info.compress_size else 0
            if (info.file_size and not info.compress_size) or ratio > lim.max_compression_ratio:
                budget.partial("compression_ratio")
                members.append(Member(name, info.file_size, None, name_tags(name)))
                continue
            if budget.expanded + info.file_size > lim.max_archive_expanded_bytes:
                budget.partial("expanded_limit")
                members.append(Member(name, info.file_size, None, name_tags(name)))
                continue
            try:
                with zf.open(info) as fh:
                    member, sha = read_member(fh, name, src, budget)
            except DeadlineExceeded:
                budget.partial("timeout")
                members.append(Member(name, info.file_size, None, name_tags(name)))
                break
            except READ_ERRORS as e:
                budget.partial("encrypted" if "encrypted" in str(e) else "malformed")
                members.append(Member(name, info.file_size, None, name_tags(name)))
                continue
            budget.expanded += member.size
            finding = _member_finding(member, sha, budget, classify)
            texts.add(finding.text)
            members.append(
                Member(name, member.size, sha, tuple(finding.tags), tuple(finding.parents))
            )
    return _archive_finding("zip", "application/zip", members, texts.parts, budget)


# central directory entries zipfile may parse, as a multiple of max_archive_members: it
# builds a ZipInfo (~500 bytes) for every entry before the first member is read
MAX_ZIP_ENTRIES_FACTOR = 10


def open_zip(f: BinaryIO, limits: Limits) -> zipfile.ZipFile:
    """`zipfile.ZipFile(f)` after checking the end record, so that a central directory
    declaring millions of entries is refused before zipfile parses it into memory."""
    try:
        end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # stable since 2.x
        f.seek(0)
    except (OSError, ValueError, EOFError, struct.error) as e:
        raise ParseError(f"zip: end record: {e}") from None
    if end is not None:
        entries, cd_size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
        max_entries = limits.max_archive_members * MAX_ZIP_ENTRIES_FACTOR
        if entries > max_entries or cd_size > max_entries * 1024:
            raise LimitExceeded("member_limit", f"zip central directory declares {entries} entries")
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ParseError(f"zip: {e}") from None


class _Texts:
    """Members' texts, kept while their total is under `limit`: the texts of 500
    members of 4 MB each would otherwise be held together (2 GB) to keep 4 MB."""

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.room = limit

    def add(self, text: str) -> None:
        if self.room > 0 and text:
            self.parts.append(text[: self.room])
            self.room -= len(self.parts[-1])


def _check_overlap(infos: list[zipfile.ZipInfo]) -> None:
    """Entries whose data overlap (the Fifield non-recursive zip bomb) are refused."""
    spans = sorted(
        (i.header_offset, i.header_offset + 30 + len(i.orig_filename) + i.compress_size)
        for i in infos
    )
    for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
        if s2 < e1:
            raise LimitExceeded("zip_overlap", "zip entries overlap (a zip bomb)")


def _member_finding(member: Source, sha: str, budget: Budget, classify: Classify) -> Finding:
    if sha in budget.ancestors:
        budget.partial("archive_quine")
        return Finding("application/octet-stream")
    budget.ancestors.add(sha)
    try:
        return classify(member)
    finally:
        budget.ancestors.discard(sha)


MAX_TAR_META = 1 << 20  # one pax header or GNU long name; real ones are a few hundred bytes
MAX_TAR_META_TOTAL = 16 << 20  # all of them in one tar (tarfile keeps every TarInfo)
_TAR_META = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE}
    | {tarfile.SOLARIS_XHDTYPE}
)


def _bounded_tarinfo() -> type[tarfile.TarInfo]:
    """A TarInfo class for one walk: tarfile reads a pax header or a GNU long name whole
    into memory before it yields the member, and keeps every member's TarInfo; a
    compressed tar could declare 2 GB of them. Refused past MAX_TAR_META each and
    MAX_TAR_META_TOTAL in all."""
    used = 0

    class Bounded(tarfile.TarInfo):
        def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
            nonlocal used
            if self.type in _TAR_META:
                used += self.size
                if self.size > MAX_TAR_META or used > MAX_TAR_META_TOTAL:
                    raise LimitExceeded(
                        "header_too_large", f"tar metadata header of {self.size} bytes"
                    )
            return super()._proc_member(tarfile_)  # type: ignore[misc]

    return Bounded


def walk_tar(
    src: Source, budget: Budget, classify: Classify, name_tags: NameTags, compression: str | None
) -> Finding:
    lim = budget.limits
    members: list[Member] = []
    texts = _Texts(lim.max_text_bytes)
    fmt = f"tar.{_SHORT[compression]}" if compression else "tar"
    refused = False
    with src.open() as f:
        raw = Counting(f)
        stream: Readable = raw
        if compression:
            stream = Expanding(decompressor(compression, raw), raw, budget, CHUNK)
        try:
            with tarfile.open(
                fileobj=cast(BinaryIO, stream), mode="r|", tarinfo=_bounded_tarinfo()
            ) as tf:
                for ti in tf:
                    if not _tar_size_plausible(ti, src, budget, compression):
                        refused = True
                        break
                    if not ti.isreg():
                        continue
                    if budget.members >= lim.max_archive_members:
                        budget.partial("member_limit")
                        break
                    budget.members += 1
                    src.deadline.where = f"archive member {budget.members}"
                    if (
                        not compression
                        and budget.expanded + ti.size > lim.max_archive_expanded_bytes
                    ):
                        budget.partial("expanded_limit")
                        members.append(Member(ti.name, ti.size, None, name_tags(ti.name)))
                        continue
                    fh = tf.extractfile(ti)
                    if fh is None:
                        continue
                    member, sha = read_member(fh, ti.name, src, budget)
                    if not compression:
                        budget.expanded += member.size
                    finding = _member_finding(member, sha, budget, classify)
                    texts.add(finding.text)
                    members.append(
                        Member(
                            ti.name, member.size, sha, tuple(finding.tags), tuple(finding.parents)
                        )
                    )
        except LimitExceeded as e:
            budget.partial(e.reason)
        except READ_ERRORS as e:
            if not members:
                raise ParseError(f"{fmt}: {e}") from None
            budget.partial("truncated")
    if refused and not members:
        raise ParseError(f"{fmt}: a member declares more bytes than the archive holds")
    mime = f"application/x-{fmt.replace('.', '-')}"
    return _archive_finding(fmt, mime, members, texts.parts, budget)


def _tar_size_plausible(
    ti: tarfile.TarInfo, src: Source, budget: Budget, compression: str | None
) -> bool:
    """False (with the reason noted) for a member tarfile could not skip in bounded
    time: its declared size runs past the end of the archive (malformed) or, in a
    compressed tar whose real length is unknown, past the expanded-bytes budget.
    A streaming tarfile skips a member by reading it, so iteration must stop here."""
    if not compression and ti.offset_data + ti.size > src.size:
        budget.partial("malformed")
        return False
    if compression and budget.expanded + ti.size > budget.limits.max_archive_expanded_bytes:
        budget.partial("expanded_limit")
        return False
    return True


_SHORT = {"gzip": "gz", "bzip2": "bz2", "xz": "xz", "zstd": "zst"}


def peek_decompressed(src: Source, compression: str, n: int = 1024) -> bytes:
    with src.open() as f:
        try:
            return decompressor(compression, Counting(f)).read(n)
        except READ_ERRORS as e:
            raise ParseError(f"{compression}: {e}") from None


def walk_compressed(src: Source, budget: Budget, classify: Classify, compression: str) -> Finding:
    """A single compressed file (x.safetensors.gz): one member named without the suffix."""
    name = src.name
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".tgz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    with src.open() as f:
        raw = Counting(f)
        stream = Expanding(decompressor(compression, raw), raw, budget, CHUNK)
        try:
            member, sha = read_member(stream, name, src, budget)
        except LimitExceeded as e:
            budget.partial(e.reason)
            return _archive_finding(compression, f"application/{compression}", [], [], budget)
        except READ_ERRORS as e:
            raise ParseError(f"{compression}: {e}") from None
    budget.members += 1
    finding = _member_finding(member, sha, budget, classify)
    members = [Member(name, member.size, sha, tuple(finding.tags), tuple(finding.parents))]
    return _archive_finding(
        compression, f"application/{compression}", members, [finding.text], budget
    )


def walk_7z(src: Source, budget: Budget, name_tags: NameTags) -> Finding:
    try:
        import py7zr
    except ImportError:
        budget.partial("missing_library")
        return _archive_finding("7z", "application/x-7z-compressed", [], [], budget)
    members: list[Member] = []
    try:
        with src.open() as f, py7zr.SevenZipFile(f, mode="r") as z:
            for info in z.list():
                if info.is_directory:
                    continue
                if budget.members >= budget.limits.max_archive_members:
                    budget.partial("member_limit")
                    break
                src.deadline.check()
                budget.members += 1
                size = int(info.uncompressed or 0)
                members.append(Member(info.filename, size, None, name_tags(info.filename)))
    except LimitExceeded:
        raise
    except Exception as e:  # py7zr raises its own exception types on bad archives
        if src.deadline.expired:
            raise DeadlineExceeded(src.deadline.where) from None
        raise ParseError(f"7z: {type(e).__name__}: {e}") from None
    budget.partial("header_only")
    return _archive_finding("7z", "application/x-7z-compressed", members, [], budget)


NameTags = Callable[[str], tuple[Tag, ...]]


def _archive_finding(
    fmt: str, mime: str, members: list[Member], texts: list[str], budget: Budget
) -> Finding:
    nested: dict[str, None] = {}
    member_tags: list[Tag] = []
    seen: set[tuple[str, str]] = set()
    for m in members:
        for t in m.tags:
            nested.setdefault(t.kind)
            key = (t.kind, str(t.details.get("format", "")))
            if key in seen or len(member_tags) >= MAX_MEMBER_TAGS:
                continue
            seen.add(key)
            details = {**t.details, "member": m.name}
            member_tags.append(Tag(t.kind, f"in {m.name}: {t.evidence}", details))
    evidence = f"{fmt} archive, {len(members)} members"
    if nested:
        evidence += ", contains " + ", ".join(nested)
    if budget.reasons:
        evidence += f" (partial: {', '.join(budget.reasons)})"
    tag = Tag(
        "archive",
        evidence,
        {"format": fmt, "members": len(members), "nested_kinds": list(nested)},
    )
    limit = budget.limits.max_text_bytes
    text = "\n".join([m.name for m in members[:10_000]] + texts)[:limit]
    return Finding(
        mime,
        # tags with unknown (None) details first: policy facts keep the largest number
        # of several same-kind tags, and a later None must not hide an earlier count
        [tag, *sorted(member_tags, key=_known_details)],
        text=text,
        members=members,
        skipped=budget.reasons[0] if budget.reasons else None,
        parents=_lineage(members),
    )


def _known_details(t: Tag) -> int:
    return sum(1 for v in t.details.values() if v is not None)


def _lineage(members: list[Member]) -> list[str]:
    """Hashes of every tagged member, nested ones included, first seen first."""
    out: dict[str, None] = {}
    for m in members:
        if m.sha256 and m.tags:
            out.setdefault(m.sha256)
        for sha in m.nested:
            out.setdefault(sha)
    return list(out)
