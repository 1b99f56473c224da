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
import zipfile
import zlib

from agent.classify import (
    archives,
    code_comments,
    datasets,
    delimited,
    documents,
    engineering,
    models,
    onnx_graph,
    source,
    tables,
    weights,
)
from agent.classify.base import (
    Deadline,
    DeadlineExceeded,
    Finding,
    LimitExceeded,
    Limits,
    ParseError,
    Source,
    decode_text,
)
from agent.classify.budget import Budget
from agent.classify.magika_tier import magika_finding, warm_up
from agent.classify.secrets import credential_file_tags, der_tags, public_material, secret_tags
from agent.classify.signatures import COMPRESSED, name_tags, signature_tag, sniff
from agent.events import Tag

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = "7"
# structured text whose lines may carry a steady count of commas without being a table
_NOT_TABULAR = {"json", "yaml", "yml", "xml", "toml", "ini", "cfg", "conf", "html", "htm"}
_NOT_TABULAR |= set(documents.TEXT_DOC_EXT) - {"txt", "text"}  # tables ship as .txt too
_ZIP_ERRORS: tuple[type[Exception], ...] = (zipfile.BadZipFile, zlib.error, EOFError, KeyError)
_ZIP_ERRORS += (NotImplementedError, ValueError, OSError, RuntimeError)


