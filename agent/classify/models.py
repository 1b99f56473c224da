"""Model formats beside the big four: TFLite, fastText, word2vec and Core ML.

Each is recognised by what its header proves and read only as far as the header and
the tensor metadata: TFLite's flatbuffer (tensors, shapes and which carry constant
buffers), fastText's argument block and dictionary sizes, word2vec's `<words> <dim>`
line and the first vector's framing, Core ML's protobuf opening. Parameter counts are
reported wherever the format states them. Reads are random-access through the
`GuardedFile` (deadline, no seek past the end), every count is capped.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from typing import BinaryIO

from agent.classify import protowire as pw
from agent.classify.base import Finding, LimitExceeded, Limits, ParseError, Source
from agent.classify.weights import weights_tag

FASTTEXT_MAGIC = 793712314
_TFL_TYPES = {0: "f32", 1: "f16", 2: "i32", 3: "u8", 4: "i64", 5: "string", 6: "bool",
              7: "i16", 8: "c64", 9: "i8", 10: "f64", 11: "c128", 12: "u64", 15: "u32",
              16: "u16", 17: "i4"}  # fmt: skip
_W2V_HEADER = re.compile(rb"([1-9]\d{0,9}) ([1-9]\d{0,5})[ \t]*\r?\n")


def sniff_model(head: bytes, size: int, ext: str) -> str | None:
    """tflite / fasttext / word2vec / coreml when the header proves it, else None."""
    if len(head) >= 8 and head[4:8] == b"TFL3" and 8 <= struct.unpack_from("<I", head)[0] < size:
        return "tflite"
    if _fasttext_args(head) is not None:
        return "fasttext"
    if word2vec_binary(head, size) is not None:
        return "word2vec"
    if ext == "mlmodel" and len(head) >= 4 and head[0] == 0x08 and 1 <= head[1] <= 20:
        return "coreml"
    if tensorrt_start(head, size) is not None:
        return "tensorrt"
    return None


# --- TensorRT engines (plans) -----------------------------------------------------------
# NVIDIA does not publish the plan format. What is stable is the header TensorRT itself
# checks before anything else ("Magic tag does not match" when it is wrong): the ASCII
# tag `ptrt` (or `ftrt`) and a little-endian uint32 serialization version (205 for
# TensorRT 8.2, 213 for 8.4, 232 for 8.5-8.6...). Exporters such as Ultralytics put a
# uint32 length and a JSON object of metadata in front. Nothing after the header is read:
# tensors and parameters are not counted.
_TRT_TAGS = (b"ptrt", b"ftrt")
_TRT_HEADER = 24  # tag, version and the fields after them that every plan has


def tensorrt_start(head: bytes, size: int) -> int | None:
    """Offset of a TensorRT plan's magic tag in `head` (0, or after a metadata prefix)."""
    if size < _TRT_HEADER or len(head) < 8:
        return None
    if _trt_header(head, 0, size):
        return 0
    n = int.from_bytes(head[:4], "little")
    if head[4:5] == b"{" and 4 + n + 8 <= len(head) and _trt_header(head, 4 + n, size):
        return 4 + n
    return None


def _trt_header(head: bytes, at: int, size: int) -> bool:
    # the version is a small number: text that happens to start with "ptrt" has letters
    # (at least 0x09090909) where it would be
    version = int.from_bytes(head[at + 4 : at + 8], "little")
    return head[at : at + 4] in _TRT_TAGS and 0 < version < 0x10000 and at + _TRT_HEADER <= size


def _tensorrt(src: Source, limits: Limits) -> Finding:
    at = tensorrt_start(src.head, src.size)
    if at is None:
        raise ParseError("TensorRT: no plan header")
    version = int.from_bytes(src.head[at + 4 : at + 8], "little")
    extra = f"serialization version {version}"
    details: dict[str, object] = {"serialization_version": version}
    if at:
        extra += ", exporter metadata in front"
        try:
            meta = json.loads(src.head[4:at].decode("utf-8"))
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            task = meta.get("task")
            if isinstance(task, str) and task.isprintable() and len(task) <= 40:
                details["task"] = task
    tag = weights_tag("tensorrt", None, None, None, extra, **details)
    return Finding("application/x-tensorrt-plan", [tag])


