"""ONNX graphs: the protobuf walked field by field (weights skipped with a seek) for the
parameters a model carries — initializers, tensors held in node attributes (`Constant`,
`ConstantOfShape`...), the bodies of If/Loop/Scan, and tensors whose bytes live in
external data (counted by their dims). Split from `weights.py`, which it builds on.
"""

from __future__ import annotations

from collections import Counter
from typing import BinaryIO

from agent.classify import protowire as pw
from agent.classify.base import Finding, LimitExceeded, Limits, ParseError, Source
from agent.classify.weights import _dominant, _product, weights_tag

_ONNX_TYPES = {
    1: "f32", 2: "u8", 3: "i8", 4: "u16", 5: "i16", 6: "i32", 7: "i64", 8: "string",
    9: "bool", 10: "f16", 11: "f64", 12: "u32", 13: "u64", 16: "bf16",
}  # fmt: skip
_MODEL_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}


def looks_like_onnx(head: bytes) -> bool:
    """ModelProto starts with ir_version (field 1, varint 3..20) then a known field."""
    if len(head) < 4 or head[0] != 0x08 or not 3 <= head[1] <= 20:
        return False
    return head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)


def parse_onnx(src: Source, limits: Limits) -> Finding:
    tensors = params = 0
    dtypes: Counter[str] = Counter()
    ir_version: int | None = None
    producer = ""
    graph_seen = False
    found = _OnnxCount(limits.max_tensors)
    with src.open() as f:
        for number, wire, value in pw.fields(f, src.size):
            if number not in _MODEL_FIELDS:
                raise ParseError(f"ONNX: unexpected ModelProto field {number}")
            if number == 1 and wire == pw.VARINT:
                ir_version = value
            elif number == 2 and wire == pw.LEN and value <= 256:
                producer = f.read(value).decode("utf-8", "replace")
            elif number == 7 and wire == pw.LEN:
                graph_seen = True
                found = _OnnxCount(limits.max_tensors)
                found.graph(f, f.tell() + value, 0)
                tensors, params, dtypes = found.tensors, found.params, found.dtypes
    if ir_version is None or not graph_seen:
        raise ParseError("ONNX: no ir_version or graph")
    extra = f"producer {producer}" if producer else ""
    if found.external:
        extra = ", ".join(x for x in (extra, f"{found.external} tensors in external data") if x)
    tag = weights_tag("onnx", tensors, params, _dominant(dtypes), extra, ir_version=ir_version)
    if found.constants:
        tag.details["constant_tensors"] = found.constants
    if found.external:
        tag.details["external_tensors"] = found.external
    return Finding("application/onnx", [tag])


MAX_GRAPH_DEPTH = 8  # If/Loop/Scan bodies nest graphs inside node attributes


class _OnnxCount:
    """Parameters of an ONNX graph: initializers (and sparse ones), tensors held in node
    attributes (`Constant`, `ConstantOfShape`...) and those in subgraphs of If, Loop
    and Scan. External-data tensors count by their dims (the bytes live elsewhere)."""

    def __init__(self, max_tensors: int) -> None:
        self.max_tensors = max_tensors
        self.tensors = self.params = self.constants = self.external = 0
        self.dtypes: Counter[str] = Counter()

    def _add(self, f: BinaryIO, end: int) -> None:
        count, dtype, external = _onnx_tensor(f, end)
        self.tensors += 1
        self.params += count
        self.dtypes[dtype] += count
        self.external += external
        if self.tensors > self.max_tensors:
            raise LimitExceeded("absurd_count", "ONNX: too many initializers")

    def graph(self, f: BinaryIO, end: int, depth: int) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise LimitExceeded("absurd_count", "ONNX: subgraphs nested too deep")
        for number, wire, value in pw.fields(f, end):
            if wire != pw.LEN:
                continue
            if number in (5, 15):  # initializer, sparse_initializer
                self._add(f, f.tell() + value)
            elif number == 1:  # node: its attributes may hold tensors and graphs
                for n_number, n_wire, n_value in pw.fields(f, f.tell() + value):
                    if n_number == 5 and n_wire == pw.LEN:
                        self._attribute(f, f.tell() + n_value, depth)

    def _attribute(self, f: BinaryIO, end: int, depth: int) -> None:
        for number, wire, value in pw.fields(f, end):
            if wire != pw.LEN:
                continue
            if number in (5, 10):  # t, tensors
                before = self.tensors
                self._add(f, f.tell() + value)
                self.constants += self.tensors - before
            elif number in (6, 11):  # g, graphs
                self.graph(f, f.tell() + value, depth + 1)


def _onnx_tensor(f: BinaryIO, end: int) -> tuple[int, str, int]:
    """(elements, dtype, 1 if its data is external) of a TensorProto."""
    dims: list[int] = []
    dtype = "unknown"
    external = 0
    for number, wire, value in pw.fields(f, end):
        if number == 1 and wire == pw.VARINT:
            dims.append(value)
        elif number == 1 and wire == pw.LEN:
            dims.extend(pw.packed_varints(f.read(min(value, 1024))))
        elif number == 2 and wire == pw.VARINT:
            dtype = _ONNX_TYPES.get(value, f"type{value}")
        elif number == 14 and wire == pw.VARINT:
            external = int(value == 1)
        if len(dims) > 32:  # checked as they come: a tensor may list millions
            raise ParseError("ONNX: tensor with too many dimensions")
    return _product(dims), dtype, external
