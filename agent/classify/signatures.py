"""Tier 1 of the classifier: what the first bytes prove, and what a name alone suggests.

`sniff` names the binary format that the head of a content proves (magic bytes and
framing checks, the extension only to break ties) in about 0.02 ms; `signature_tag` is
the tag a signature alone supports when the format's parser could not finish, and
`name_tags` the tag for an archive member that was never read (beyond a limit), with
evidence that says so. Used by `tiers.py`.
"""

from __future__ import annotations

from typing import Any

from agent.classify import datasets, engineering, models, onnx_graph, source, tables, weights
from agent.classify.base import promised_tag
from agent.classify.secrets import der_kind
from agent.events import Tag

COMPRESSED = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"(\xb5/\xfd"}
# formats proved by a fixed prefix alone, tried in this order after HDF5
FIXED_MAGIC = {
    "parquet": b"PAR1",
    "arrow": b"ARROW1",
    "feather1": b"FEA1",
    "npy": b"\x93NUMPY",
    "sqlite": b"SQLite format 3\x00",
    "ole2": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
}


def sniff(head: bytes, size: int, ext: str, basename: str) -> str | None:
    """Tier 1: the binary format the first bytes prove (or strongly suggest), else None."""
    if weights.is_safetensors(head) and (
        ext == "safetensors" or 8 + int.from_bytes(head[:8], "little") <= size
    ):
        # JSON Lines starting `{"a":1}\n` reads as a length prefix of 8e17: a header
        # longer than the file is only believed of a file named .safetensors
        return "safetensors"
    if source.is_git_bundle(head):
        return "git_bundle"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    for fmt, magic in COMPRESSED.items():
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
    for fmt, magic in FIXED_MAGIC.items():
        if head.startswith(magic):
            return fmt
    if basename == "saved_model.pb" or (ext == "pb" and basename.startswith("saved_model")):
        return "savedmodel"
    if basename == "variables.index" or basename.startswith("variables.data-"):
        return "tf_checkpoint"
    if weights.is_pickle(head):
        return "pickle"
    if ext == "mlmodel" and models.sniff_model(head, size, ext) == "coreml":
        return "coreml"  # Core ML's protobuf opens like ONNX's: the name breaks the tie
    if onnx_graph.looks_like_onnx(head) or (ext == "onnx" and head[:1] == b"\x08"):
        return "onnx"
    if datasets.is_tfrecord(head):
        return "tfrecord"
    if head[:1] == b"0" and size <= len(head) and der_kind(head, size) is not None:
        return "der"
    return tables.sniff_table(head, size, ext) or models.sniff_model(head, size, ext)


_NAME_KINDS = {
    **{e: ("model_weights", e) for e in ("safetensors", "gguf", "onnx", "pt", "pth", "ckpt")},
    **{e: ("dataset", e) for e in ("parquet", "arrow", "feather", "csv", "tsv", "jsonl", "npy")},
    **{e: ("dataset", e) for e in ("npz", "tfrecord", "sqlite", "db")},
    **{e: ("document", e) for e in ("pdf", "docx", "xlsx", "pptx", "doc", "xls", "ppt", "md")},
    **{e: ("archive", e) for e in ("zip", "tar", "tgz", "gz", "7z", "rar", "xz", "zst", "bz2")},
    **{e: ("model_weights", e) for e in ("tflite", "mlmodel")},
    **{e: ("dataset", e) for e in ("orc", "dta", "sav", "sas7bdat", "arff")},
    "p12": ("secret", "pkcs12"),
    "pfx": ("secret", "pkcs12"),
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
        return (promised_tag(kind, f"by name only (.{ext})", **{key: fmt}, by_name=True),)
    lang = source.LANGUAGES.get(ext)
    if lang:
        evidence = f"{lang} source, by name only"
        return (promised_tag("source_code", evidence, language=lang, by_name=True),)
    if ext in engineering.NATIVE_EXTENSIONS:
        fmt = engineering.NATIVE_EXTENSIONS[ext][0]
        return (promised_tag("engineering", f"by name only (.{ext})", format=fmt, by_name=True),)
    return ()


def signature_tag(fmt: str, reason: str) -> Tag | None:
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
        **{f: ("dataset", {"format": f, "columns": [], "rows": None})
           for f in ("orc", "stata", "spss", "sas")},
        **{f: ("model_weights", {"format": f, "parameters": None, "tensors": None,
                                 "dtype": None})
           for f in ("tflite", "fasttext", "word2vec", "coreml", "tensorrt")},
    }  # fmt: skip
    if fmt in kinds:
        kind, details = kinds[fmt]
        return promised_tag(kind, what, **details)
    if fmt in ("zip", "tar", "7z", *COMPRESSED):
        return Tag("archive", what, {"format": fmt, "members": None, "nested_kinds": []})
    return None