def parse_model(fmt: str, src: Source, limits: Limits) -> Finding:
    parsers = {"tflite": _tflite, "fasttext": _fasttext, "word2vec": _word2vec, "coreml": _coreml,
               "tensorrt": _tensorrt}  # fmt: skip
    try:
        return parsers[fmt](src, limits)
    except struct.error as e:
        raise ParseError(f"{fmt}: truncated: {e}") from None


# --- TFLite (flatbuffer) ------------------------------------------------------------------
class _Flat:
    """Random-access flatbuffer tables over a file; every offset is checked."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        # a model up to 16 MiB is read once: offsets then cost a slice, not a seek
        self.data = f.read() if size <= 16 << 20 else None

    def read(self, pos: int, n: int) -> bytes:
        if pos < 0 or pos + n > self.size:
            raise ParseError(f"flatbuffer: offset {pos} outside the file")
        if self.data is not None:
            if pos + n > len(self.data):
                raise ParseError("flatbuffer: short read")
            return self.data[pos : pos + n]
        self.f.seek(pos)
        data = self.f.read(n)
        if len(data) != n:
            raise ParseError("flatbuffer: short read")
        return data

    def u32(self, pos: int) -> int:
        return int(struct.unpack("<I", self.read(pos, 4))[0])

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field `index` of the table at `table`, or None."""
        vtable = table - struct.unpack("<i", self.read(table, 4))[0]
        vsize = struct.unpack("<H", self.read(vtable, 2))[0]
        if 4 + 2 * index + 2 > vsize:
            return None
        off = struct.unpack("<H", self.read(vtable + 4 + 2 * index, 2))[0]
        return table + off if off else None

    def ref(self, table: int, index: int) -> int | None:
        at = self.field(table, index)
        return None if at is None else at + self.u32(at)

    def vector(self, table: int, index: int, cap: int) -> tuple[int, int]:
        """(start of elements, length) of a vector field; (0, 0) when absent."""
        at = self.ref(table, index)
        if at is None:
            return 0, 0
        n = self.u32(at)
        if n > cap:
            raise LimitExceeded("absurd_count", f"flatbuffer vector of {n} elements")
        return at + 4, n


def _tflite(src: Source, limits: Limits) -> Finding:
    with src.open() as f:
        fb = _Flat(f, src.size)
        model = fb.u32(0)
        version_at = fb.field(model, 0)
        version = fb.u32(version_at) if version_at is not None else None
        b_start, b_len = fb.vector(model, 4, limits.max_tensors)
        g_start, g_len = fb.vector(model, 2, 1024)
        tensors = params = 0
        dtypes: Counter[str] = Counter()
        const_buffers: dict[int, bool] = {}
        for g in range(g_len):
            sub = g_start + 4 * g + fb.u32(g_start + 4 * g)
            t_start, t_len = fb.vector(sub, 0, limits.max_tensors)
            for i in range(t_len):
                src.deadline.check()
                t = t_start + 4 * i + fb.u32(t_start + 4 * i)
                buf_at = fb.field(t, 2)
                buf = fb.u32(buf_at) if buf_at is not None else 0
                if not 0 < buf < b_len:
                    continue  # activations and inputs: buffer 0 is the empty sentinel
                if buf not in const_buffers:
                    b = b_start + 4 * buf + fb.u32(b_start + 4 * buf)
                    _, data_len = fb.vector(b, 0, 1 << 40)
                    size_at = fb.field(b, 2)
                    big = struct.unpack("<Q", fb.read(size_at, 8))[0] if size_at else 0
                    const_buffers[buf] = data_len > 0 or big > 0
                if not const_buffers[buf]:
                    continue
                s_start, s_len = fb.vector(t, 0, limits.max_dims)
                count = 1
                for d in range(s_len):
                    count *= max(struct.unpack("<i", fb.read(s_start + 4 * d, 4))[0], 0)
                type_at = fb.field(t, 1)
                code = fb.read(type_at, 1)[0] if type_at is not None else 0
                tensors += 1
                params += count
                dtypes[_TFL_TYPES.get(code, f"type{code}")] += count
                if tensors > limits.max_tensors:
                    raise LimitExceeded("absurd_count", "TFLite: too many tensors")
    if g_len == 0:
        raise ParseError("TFLite: no subgraphs")
    dtype = dtypes.most_common(1)[0][0] if dtypes else None
    tag = weights_tag("tflite", tensors, params, dtype, f"{g_len} subgraphs", version=version)
    return Finding("application/x-tflite", [tag])