class ContentTiers:
    """Classifies Sources with one set of limits; one instance per classify settings."""

    def __init__(self, limits: Limits, use_magika: bool = True) -> None:
        self.limits = limits
        self.use_magika = use_magika

    def classify(self, src: Source, path: str | None = None, magika: bool = True) -> Finding:
        """Classify `src` (with `path` when it is a real file); never raises.

        `magika=False` leaves an unknown top-level content unknown (`is_unknown`), for a
        caller that runs `identify` later — after hashing a big file, so that the model's
        load does not compete with the hash for the CPU and the GIL.
        """
        budget = Budget(self.limits)
        budget.magika = magika
        finding = self._classify(src, path, budget)
        if budget.reasons and finding.skipped is None:
            finding.skipped = budget.reasons[0]
        if "timeout" in budget.reasons or finding.skipped == "timeout":
            # cut short outranks every other partial reason: policy must see it
            finding.skipped = "timeout"
            finding.cut_at = src.deadline.where
        return finding

    def _classify(self, src: Source, path: str | None, budget: Budget) -> Finding:
        fmt = sniff(src.head, src.size, src.ext, src.basename)
        if fmt is not None:
            try:
                finding = self._parse(fmt, src, path, budget)
            except LimitExceeded as e:
                return _refused(fmt, e.reason, budget)
            except ParseError as e:
                if src.deadline.expired:  # a library wrapped the deadline in its own error
                    return _refused(fmt, "timeout", budget)
                log.debug("%s: %s parser: %s", src.name, fmt, e)
                tag = signature_tag(fmt, "malformed")
                reason = "truncated" if not src.complete else "malformed"
                return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped=reason)
            except Exception as e:  # a library's own error type on hostile input
                if src.deadline.expired:
                    return _refused(fmt, "timeout", budget)
                log.warning("%s: %s parser failed: %s: %s", src.name, fmt, type(e).__name__, e)
                tag = signature_tag(fmt, "error")
                return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped="error")
            if finding is not None:
                return finding
        if src.deadline.expired:
            budget.partial("timeout")
            return Finding("application/octet-stream", skipped="timeout")
        try:
            text_finding = self._text(src)
        except DeadlineExceeded:
            budget.partial("timeout")
            return Finding("text/plain", skipped="timeout")
        except Exception as e:  # the text tier is defensive too: never raise out
            log.warning("%s: text tier failed: %s: %s", src.name, type(e).__name__, e)
            return Finding("text/plain", skipped="error")
        if text_finding is not None:
            return text_finding
        eng_tag = engineering.binary_tag(src.head, src.size, src.ext)
        if eng_tag is not None:
            return Finding(f"application/x-{eng_tag.details['format']}", [eng_tag])
        ext_tag = engineering.extension_tag(src.ext)
        if ext_tag is not None:
            return Finding("application/octet-stream", [ext_tag])
        if src.deadline.expired:
            budget.partial("timeout")
            return Finding("application/octet-stream", skipped="timeout")
        if self.use_magika and src.size > 0 and (budget.magika or src.depth > 0):
            return self.identify(src, path) or Finding("application/octet-stream")
        return Finding("application/octet-stream")

    def identify(self, src: Source, path: str | None) -> Finding | None:
        """Tier 3 on its own: magika's label for a content no parser recognised."""
        return magika_finding(src, path) if self.use_magika and src.size > 0 else None

    def prepare_identify(self) -> None:
        """Make `identify` cheap later (loads magika's model); safe from any thread."""
        if self.use_magika:
            warm_up()

    @staticmethod
    def is_unknown(finding: Finding) -> bool:
        return not finding.tags and finding.content_type == "application/octet-stream"

    def _parse(self, fmt: str, src: Source, path: str | None, budget: Budget) -> Finding | None:
        lim = self.limits

        def recurse(member: Source) -> Finding:
            return self._classify(member, None, budget)

        if fmt in ("zip", "tar", "7z", *COMPRESSED) and src.depth >= lim.max_archive_depth:
            budget.partial("depth_limit")
            tag = signature_tag(fmt, "depth limit")
            return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped="depth_limit")
        simple = {
            "safetensors": weights.parse_safetensors,
            "gguf": weights.parse_gguf,
            "onnx": onnx_graph.parse_onnx,
            "pickle": weights.parse_pickle,
            "npy": datasets.parse_npy,
            "hdf5": datasets.parse_hdf5,
            "parquet": datasets.parse_parquet,
            "tfrecord": datasets.parse_tfrecord,
            "pdf": documents.parse_pdf,
        }
        if fmt in simple:
            return simple[fmt](src, lim)
        if fmt == "sqlite":
            return datasets.parse_sqlite(src, lim, path)
        if fmt == "arrow":
            return datasets.parse_arrow(src, lim, path)
        if fmt == "zip":
            return self._zip(src, budget, recurse)
        if fmt == "tar":
            return archives.walk_tar(src, budget, recurse, name_tags, None)
        if fmt in COMPRESSED:
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
            tag = weights.weights_tag("tf_checkpoint", None, None, None, "by file name")
            return Finding("application/x-tf-checkpoint", [tag])
        if fmt == "git_bundle":
            return Finding("application/x-git-bundle", source.git_bundle_tags(src.head))
        if fmt in ("tflite", "fasttext", "word2vec", "coreml", "tensorrt"):
            return models.parse_model(fmt, src, lim)
        if fmt in ("orc", "stata", "spss", "sas"):
            return tables.parse_table(fmt, src, lim)
        if fmt == "der":
            found = der_tags(src.head, src.size)
            return Finding(*found) if found is not None else None
        return None

    def _zip(self, src: Source, budget: Budget, recurse: archives.Classify) -> Finding:
        try:
            found = self._zip_formats(src, recurse)
        except _ZIP_ERRORS as e:
            raise ParseError(f"zip: {type(e).__name__}: {e}") from None
        return found or archives.walk_zip(src, budget, recurse, name_tags)

    def _zip_formats(self, src: Source, recurse: archives.Classify) -> Finding | None:
        """Zip-based formats that are not archives: torch, Office, npz, Keras, FreeCAD."""
        with src.open() as f:
            zf = archives.open_zip(f, self.limits)
            names = zf.namelist()
            root = weights.torch_root(names)
            if root is not None:
                return weights.parse_torch_zip(zf, root, self.limits, src.name, src.deadline)
            office = documents.office_kind(names)
            if office is not None:
                return documents.parse_office(zf, office, self.limits)
            if names and all(n.endswith(".npy") for n in names):
                return _npz(zf, names, self.limits)
            if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
                return self._keras(zf, names, recurse, src.deadline)
            if "Document.xml" in names and src.ext == "fcstd":
                tag = Tag("engineering", "FreeCAD document (Document.xml)", {"format": "freecad"})
                return Finding("application/x-freecad", [tag])
        return None

    def _keras(
        self, zf: zipfile.ZipFile, names: list[str], recurse: archives.Classify, deadline: Deadline
    ) -> Finding:
        h5 = next(n for n in names if n.endswith(".weights.h5"))
        info = zf.getinfo(h5)
        tag = weights.weights_tag("keras", None, None, None, "weights not read")
        if info.file_size <= self.limits.max_member_inline:
            inner = recurse(Source.from_bytes(h5, zf.read(info), depth=99, deadline=deadline))
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
        text = decode_text(src.head) or _legacy_table_text(src.head, src.ext)
        if text is None:
            return None
        if src.size > len(src.head):
            with src.open() as f:
                text = decode_text(f.read(self.limits.max_text_bytes)) or text
        src.deadline.check()
        secrets = secret_tags(text) + credential_file_tags(text)
        src.deadline.check()
        vino = models.openvino_ir(text) if text.lstrip()[:1] == "<" else None
        if vino is not None:
            vino.tags += secrets
            return vino
        public = public_material(text) if src.ext not in documents.TEXT_DOC_EXT else None
        if public is not None and not secrets:  # shared on purpose: neither secret nor prose
            return Finding(f"application/x-{public}", [])
        eng = engineering.text_tag(text, src.ext)
        if eng is not None:
            return Finding("text/plain", [eng, *secrets], text=text)
        lang = None if delimited.is_matrix_market(text) else source.language_for(src.name, src.head)
        if lang is not None and src.ext not in ("csv", "tsv", "jsonl"):
            tag = source.source_tag(lang, None)
            comments = code_comments.comments(text, lang, self.limits.max_text_bytes)
            return Finding(f"text/x-{lang}", [tag, *secrets], text=comments)
        if src.ext in ("jsonl", "ndjson") or (src.ext != "json" and datasets.is_jsonl(text)):
            try:
                found = datasets.parse_jsonl(src, self.limits, text)
            except (ValueError, ParseError):
                pass
            else:
                found.tags += secrets
                return found
        vectors = models.word2vec_text(text) or delimited.parse_arff(text)
        if vectors is not None:
            vectors.tags += secrets
            return vectors
        records = tables.json_records(src, text) if text.lstrip()[:1] == "[" else None
        if records is not None:
            records.tags += secrets
            return records
        src.deadline.check()  # the parsers above take any ParseError (a timeout too) as "not it"
        delim = None if src.ext in _NOT_TABULAR else delimited.sniff_delimited(text, src.ext)
        if delim is not None:
            try:
                found = delimited.parse_delimited(src, self.limits, text, delim)
            except ParseError:
                pass  # not tabular after all: a text document
            else:
                found.tags += secrets
                return found
        if secrets and (src.ext in ("pem", "key", "") or "PRIVATE KEY-----" in text[:100]):
            return Finding("application/x-pem-file", secrets, text=text)
        src.deadline.check()
        found = documents.text_document(text, src.ext)
        found.tags += secrets
        return found


def _legacy_table_text(head: bytes, ext: str) -> str | None:
    """A table file in a legacy 8-bit encoding (cp852, cp1252...): neither UTF-8 nor
    GB18030, but no control bytes either. Read as latin-1, which keeps every delimiter
    and digit where it is; only tabular extensions qualify."""
    if ext not in ("csv", "tsv", "tab", "dat") or not head:
        return None
    sample = head[:8192]
    if any(b < 9 or 13 < b < 32 or b == 127 for b in sample):
        return None
    return head.decode("latin-1")


def _refused(fmt: str, reason: str, budget: Budget) -> Finding:
    """The signature-level finding of a parser that hit a bound (`reason`)."""
    if reason == "timeout":
        budget.partial("timeout")
    tag = signature_tag(fmt, reason)
    return Finding(f"application/x-{fmt}", [tag] if tag else [], skipped=reason)


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
    extra = "parameters estimated from the variables' size" if params is not None else ""
    tag = weights.weights_tag("tf_savedmodel", None, params, None, extra)
    return Finding("application/x-tf-savedmodel", [tag])
