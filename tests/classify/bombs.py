"""Generated inputs that cost a naive parser unbounded time or memory (issue 17, class 1).

Each builder returns bytes small enough to write in a test, and each targets one way a
"bounded" parser can still spin or grow: a tar member declaring 2^62 bytes (tarfile's
stream seek reads forever), a safetensors shape of a million dimensions (quadratic
big-integer products), headers with millions of tensors (a gigabyte of JSON objects),
GGUF counts and array lengths far past the file, a zip central directory declaring
millions of entries, JSON nested 100,000 deep, pickles whose shared tuples print
exponentially or whose shapes are checked a million times, and text that makes a lazy
regex rescan to the end for every opener. Shared by tests/classify/test_budgets.py and
the hostile-input drill (tests/drills/test_deadline_drill.py).
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile


def tar_with_lying_member(size: int = 2**62, lead: dict[str, bytes] | None = None) -> bytes:
    """A tar whose last member declares `size` bytes (base-256 size field, GNU style)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (lead or {}).items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("huge.bin")
        ti.size = 5
        tf.addfile(ti, io.BytesIO(b"hello"))
    raw = bytearray(buf.getvalue())
    hdr = raw.rfind(b"huge.bin")
    field = bytearray(12)
    field[0] = 0x80
    field[1:] = size.to_bytes(11, "big")
    raw[hdr + 124 : hdr + 136] = field
    raw[hdr + 148 : hdr + 156] = b"        "
    raw[hdr + 148 : hdr + 156] = b"%06o\0 " % sum(raw[hdr : hdr + 512])
    return bytes(raw[: hdr + 1024])


def tar_with_pax_header(size: int = 30 << 20) -> bytes:
    """A tar whose pax header is `size` bytes: tarfile reads it whole into memory (a
    compressed tar can declare one of 2 GB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("a.txt")
        ti.pax_headers = {"comment": "x" * size}
        ti.size = 5
        tf.addfile(ti, io.BytesIO(b"hello"))
    return buf.getvalue()


def tar_with_many_pax_headers(n: int = 40, size: int = 600 << 10) -> bytes:
    """`n` members each under the per-header cap, 24 MB of pax headers in all."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            ti = tarfile.TarInfo(f"m{i}.txt")
            ti.pax_headers = {"comment": "x" * size}
            ti.size = 2
            tf.addfile(ti, io.BytesIO(b"hi"))
    return buf.getvalue()


def tgz_with_lying_member(size: int = 2**62) -> bytes:
    return gzip.compress(tar_with_lying_member(size), mtime=0)


def _safetensors(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def safetensors_many_dims(dims: int = 1_000_000) -> bytes:
    shape = ",".join(["2"] * dims)
    return _safetensors(b'{"w":{"dtype":"F32","shape":[%s],"data_offsets":[0,0]}}' % shape.encode())


def safetensors_many_tensors(n: int = 1_500_000) -> bytes:
    entry = '"t%d":{"dtype":"F32","shape":[1],"data_offsets":[0,0]}'
    return _safetensors(("{" + ",".join(entry % i for i in range(n)) + "}").encode())


def safetensors_deep_json(depth: int = 100_000) -> bytes:
    return _safetensors(b'{"w":' + b"[" * depth + b"]" * depth + b"}")


def gguf_absurd_tensors() -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 2**63 - 1, 0)


def _gguf_array(key: bytes, element_type: int, count: int) -> bytes:
    """A GGUF v3 header, no tensors and one metadata key: an array (type 9) of `count`
    elements of `element_type`, with no data after it."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    return header + struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, element_type, count)


def gguf_string_array(count: int = (1 << 26) - 1) -> bytes:
    """One metadata key holding an array of `count` strings (type 8)."""
    return _gguf_array(b"tokenizer.ggml.tokens", 8, count)


def gguf_scalar_array(count: int = (1 << 26) - 1) -> bytes:
    """An array of `count` u64 (type 10) whose skip would seek far past the end of the file."""
    return _gguf_array(b"k", 10, count)


def zip_declaring_entries(entries: int = 10_000_000) -> bytes:
    """A real one-member zip whose end record claims `entries` entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", b"a")
    raw = bytearray(buf.getvalue())
    eocd = raw.rindex(b"PK\x05\x06")
    n = min(entries, 0xFFFE)
    struct.pack_into("<HH", raw, eocd + 8, n, n)
    struct.pack_into("<I", raw, eocd + 12, entries * 46)  # central directory size
    return bytes(raw)


def _binunicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def pickle_shared_tuple_global(levels: int = 40) -> bytes:
    """STACK_GLOBAL whose module is a tuple DAG of 2^levels leaves: str() never ends."""
    dag = _binunicode("x") + b"2\x86" * levels  # DUP, TUPLE2: (t, t), `levels` times
    return b"\x80\x04" + dag + _binunicode("name") + b"\x93."


def pickle_shared_shape(dims: int = 90_000, reduces: int = 200_000) -> bytes:
    """A 90,000-dim shape memoised once and rebuilt into a tensor 200,000 times."""
    out = bytearray(b"\x80\x02")
    out += b"ctorch._utils\n_rebuild_tensor_v2\nq\x010"  # GLOBAL, BINPUT 1, POP
    out += b"(" + b"K\x01" * dims + b"tq\x020"  # MARK, ints, TUPLE, BINPUT 2, POP
    out += b"(" + _binunicode("storage") + b"ctorch\nFloatStorage\n"
    out += _binunicode("0") + _binunicode("cpu") + b"K\x04tQq\x030"  # BINPERSID, BINPUT 3
    out += b"h\x01(h\x03K\x00h\x02tR0" * reduces  # func, (storage, 0, shape), REDUCE, POP
    return bytes(out) + b"N."


def c_comment_openers(size: int = 4 << 20) -> bytes:
    """C source of never-closed `/*`: a lazy regex rescans to the end for each (hours)."""
    return b"int main(void) { return 0; }\n" + b"/* " * (size // 3)


def gcode_blank_lines(size: int = 8192) -> bytes:
    return b"G0 X1\n" + b"\n" * size


def many_member_tar(members: int = 9_000, first: bytes | None = None) -> bytes:
    """An honest tar of many small text members (a first member `first`, if given)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(members):
            data = first if first is not None and i == 0 else (b"line %d\n" % i) * 20
            ti = tarfile.TarInfo(f"m{i:05d}.txt" if i or first is None else "id_rsa")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


PEM = (
    b"-----BEGIN RSA PRIVATE KEY-----\n"
    + b"MIIEowIBAAKCAQEA7v8mXk3pQe0x9s1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6A7B8C9\n" * 8
    + b"-----END RSA PRIVATE KEY-----\n"
)


def checkpoint(n: int = 8) -> bytes:
    """A small honest safetensors checkpoint."""
    header: dict[str, object] = {}
    off = 0
    for i in range(n):
        header[f"layer{i}.weight"] = {
            "dtype": "F32",
            "shape": [16, 16],
            "data_offsets": [off, off + 1024],
        }
        off += 1024
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * off