# --- fastText and word2vec ------------------------------------------------------------------
def _fasttext_args(head: bytes) -> int | None:
    """Offset of the args block of a fastText model: 8 after the magic and version, or 0
    for the first releases, which wrote no magic — then the 12 arguments, the sampling
    threshold and the dictionary sizes must all be in their ranges (16 checks)."""
    if len(head) >= 8 and struct.unpack_from("<iI", head) in (
        (FASTTEXT_MAGIC, 11),
        (FASTTEXT_MAGIC, 12),
    ):
        return 8
    if len(head) < 84:
        return None
    dim, ws, epoch, min_count, neg, ngrams, loss, model, bucket, minn, maxn, lr_update = (
        struct.unpack_from("<12i", head)
    )
    (t,) = struct.unpack_from("<d", head, 48)
    size, nwords, nlabels, ntokens = struct.unpack_from("<3iq", head, 56)
    plausible = (
        0 < dim <= 10_000 and 0 < ws <= 1000 and 0 < epoch <= 100_000 and min_count >= 0
        and 0 <= neg <= 10_000 and 0 < ngrams <= 100 and 1 <= loss <= 4 and 1 <= model <= 3
        and 0 <= bucket <= 1 << 30 and 0 <= minn <= maxn <= 100 and lr_update > 0
        and 0.0 < t < 1.0 and size > 0 and 0 <= nwords <= size and 0 <= nlabels <= size
        and nwords <= ntokens
    )  # fmt: skip
    return 0 if plausible else None


def _fasttext(src: Source, limits: Limits) -> Finding:
    """fastText .bin: magic, version, the args block (dim first), then dictionary sizes.

    Input matrix rows are the words plus the hashed n-gram buckets: parameters are
    (nwords + bucket) x dim, and the output matrix (labels or words) x dim beside it."""
    head = src.head
    at = _fasttext_args(head)
    if at is None:
        raise ParseError("fastText: neither the magic nor a plausible argument block")
    dim, _ws, _epoch, _min_count, _neg, _ngrams, loss, model, bucket = struct.unpack_from(
        "<9i", head, at
    )
    # minn, maxn, lrUpdateRate (3 ints), t (double) then the dictionary header
    size, nwords, nlabels = struct.unpack_from("<3i", head, at + 9 * 4 + 3 * 4 + 8)
    if not (0 < dim <= 1 << 16 and 0 <= nwords <= size and nlabels >= 0 and bucket >= 0):
        raise ParseError("fastText: implausible dimensions")
    outputs = nlabels if model == 3 else nwords  # model 3: supervised
    params = (nwords + bucket) * dim + outputs * dim
    kind = {1: "cbow", 2: "skipgram", 3: "supervised"}.get(model, f"model {model}")
    extra = f"{kind}, {nwords} words, dim {dim}, parameters estimated from the dictionary"
    tag = weights_tag("fasttext", 2, params, "f32", extra, dim=dim, words=nwords, loss=loss)
    return Finding("application/x-fasttext", [tag])


def word2vec_binary(head: bytes, size: int) -> tuple[int, int] | None:
    """(words, dim) of a word2vec binary file: the `<words> <dim>` line, then a word, a
    space and exactly `dim` float32s before the next word; the size must fit."""
    m = _W2V_HEADER.match(head)
    if m is None:
        return None
    words, dim = int(m.group(1)), int(m.group(2))
    pos = m.end()
    sp = head.find(b" ", pos, pos + 256)
    if sp <= pos or b"\n" in head[pos:sp]:
        return None
    after = sp + 1 + 4 * dim
    if after > len(head) or size < m.end() + words * (4 * dim + 2):
        return None
    if after < len(head) and head[after : after + 1] == b" ":
        return None  # a text file of words and numbers does not land on a word boundary
    if size > m.end() + words * (4 * dim + 1 + 512):
        return None  # far more bytes than the vectors and their words: something else
    return words, dim


def _word2vec(src: Source, limits: Limits) -> Finding:
    found = word2vec_binary(src.head, src.size)
    if found is None:
        raise ParseError("word2vec: framing does not hold")
    words, dim = found
    tag = weights_tag("word2vec", 1, words * dim, "f32", f"{words} words, dim {dim}", dim=dim)
    return Finding("application/x-word2vec", [tag])


