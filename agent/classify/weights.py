"""Model weights parsers: safetensors, GGUF, ONNX, PyTorch zip and legacy pickles.

Each reads only headers (bounded by `Limits`) and returns a `model_weights` tag with the
format, tensor count, parameter count and dominant dtype as evidence. Nothing is ever
unpickled: PyTorch's `data.pkl` goes through `pickle_vm`, which only walks opcodes.
Keras/HDF5 lives in `datasets.py` beside the other HDF5 reader; SavedModel files are
recognised by name in `tiers.py`.
"""

from __future__ import annotations

import json
import logging
import struct
import zipfile
from collections import Counter
from typing import Any, BinaryIO

from agent.classify.base import (
    Deadline,
    Finding,
    LimitExceeded,
    Limits,
    ParseError,
    Source,
    human_count,
)
from agent.classify.pickle_vm import PickleSummary, scan_pickle
from agent.events import Tag

log = logging.getLogger(__name__)

MAX_PICKLE_BYTES = 64 << 20


_LABELS = {
    "safetensors": "safetensors header",
    "gguf": "GGUF header",
    "onnx": "ONNX graph",
    "pytorch": "PyTorch zip checkpoint",
    "pytorch_legacy": "PyTorch legacy (pickle) checkpoint",
    "pickle": "pickle",
    "keras_h5": "Keras HDF5",
    "keras": "Keras archive",
    "tf_savedmodel": "TensorFlow SavedModel",
    "tf_checkpoint": "TensorFlow checkpoint",
    "tensorrt": "TensorRT engine",
}


def weights_tag(
    fmt: str,
    tensors: int | None,
    parameters: int | None,
    dtype: str | None,
    extra: str = "",
    **details: Any,
) -> Tag:
    """A model_weights tag; unknown counts are None and left out of the evidence."""
    parts = [_LABELS.get(fmt, fmt)]
    if tensors is not None:
        parts.append(f"{tensors} tensors")
    if parameters is not None:
        parts.append(f"{human_count(parameters)} parameters")
    if dtype:
        parts.append(dtype)
    if extra:
        parts.append(extra)
    return Tag(
        "model_weights",
        ", ".join(parts),
        {"format": fmt, "parameters": parameters, "tensors": tensors, "dtype": dtype, **details},
    )


def _dominant(counter: Counter[str]) -> str | None:
    return counter.most_common(1)[0][0] if counter else None


MAX_DIM = 1 << 48  # one dimension; more is no real tensor and makes products huge


def _dim(d: object) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM


def _product(dims: list[int] | tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


# --- safetensors ---------------------------------------------------------------------
def is_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return n >= 2 and head[8:9] == b"{" and head[9:10] in (b'"', b" ", b"}", b"\n")


def parse_safetensors(src: Source, limits: Limits) -> Finding:
    if len(src.head) < 8:
        raise ParseError("safetensors: shorter than its length prefix")
    (n,) = struct.unpack_from("<Q", src.head)
    if n > limits.max_header_bytes:
        raise LimitExceeded("header_too_large", f"safetensors header claims {n} bytes")
    if 8 + n > src.size:
        raise ParseError(f"safetensors header claims {n} bytes, file has {src.size}")
    with src.open() as f:
        f.seek(8)
        raw = f.read(n)
    if len(raw) != n:
        raise ParseError("safetensors header truncated")
    # every JSON value but the first follows a comma or an opening bracket: a cheap upper
    # bound on the objects json.loads would build (a 1.5 M-tensor header is ~1 GB of them)
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if values > limits.max_json_values:
        raise LimitExceeded("absurd_count", f"safetensors header of up to {values} JSON values")
    src.deadline.check()
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ParseError(f"safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ParseError("safetensors header is not a JSON object")
    dtypes: Counter[str] = Counter()
    params = tensors = 0
    data_len = src.size - 8 - n
    if len(header) > limits.max_tensors + 1:
        raise LimitExceeded("absurd_count", f"safetensors header of {len(header)} tensors")
    for i, (name, info) in enumerate(header.items()):
        if i % 1024 == 0:
            src.deadline.check()
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ParseError(f"safetensors tensor {name[:80]!r} is not an object")
        shape, dtype, offsets = info.get("shape"), info.get("dtype"), info.get("data_offsets")
        if isinstance(shape, list) and len(shape) > limits.max_dims:
            # the product of a million dimensions is quadratic big-integer work
            raise LimitExceeded("absurd_count", f"safetensors shape of {len(shape)} dims")
        if not (isinstance(shape, list) and all(_dim(d) for d in shape)):
            raise ParseError(f"safetensors tensor {name[:80]!r}: bad shape")
        if not isinstance(dtype, str) or not isinstance(offsets, list) or len(offsets) != 2:
            raise ParseError(f"safetensors tensor {name[:80]!r}: bad dtype or offsets")
        if src.complete and not all(isinstance(o, int) and 0 <= o <= data_len for o in offsets):
            raise ParseError(f"safetensors tensor {name[:80]!r}: offsets past the end of file")
        count = _product(shape)
        tensors += 1
        params += count
        dtypes[dtype.lower()] += count
    if tensors == 0 and "__metadata__" not in header:
        raise ParseError("safetensors header has no tensors")
    return Finding(
        "application/vnd.safetensors",
        [weights_tag("safetensors", tensors, params, _dominant(dtypes))],
        text=" ".join(list(header)[:2000]),
    )


# --- GGUF ----------------------------------------------------------------------------
_GGML_TYPES = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 9: "q8_1",
    10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k", 15: "q8_k", 16: "iq2_xxs",
    17: "iq2_xs", 18: "iq3_xxs", 19: "iq1_s", 20: "iq4_nl", 21: "iq3_s", 22: "iq2_s",
    23: "iq4_xs", 24: "i8", 25: "i16", 26: "i32", 27: "i64", 28: "f64", 29: "iq1_m",
    30: "bf16", 34: "tq1_0", 35: "tq2_0",
}  # fmt: skip
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALAR.update({11: "<q", 12: "<d"})
_KEEP_KEYS = {"general.architecture", "general.name", "general.size_label", "general.file_type"}
MAX_STRING = 1 << 20
MAX_ARRAY = 1 << 26


def _u(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ParseError("GGUF truncated")
    return struct.unpack(fmt, data)[0]


def _gguf_string(f: BinaryIO, v1: bool) -> str:
    n = _u(f, "<I" if v1 else "<Q")
    if n > MAX_STRING:
        raise LimitExceeded("absurd_count", f"GGUF string of {n} bytes")
    data = f.read(n)
    if len(data) != n:
        raise ParseError("GGUF truncated string")
    return data.decode("utf-8", "replace")


def _gguf_value(f: BinaryIO, vtype: int, v1: bool, keep: bool) -> Any:
    if vtype in _SCALAR:
        return _u(f, _SCALAR[vtype])
    if vtype == 8:
        return _gguf_string(f, v1)
    if vtype == 9:
        itype = _u(f, "<I")
        count = _u(f, "<I" if v1 else "<Q")
        if count > MAX_ARRAY:
            raise LimitExceeded("absurd_count", f"GGUF array of {count} items")
        if itype in _SCALAR:
            f.seek(count * struct.calcsize(_SCALAR[itype]), 1)
        else:
            for _ in range(count):
                _gguf_value(f, itype, v1, False)
        return None
    raise ParseError(f"GGUF value type {vtype} unknown")


def parse_gguf(src: Source, limits: Limits) -> Finding:
    with src.open() as f:
        if f.read(4) != b"GGUF":
            raise ParseError("not GGUF")
        version = _u(f, "<I")
        if version not in (1, 2, 3):
            raise ParseError(f"GGUF version {version} unknown")
        v1 = version == 1
        n_tensors = _u(f, "<I" if v1 else "<Q")
        n_kv = _u(f, "<I" if v1 else "<Q")
        if n_tensors > limits.max_tensors or n_kv > limits.max_gguf_count:
            raise LimitExceeded(
                "absurd_count", f"GGUF claims {n_tensors} tensors and {n_kv} metadata keys"
            )
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _gguf_string(f, v1)
            vtype = _u(f, "<I")
            value = _gguf_value(f, vtype, v1, key in _KEEP_KEYS)
            if key in _KEEP_KEYS:
                meta[key] = value
        params = 0
        dtypes: Counter[str] = Counter()
        for _ in range(n_tensors):
            _gguf_string(f, v1)
            n_dims = _u(f, "<I")
            if n_dims > 8:
                raise ParseError(f"GGUF tensor with {n_dims} dimensions")
            dims = [_u(f, "<I" if v1 else "<Q") for _ in range(n_dims)]
            gtype = _u(f, "<I")
            _u(f, "<Q")
            count = _product(dims)
            params += count
            dtypes[_GGML_TYPES.get(gtype, f"type{gtype}")] += count
    arch = meta.get("general.architecture")
    extra = f"architecture {arch}" if isinstance(arch, str) else ""
    return Finding(
        "application/x-gguf",
        [
            weights_tag(
                "gguf",
                n_tensors,
                params,
                _dominant(dtypes),
                extra,
                architecture=arch if isinstance(arch, str) else None,
                gguf_version=version,
                name=meta.get("general.name")
                if isinstance(meta.get("general.name"), str)
                else None,
            )
        ],
    )


# --- PyTorch -------------------------------------------------------------------------
def torch_root(names: list[str]) -> str | None:
    """The record prefix of a torch.save zip (`<root>/data.pkl`), else None."""
    for n in names:
        if n.endswith("/data.pkl") and n.count("/") == 1:
            return n[: -len("data.pkl")]
    return None


def parse_torch_zip(
    zf: zipfile.ZipFile, root: str, limits: Limits, name: str, deadline: Deadline | None = None
) -> Finding:
    """`name` is the checkpoint's path for the log (zipfile only knows a descriptor)."""
    info = zf.getinfo(root + "data.pkl")
    if info.file_size > MAX_PICKLE_BYTES:
        raise LimitExceeded("header_too_large", f"data.pkl of {info.file_size} bytes")
    storages = [i for i in zf.infolist() if i.filename.startswith(root + "data/")]
    with zf.open(info) as fh:
        data = fh.read(MAX_PICKLE_BYTES + 1)
    summary = scan_pickle(data, deadline=deadline, max_tensors=limits.max_tensors)
    return Finding(
        "application/x-pytorch",
        [_torch_tag("pytorch", summary, len(storages), sum(i.file_size for i in storages))],
        skipped=_unsafe(summary, name),
    )


def _unsafe(s: PickleSummary, name: str) -> str | None:
    """`unsafe_pickle` (a counted skip) when the pickle would call something that runs
    code on load (os.system, builtins.eval, ...): what a planted payload looks like."""
    if not s.unsafe_globals:
        return None
    log.info(
        "%r: pickle would call %s when loaded (never executed here)",
        name,
        ", ".join(sorted(s.unsafe_globals)[:3]),
    )
    return "unsafe_pickle"


def _torch_tag(fmt: str, s: PickleSummary, storages: int, storage_bytes: int) -> Tag:
    warn = ""
    if s.unsafe_globals:
        warn = "pickle names " + ", ".join(sorted(s.unsafe_globals)[:3]) + " (never executed)"
    if s.tensors:
        dtypes: Counter[str] = Counter()
        for t in s.tensors:
            dtypes[t.storage.dtype] += t.numel
        tag = weights_tag(fmt, len(s.tensors), s.parameters, _dominant(dtypes), warn)
    else:
        # no tensor records decoded: estimate from the raw storages (f32 assumed)
        tag = weights_tag(fmt, storages, storage_bytes // 4, None, warn or "storages only")
    if s.unsafe_globals:
        tag.details["unsafe_globals"] = sorted(s.unsafe_globals)[:16]
    return tag


def is_pickle(head: bytes) -> bool:
    return len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5


# torch.save(..., _use_new_zipfile_serialization=False) opens with this pickle of
# 0x1950a86a20f9469cfc6c (LONG1 of 10 bytes, protocol 2)
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def _pickle_end(data: bytes, start: int) -> int:
    """Where the pickle at `start` ends (after STOP): a disassembly, bounded to the
    small header pickles of the legacy format (64 KiB, 10,000 opcodes)."""
    import io
    import pickletools

    window = data[start : start + (64 << 10)]
    try:
        for n, (op, _arg, pos) in enumerate(pickletools.genops(io.BytesIO(window))):
            if op.name == "STOP" and pos is not None:
                return start + pos + 1
            if n > 10_000:
                break
    except (ValueError, EOFError, UnicodeDecodeError, struct.error) as e:
        raise ParseError(f"legacy torch header pickle: {e}") from None
    raise ParseError("legacy torch header pickle does not end")


def parse_pickle(src: Source, limits: Limits) -> Finding:
    """A bare pickle (legacy torch.save, joblib, sklearn): named, never executed.

    The legacy torch format is four pickles in a row (magic number, protocol version,
    system info, the state dict whose tensors name their storages) then the raw
    storages: the state dict is the fourth, found by skipping the three before it."""
    with src.open() as f:
        data = f.read(MAX_PICKLE_BYTES)
    legacy = data.startswith(LEGACY_TORCH_MAGIC)
    if legacy:
        pos = len(LEGACY_TORCH_MAGIC)
        pos = _pickle_end(data, pos)  # protocol version (1001)
        pos = _pickle_end(data, pos)  # sys_info: endianness, type sizes
        data = data[pos:]
    summary = scan_pickle(data, deadline=src.deadline, max_tensors=limits.max_tensors)
    if legacy:
        return Finding(
            "application/x-pytorch",
            [_torch_tag("pytorch_legacy", summary, 0, 0)],
            skipped=_unsafe(summary, src.name),
        )
    ml_roots = {"torch", "sklearn", "numpy", "xgboost", "lightgbm", "joblib", "tensorflow"}
    roots = {g.split(".", 1)[0] for g in summary.globals}
    tags: list[Tag] = []
    if summary.tensors or roots & ml_roots:
        tags.append(_torch_tag("pickle", summary, 0, 0))
    return Finding("application/x-pickle", tags, skipped=_unsafe(summary, src.name))
