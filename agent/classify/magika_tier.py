"""Tier 3 of the classifier: magika, loaded lazily, for content no parser recognised.

magika (a small ONNX model shipped in its wheel, offline) labels about 200 content
types in a few milliseconds, but has no label for safetensors or GGUF, so it runs last
and only on files still unknown. Its model loads on first use; when it is not installed
or fails to load, unknown files stay unknown and this is logged once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from agent.classify.base import Finding, Source, promised_tag

log = logging.getLogger(__name__)

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


def warm_up() -> None:
    """Load the model now, off the caller's path: a classifier starts this beside a big
    file's hash (about 1.3 s for 2 GB), so that magika's 0.1 s load is not added after
    it when the cheap tiers left the content unknown."""
    _get_magika()


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
        return Finding(mime, [promised_tag(kind, evidence, **{key: fmt}, detector="magika")])
    group_kinds = {"code": ("source_code", "language"), "document": ("document", "format")}
    group_kinds["archive"] = ("archive", "format")
    if group in group_kinds:
        kind, key = group_kinds[group]
        return Finding(mime, [promised_tag(kind, evidence, **{key: label}, detector="magika")])
    return Finding(mime)