def word2vec_text(text: str) -> Finding | None:
    """The text word2vec/GloVe-with-header format: `<words> <dim>` then `word v1 .. vdim`."""
    nl = text.find("\n", 0, 64)
    if nl < 0:
        return None
    m = _W2V_HEADER.match(text[: nl + 1].encode())
    if m is None:
        return None
    words, dim = int(m.group(1)), int(m.group(2))
    lines = [ln for ln in text[nl + 1 : nl + 1 + (1 << 16)].split("\n", 4)[:3] if ln.strip()]
    if not lines:
        return None
    for line in lines:
        parts = line.split(" ")
        if len(parts) < dim + 1 or len(parts) > dim + 2:
            return None
        try:
            [float(x) for x in parts[1 : dim + 1]]
        except ValueError:
            return None
    tag = weights_tag("word2vec_text", 1, words * dim, "text", f"{words} words, dim {dim}")
    return Finding("text/plain", [tag])


# --- OpenVINO IR -----------------------------------------------------------------------------
_VINO_NET = re.compile(r"<net\b[^>]{0,512}\bversion=\"(\d+)\"")
_VINO_CONST = re.compile(r'\btype="Const"')
_VINO_DATA = re.compile(r"<data\b([^>]{0,1024})>")
_VINO_SHAPE = re.compile(r'\bshape="([\d, ]{0,256})"')
_VINO_TYPE = re.compile(r'\belement_type="(\w{1,16})"')
_VINO_TYPES = {"f32": "f32", "f16": "f16", "bf16": "bf16", "i8": "i8", "u8": "u8", "i4": "i4",
               "u4": "u4", "i32": "i32", "i64": "i64", "f64": "f64", "u1": "u1"}  # fmt: skip
MAX_VINO_LAYERS = 1 << 17


def openvino_ir(text: str) -> Finding | None:
    """OpenVINO IR (`model.xml`, weights in `model.bin` beside it): a `<net ... version=>`
    root with `<layers>`; parameters are the elements of its `Const` layers (each
    `<data element_type= shape=>`). Each layer is looked at within 2 KiB of its start."""
    head = text[:4096]
    m = _VINO_NET.search(head)
    if m is None or "<layers>" not in text[: 1 << 16]:
        return None
    tensors = params = 0
    dtypes: Counter[str] = Counter()
    pos = text.find("<layer ")
    for _ in range(MAX_VINO_LAYERS):
        if pos < 0:
            break
        window = text[pos : pos + 2048]
        opening = window[: window.find(">") + 1]
        data = _VINO_DATA.search(window) if _VINO_CONST.search(opening) else None
        if data is not None:
            shape_m, type_m = _VINO_SHAPE.search(data.group(1)), _VINO_TYPE.search(data.group(1))
            if shape_m is not None:
                dims = [int(d) for d in shape_m.group(1).replace(" ", "").split(",") if d]
                count = 1
                for d in dims[:64]:
                    count *= d
                tensors += 1
                params += count
                dtype = type_m.group(1) if type_m else "unknown"
                dtypes[_VINO_TYPES.get(dtype, dtype)] += count
        pos = text.find("<layer ", pos + 7)
    dtype = dtypes.most_common(1)[0][0] if dtypes else None
    tag = weights_tag("openvino_ir", tensors, params, dtype, f"IR version {m.group(1)}")
    return Finding("application/x-openvino-ir", [tag])


# --- Core ML --------------------------------------------------------------------------------
_COREML_TYPES = {200: "pipelineClassifier", 201: "pipelineRegressor", 202: "pipeline",
                 300: "glmRegressor", 301: "supportVectorRegressor", 302: "treeEnsembleRegressor",
                 303: "neuralNetworkRegressor", 400: "glmClassifier",
                 403: "neuralNetworkClassifier",
                 500: "neuralNetwork", 502: "mlProgram", 555: "itemSimilarityRecommender",
                 600: "customModel", 601: "linkedModel"}  # fmt: skip


def _coreml(src: Source, limits: Limits) -> Finding:
    """Core ML .mlmodel: Model{specificationVersion=1, description=2, <type>=200..}."""
    version: int | None = None
    kind: str | None = None
    with src.open() as f:
        for number, wire, value in pw.fields(f, src.size):
            if number == 1 and wire == pw.VARINT:
                version = value
            elif number >= 200 and wire == pw.LEN:
                kind = _COREML_TYPES.get(number, f"type {number}")
            elif number not in (1, 2, 10):
                raise ParseError(f"Core ML: unexpected field {number}")
    if version is None or kind is None:
        raise ParseError("Core ML: no specification version or model type")
    tag = weights_tag("coreml", None, None, None, f"{kind}, specification {version}")
    return Finding("application/x-coreml", [tag])
