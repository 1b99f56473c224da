"""Content classification of one `Source`: cheap signatures, then format parsers, then magika.

Tier 1 reads only the head already in memory (magic bytes, framing checks, size) and
names a candidate format in about 0.02 ms; the extension is only a hint to break ties
and never enough on its own. Tier 2 runs that format's parser for evidence (tensor
counts, columns, members...). Text content goes to the text tier (engineering decks,
secrets, source code, tabular text, documents). Tier 3, magika, runs lazily and only
for content that is still unknown. A parser that fails leaves a signature-level tag
and a skip reason — never an exception out of `classify_source`.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zipfile
import zlib
from typing import Any

from agent.classify import archives, datasets, documents, engineering, source, weights
from agent.classify.base import Finding, LimitExceeded, Limits, ParseError, Source, decode_text
from agent.classify.secrets import secret_tags
from agent.events import Tag

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = "1"
_ZIP_ERRORS: tuple[type[Exception], ...] = (zipfile.BadZipFile, zlib.error, EOFError, KeyError)
_ZIP_ERRORS += (NotImplementedError, ValueError, OSError, RuntimeError)
_COMPRESSED = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"(\xb5/\xfd"}


def sniff(head: bytes, size: int, ext: str, basename: str) -> str | None:
    """Tier 1: the binary format the first bytes prove (or strongly suggest), else None."""
    if weights.is_safetensors(head):
        return "safetensors"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    for fmt, magic in _COMPRESSED.items():
        if head.startswith(magic):
            return fmt
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if datasets.is_hdf5(head):
        return "hdf5"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1"):
        return "arrow"
    if head.startswith(b"FEA1"):
        return "feather1"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole2"
    if basename == "saved_model.pb" or (ext == "pb" and basename.startswith("saved_model")):
        return "savedmodel"
    if basename == "variables.index" or basename.startswith("variables.data-"):
        return "tf_checkpoint"
    if weights.is_pickle(head):
        return "pickle"
    if weights.looks_like_onnx(head) or (ext == "onnx" and head[:1] == b"\x08"):
        return "onnx"
    if datasets.is_tfrecord(head):
        return "tfrecord"
    return None


Magika = Any
_magika: Magika | None = None
_magika_failed = False
_magika_lock = threading.Lock()


def _get_magika() -> Magika | None:
    global _magika, _magika_failed
    with _magika_lock:
        if _magika is None and not _magika_failed:
            try:
                from magika import Magika as _M

                _magika = _M()
            except Exception as e:  # not installed, or its model failed to load
                _magika_failed = True
                log.info("magika unavailable, unknown files stay unknown: %s", e)
        return _magika


_MAGIKA_KINDS = {
    "onnx": ("model_weights", "onnx"),
    "pytorch": ("model_weights", "pytorch"),
    "h5": ("model_weights", "hdf5"),
    "parquet": ("dataset", "parquet"),
    "npy": ("dataset", "npy"),
    "npz": ("dataset", "npz"),
    "csv": ("dataset", "csv"),
    "tsv": ("dataset", "tsv"),
    "jsonl": ("dataset", "jsonl"),
    "sqlite": ("dataset", "sqlite"),
    "pem": ("secret", "private_key"),
    "dwg": ("engineering", "dwg"),
    "dxf": ("engineering", "dxf"),
    "stl": ("engineering", "stl"),
    "step": ("engineering", "step"),
    "iges": ("engineering", "iges"),
}


def magika_finding(src: Source, path: str | None) -> Finding | None:
    m = _get_magika()
    if m is None:
        return None
    try:
        if path is not None:
            res = m.identify_path(path)
        else:
            with src.open() as f:
                res = m.identify_bytes(f.read(1 << 20))
        out = res.output
        label, group, mime = str(out.label), str(out.group), str(out.mime_type)
        score = float(res.score)
    except Exception as e:
        log.debug("magika failed on %s: %s", src.name, e)
        return None
    if label in ("unknown", "undefined", "empty", "txt"):
        return None
    evidence = f"magika: {label} ({score:.2f})"
    if label in _MAGIKA_KINDS:
        kind, fmt = _MAGIKA_KINDS[label]
        key = "type" if kind == "secret" else "format"
        return Finding(mime, [Tag(kind, evidence, {key: fmt, "detector": "magika"})])
    if group == "code":
        return Finding(mime, [Tag("source_code", evidence, {"language": label, "git_remote": None,
                                                            "git_commit": None})])  # fmt: skip
    if group == "document":
        return Finding(mime, [Tag("document", evidence, {"format": label, "chars": 0})])
    if group == "archive":
        return Finding(mime, [Tag("archive", evidence, {"format": label, "members": None,
                                                        "nested_kinds": []})])  # fmt: skip
    return Finding(mime)


_NAME_KINDS = {
    **{e: ("model_weights", e) for e in ("safetensors", "gguf", "onnx", "pt", "pth", "ckpt")},
    **{e: ("dataset", e) for e in ("parquet", "arrow", "feather", "csv", "tsv", "jsonl", "npy")},
    **{e: ("dataset", e) for e in ("npz", "tfrecord", "sqlite", "db")},
    **{e: ("document", e) for e in ("pdf", "docx", "xlsx", "pptx", "doc", "xls", "ppt", "md")},
    **{e: ("archive", e) for e in ("zip", "tar", "tgz", "gz", "7z", "rar", "xz", "zst", "bz2")},
    "pem": ("secret", "private_key"),
    "key": ("secret", "private_key"),
}


def name_tags(name: str) -> tuple[Tag, ...]:
    """Tags from a member name alone, for members beyond the limits (evidence says so)."""
    base = name.rsplit("/", 1)[-1].lower()
    ext = base.rsplit(".", 1)[-1] if "." in base else ""
    if ext in _NAME_KINDS:
        kind, fmt = _NAME_KINDS[ext]
        key = "type" if kind == "secret" else "format"
        return (Tag(kind, f"by name only (.{ext})", {key: fmt, "by_name": True}),)
    lang = source.LANGUAGES.get(ext)
    if lang:
        return (Tag("source_code", f"{lang} source, by name only", {"language": lang,
                    "git_remote": None, "git_commit": None, "by_name": True}),)  # fmt: skip
    tag = engineering.extension_tag(ext) or (
        engineering.NATIVE_EXTENSIONS.get(ext)
        and Tag("engineering", f"by name only (.{ext})", {"format": ext, "by_name": True})
    )
    return (tag,) if tag else ()


def _signature_tag(fmt: str, reason: str) -> Tag | None:
    """The tag a signature alone supports, when its parser could not finish."""
    what = f"{fmt} signature; content not parsed ({reason})"
    kinds: dict[str, tuple[str, dict[str, Any]]] = {
        "safetensors": ("model_weights", {"format": "safetensors", "parameters": None,
                                          "tensors": None, "dtype": None}),
        "gguf": ("model_weights", {"format": "gguf", "parameters": None, "tensors": None,
                                   "dtype": None}),
        "onnx": ("model_weights", {"format": "onnx", "parameters": None, "tensors": None,
                                   "dtype": None}),
        "parquet": ("dataset", {"format": "parquet", "columns": [], "rows": None}),
        "arrow": ("dataset", {"format": "arrow", "columns": [], "rows": None}),
        "npy": ("dataset", {"format": "npy", "columns": [], "rows": None}),
        "sqlite": ("dataset", {"format": "sqlite", "columns": [], "rows": None}),
        "hdf5": ("dataset", {"format": "hdf5", "columns": [], "rows": None}),
        "tfrecord": ("dataset", {"format": "tfrecord", "columns": [], "rows": None}),
        "pdf": ("document", {"format": "pdf", "chars": 0}),
    }  # fmt: skip
    if fmt in kinds:
        kind, details = kinds[fmt]
        return Tag(kind, what, dict(details))
    if fmt in ("zip", "tar", "7z", *_COMPRESSED):
        return Tag("archive", what, {"format": fmt, "members": None, "nested_kinds": []})
    return None


class Engine:
    """Classifies Sources with one set of limits; one Engine per classify settings."""

    def __init__(self, limits: Limits, use_magika: bool = True) -> None:
        self.limits = limits
        self.use_magika = use_magika

    def classify(self, src: Source, path: str | None = None) -> Finding:
        """Classify `src` (with `path` when it is a real file); never raises."""
        budget = archives.Budget(self.limits)
        finding = self._classify(src, path, budget)
        if budget.reasons and finding.skipped is None:
            finding.skipped = budget.reasons[0]
        return finding

    def _classify(self, src: Source, path: str | None, budget: archives.Budget) -> Finding:
        fmt = sniff(src.head, src.size, src.ext, src.basename)
        if fmt is not None:
            try:
                finding = self._parse(fmt, src, path, budget)
            except LimitExceeded as e:
                tag = _signature_tag(fmt, e.reason)
                return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped=e.reason)
            except ParseError as e:
                log.debug("%s: %s parser: %s", src.name, fmt, e)
                tag = _signature_tag(fmt, "malformed")
                reason = "truncated" if not src.complete else "malformed"
                return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped=reason)
            except Exception as e:  # a library's own error type on hostile input
                log.warning("%s: %s parser failed: %s: %s", src.name, fmt, type(e).__name__, e)
                tag = _signature_tag(fmt, "error")
                return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped="error")
            if finding is not None:
                return finding
        try:
            text_finding = self._text(src)
        except Exception as e:  # the text tier is defensive too: never raise out
            log.warning("%s: text tier failed: %s: %s", src.name, type(e).__name__, e)
            return Finding("text/plain", skipped="error")
        if text_finding is not None:
            return text_finding
        ext_tag = engineering.extension_tag(src.ext)
        if ext_tag is not None:
            return Finding("application/octet-stream", [ext_tag])
        if self.use_magika and src.size > 0:
            found = magika_finding(src, path)
            if found is not None:
                return found
        return Finding("application/octet-stream")

    def _parse(
        self, fmt: str, src: Source, path: str | None, budget: archives.Budget
    ) -> Finding | None:
        lim = self.limits

        def recurse(member: Source) -> Finding:
            return self._classify(member, None, budget)

        if fmt in ("zip", "tar", "7z", *_COMPRESSED) and src.depth >= lim.max_archive_depth:
            budget.partial("depth_limit")
            tag = _signature_tag(fmt, "depth limit")
            return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped="depth_limit")
        simple = {
            "safetensors": weights.parse_safetensors,
            "gguf": weights.parse_gguf,
            "onnx": weights.parse_onnx,
            "pickle": weights.parse_pickle,
            "npy": datasets.parse_npy,
            "hdf5": datasets.parse_hdf5,
            "parquet": datasets.parse_parquet,
            "arrow": datasets.parse_arrow,
            "tfrecord": datasets.parse_tfrecord,
            "pdf": documents.parse_pdf,
        }
        if fmt in simple:
            return simple[fmt](src, lim)
        if fmt == "sqlite":
            return datasets.parse_sqlite(src, lim, path)
        if fmt == "zip":
            return self._zip(src, budget, recurse)
        if fmt == "tar":
            return archives.walk_tar(src, budget, recurse, name_tags, None)
        if fmt in _COMPRESSED:
            inner = archives.peek_decompressed(src, fmt, 512)
            if len(inner) >= 262 and inner[257:262] == b"ustar":
                return archives.walk_tar(src, budget, recurse, name_tags, fmt)
            return archives.walk_compressed(src, budget, recurse, fmt)
        if fmt == "7z":
            return archives.walk_7z(src, budget, name_tags)
        if fmt == "feather1":
            return Finding(
                "application/x-feather", [datasets.dataset_tag("feather_v1", None, None)]
            )
        if fmt == "ole2":
            return self._ole2(src)
        if fmt == "savedmodel":
            return _savedmodel(src, path)
        if fmt == "tf_checkpoint":
            tag = weights.weights_tag("tf_checkpoint", 0, 0, None, "by file name")
            tag.details.update(parameters=None, tensors=None)
            return Finding("application/x-tf-checkpoint", [tag])
        return None

    def _zip(self, src: Source, budget: archives.Budget, recurse: archives.Classify) -> Finding:
        try:
            found = self._zip_formats(src, recurse)
        except _ZIP_ERRORS as e:
            raise ParseError(f"zip: {type(e).__name__}: {e}") from None
        return found or archives.walk_zip(src, budget, recurse, name_tags)

    def _zip_formats(self, src: Source, recurse: archives.Classify) -> Finding | None:
        """Zip-based formats that are not archives: torch, Office, npz, Keras, FreeCAD."""
        with src.open() as f:
            try:
                zf = zipfile.ZipFile(f)
                names = zf.namelist()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                raise ParseError(f"zip: {e}") from None
            root = weights.torch_root(names)
            if root is not None:
                return weights.parse_torch_zip(zf, root, self.limits)
            office = documents.office_kind(names)
            if office is not None:
                return documents.parse_office(zf, office, self.limits)
            if names and all(n.endswith(".npy") for n in names):
                return _npz(zf, names, self.limits)
            if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
                return self._keras(zf, names, recurse)
            if "Document.xml" in names and src.ext == "fcstd":
                tag = Tag("engineering", "FreeCAD document (Document.xml)", {"format": "freecad"})
                return Finding("application/x-freecad", [tag])
        return None

    def _keras(self, zf: zipfile.ZipFile, names: list[str], recurse: archives.Classify) -> Finding:
        h5 = next(n for n in names if n.endswith(".weights.h5"))
        info = zf.getinfo(h5)
        tag = weights.weights_tag("keras", 0, 0, None, "weights not read")
        if info.file_size <= self.limits.max_member_inline:
            inner = recurse(Source.from_bytes(h5, zf.read(info), depth=99))
            for t in inner.tags:
                if t.kind == "model_weights" and t.details.get("tensors") is not None:
                    d = t.details
                    tag = weights.weights_tag("keras", d["tensors"], d["parameters"], d["dtype"])
        return Finding("application/x-keras", [tag])

    def _ole2(self, src: Source) -> Finding:
        ext_tag = engineering.extension_tag(src.ext)
        if ext_tag is not None:
            return Finding("application/x-ole-storage", [ext_tag])
        fmt = src.ext if src.ext in ("doc", "xls", "ppt", "msg", "vsd") else "ole2"
        tag = documents.document_tag(fmt, 0, "OLE2 container, text not extracted")
        return Finding("application/x-ole-storage", [tag])

    def _text(self, src: Source) -> Finding | None:
        text = decode_text(src.head)
        if text is None:
            return None
        if src.size > len(src.head):
            with src.open() as f:
                text = decode_text(f.read(self.limits.max_text_bytes)) or text
        secrets = secret_tags(text)
        eng = engineering.text_tag(text, src.ext)
        if eng is not None:
            return Finding("text/plain", [eng, *secrets], text=text)
        lang = source.language_for(src.name, src.head)
        if lang is not None and src.ext not in ("csv", "tsv", "jsonl"):
            tag = source.source_tag(lang, None)
            comments = source.comments(text, lang, self.limits.max_text_bytes)
            return Finding(f"text/x-{lang}", [tag, *secrets], text=comments)
        if src.ext in ("jsonl", "ndjson") or (src.ext != "json" and datasets.is_jsonl(text)):
            try:
                found = datasets.parse_jsonl(src, self.limits, text)
            except (ValueError, ParseError):
                pass
            else:
                found.tags += secrets
                return found
        delim = datasets.sniff_delimited(text, src.ext)
        if delim is not None and src.ext not in documents.TEXT_DOC_EXT:
            try:
                found = datasets.parse_delimited(src, self.limits, text, delim)
            except ParseError:
                pass  # not tabular after all: a text document
            else:
                found.tags += secrets
                return found
        if secrets and (src.ext in ("pem", "key", "") or "PRIVATE KEY-----" in text[:100]):
            return Finding("application/x-pem-file", secrets, text=text)
        found = documents.text_document(text, src.ext)
        found.tags += secrets
        return found


def _npz(zf: zipfile.ZipFile, names: list[str], limits: Limits) -> Finding:
    rows = None
    for n in names[:1]:
        with zf.open(n) as fh:
            head = fh.read(4096)
        try:
            found = datasets.parse_npy(Source.from_bytes(n, head), limits)
            rows = found.tags[0].details.get("rows")
        except ParseError:
            pass
    columns = [n[:-4] for n in names][: datasets.MAX_COLUMNS]
    return Finding("application/x-npz", [datasets.dataset_tag("npz", columns, rows)],
                   text=" ".join(columns))  # fmt: skip


def _savedmodel(src: Source, path: str | None) -> Finding:
    head = src.head
    if not head or head[0] not in (0x08, 0x12):
        raise ParseError("saved_model.pb does not start like a SavedModel protobuf")
    params: int | None = None
    if path is not None:
        var_dir = os.path.join(os.path.dirname(path), "variables")
        try:
            data = [e for e in os.scandir(var_dir) if e.name.startswith("variables.data-")]
            params = sum(e.stat(follow_symlinks=False).st_size for e in data) // 4
        except OSError:
            params = None
    tag = weights.weights_tag("tf_savedmodel", 0, params or 0, None, "size-based estimate")
    tag.details.update(tensors=None, parameters=params)
    return Finding("application/x-tf-savedmodel", [tag])


def u64(data: bytes, offset: int = 0) -> int:
    return int(struct.unpack_from("<Q", data, offset)[0])
