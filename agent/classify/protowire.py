"""A bounded protobuf wire-format walker over a seekable file, for ONNX and SavedModel.

Only the structure is read: tags, varints and the lengths of length-delimited fields.
Fields the caller does not ask for are skipped with a seek, so a 4 GB ONNX file with
its weights inline costs a few thousand small reads. No schema and no generated code:
the caller names the field numbers it cares about.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from agent.classify.base import ParseError

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def read_varint(f: BinaryIO) -> int:
    result = 0
    for shift in range(0, 70, 7):
        b = f.read(1)
        if not b:
            raise ParseError("protobuf: truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
    raise ParseError("protobuf: varint too long")


def varint_from(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise ParseError("protobuf: truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
    raise ParseError("protobuf: varint too long")


def fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (field number, wire type, value) until offset `end`.

    For VARINT the value is the number; for LEN it is the payload length and the file
    is positioned at the payload start: the caller reads it, recurses, or leaves it
    (the walker seeks past it either way). Fixed-width fields are skipped.
    """
    while True:
        pos = f.tell()
        if pos >= end:
            if pos > end:
                raise ParseError("protobuf: field runs past its message")
            return
        key = read_varint(f)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ParseError("protobuf: field number 0")
        if wire == VARINT:
            yield number, wire, read_varint(f)
        elif wire == LEN:
            length = read_varint(f)
            start = f.tell()
            if start + length > end:
                raise ParseError("protobuf: length-delimited field runs past its message")
            yield number, wire, length
            f.seek(start + length)
        elif wire == FIXED64:
            f.seek(8, 1)
        elif wire == FIXED32:
            f.seek(4, 1)
        else:
            raise ParseError(f"protobuf: unsupported wire type {wire}")


def packed_varints(data: bytes) -> list[int]:
    out: list[int] = []
    pos = 0
    while pos < len(data):
        v, pos = varint_from(data, pos)
        out.append(v)
    return out
