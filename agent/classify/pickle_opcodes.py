"""The pickle opcode decoder: each opcode's name and argument, without `pickle`.

Unpickling runs arbitrary code, and even `pickletools` is not loaded, so `pickle_vm`
reads the opcodes through this table of opcode → argument layout, every length checked
against the input and every text line bounded (`MAX_LINE`). Kept apart from the
symbolic stack in `pickle_vm`: this module knows the wire format only, never what a
value means.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from agent.classify.base import ParseError

NOARG = object()
# opcode byte → (name, argument kind); kinds: "" none, "u1"/"u2"/"u4"/"i4"/"u8"/"f8"
# fixed-width numbers, "b1"/"b4"/"b8" counted bytes, "s1"/"s4"/"s8" counted UTF-8,
# "line" one text line, "line2" two lines (module and name), "long1"/"long4" signed ints
_OPS: dict[int, tuple[str, str]] = {
    0x80: ("PROTO", "u1"), 0x95: ("FRAME", "u8"), 0x2E: ("STOP", ""), 0x28: ("MARK", ""),
    0x30: ("POP", ""), 0x31: ("POP_MARK", ""), 0x32: ("DUP", ""), 0x4E: ("NONE", ""),
    0x88: ("NEWTRUE", ""), 0x89: ("NEWFALSE", ""), 0x4B: ("BININT1", "u1"),
    0x4D: ("BININT2", "u2"), 0x4A: ("BININT", "i4"), 0x8A: ("LONG1", "long1"),
    0x8B: ("LONG4", "long4"), 0x47: ("BINFLOAT", "f8"), 0x49: ("INT", "line"),
    0x4C: ("LONG", "line"), 0x46: ("FLOAT", "line"), 0x53: ("STRING", "line"),
    0x56: ("UNICODE", "line"), 0x55: ("SHORT_BINSTRING", "b1"), 0x54: ("BINSTRING", "b4"),
    0x43: ("SHORT_BINBYTES", "b1"), 0x42: ("BINBYTES", "b4"), 0x8E: ("BINBYTES8", "b8"),
    0x96: ("BYTEARRAY8", "b8"), 0x8C: ("SHORT_BINUNICODE", "s1"),
    0x58: ("BINUNICODE", "s4"), 0x8D: ("BINUNICODE8", "s8"), 0x63: ("GLOBAL", "line2"),
    0x69: ("INST", "line2"), 0x93: ("STACK_GLOBAL", ""), 0x50: ("PERSID", "line"),
    0x51: ("BINPERSID", ""), 0x52: ("REDUCE", ""), 0x62: ("BUILD", ""), 0x6F: ("OBJ", ""),
    0x81: ("NEWOBJ", ""), 0x92: ("NEWOBJ_EX", ""), 0x29: ("EMPTY_TUPLE", ""),
    0x74: ("TUPLE", ""), 0x85: ("TUPLE1", ""), 0x86: ("TUPLE2", ""), 0x87: ("TUPLE3", ""),
    0x5D: ("EMPTY_LIST", ""), 0x61: ("APPEND", ""), 0x65: ("APPENDS", ""),
    0x6C: ("LIST", ""), 0x7D: ("EMPTY_DICT", ""), 0x64: ("DICT", ""),
    0x73: ("SETITEM", ""), 0x75: ("SETITEMS", ""), 0x8F: ("EMPTY_SET", ""),
    0x90: ("ADDITEMS", ""), 0x91: ("FROZENSET", ""), 0x94: ("MEMOIZE", ""),
    0x68: ("BINGET", "u1"), 0x6A: ("LONG_BINGET", "u4"), 0x67: ("GET", "line"),
    0x71: ("BINPUT", "u1"), 0x72: ("LONG_BINPUT", "u4"), 0x70: ("PUT", "line"),
    0x82: ("EXT1", "u1"), 0x83: ("EXT2", "u2"), 0x84: ("EXT4", "i4"),
    0x97: ("NEXT_BUFFER", ""), 0x98: ("READONLY_BUFFER", ""),
}  # fmt: skip
_FIXED = {"u1": "<B", "u2": "<H", "u4": "<I", "i4": "<i", "u8": "<Q", "f8": ">d"}
_COUNT = {"b1": "<B", "b4": "<I", "b8": "<Q", "s1": "<B", "s4": "<I", "s8": "<Q"}
_COUNT.update(long1="<B", long4="<i")
MAX_LINE = 1 << 16


def opcodes(data: bytes) -> Iterator[tuple[str, object]]:
    """(opcode name, decoded argument or NOARG) for each opcode, bounded by `data`."""
    pos = 0
    end = len(data)
    while pos < end:
        code = data[pos]
        pos += 1
        if code not in _OPS:
            raise ParseError(f"pickle: unknown opcode 0x{code:02x} at {pos - 1}")
        name, kind = _OPS[code]
        arg: object = NOARG
        if kind in _FIXED:
            fmt = _FIXED[kind]
            (arg,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
        elif kind in _COUNT:
            fmt = _COUNT[kind]
            (n,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            if n < 0 or pos + n > end:
                raise ParseError(f"pickle: {name} of {n} bytes runs past the end")
            raw = data[pos : pos + n]
            pos += n
            if kind.startswith("s"):
                arg = raw.decode("utf-8", "surrogatepass")
            elif kind.startswith("long"):
                arg = int.from_bytes(raw, "little", signed=True)
            else:
                arg = raw
        elif kind in ("line", "line2"):
            lines = []
            for _ in range(2 if kind == "line2" else 1):
                nl = data.find(b"\n", pos, pos + MAX_LINE)
                if nl < 0:
                    raise ParseError(f"pickle: {name} argument without a newline")
                lines.append(data[pos:nl].decode("latin-1"))
                pos = nl + 1
            arg = " ".join(lines) if kind == "line2" else _line_value(name, lines[0])
        yield name, arg
        if name == "STOP":
            return


def _line_value(name: str, text: str) -> object:
    """Text-protocol arguments: numbers become numbers, strings lose their quotes."""
    if name in ("INT", "LONG", "GET", "PUT"):
        t = text.rstrip("L")
        if t in ("00", "01"):  # protocol 0 booleans
            return t == "01"
        return int(t) if t.lstrip("-").isdigit() and len(t) < 4300 else 0
    if name == "FLOAT":
        try:
            return float(text)
        except ValueError:
            return 0.0
    if name == "STRING" and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text
