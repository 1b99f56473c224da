"""A generator of hostile files at volume, for the fault drills (issue 10).

`generate(root, n, marker)` writes `n` entries under `root`, cycling through the
classifier's hostile cases: zip bombs by ratio, 42.zip-style nesting, overlapping-entry
zips, safetensors headers claiming 100 GB, GGUF with absurd counts, malicious pickles,
bare and inside a torch.save zip (their payload would create `marker` if it ever ran),
truncated files of every format, FIFOs, symlink loops, non-UTF-8 names and files nobody
may read. Every file's content differs (a counter is folded in), so the hash cache
cannot answer for them. Returns the counts per case.
Also runnable: `python -m tests.drills.hostile DIR N`.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path


def _zip(
    members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED, comment: bytes = b""
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.comment = comment
    return buf.getvalue()


def _bomb() -> bytes:
    """64 MiB of zeros deflated to ~64 KB: a ratio far above classify.max_compression_ratio."""
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z,
        z.open("zeros.bin", "w", force_zip64=True) as fh,
    ):
        chunk = b"\0" * (1 << 20)
        for _ in range(64):
            fh.write(chunk)
    return buf.getvalue()


def _nested() -> bytes:
    inner = _zip({"deep.txt": b"x"})
    for level in range(8):
        inner = _zip({f"level{level}.zip": inner, f"copy{level}.zip": inner})
    return inner


def _overlap() -> bytes:
    """Two central-directory entries pointing at the same local data (Fifield-style)."""
    data = bytearray(_zip({"a.txt": b"A" * 100}, zipfile.ZIP_STORED))
    cd = data.index(b"PK\x01\x02")
    eocd = data.index(b"PK\x05\x06")
    entry = bytes(data[cd:eocd])
    second = bytearray(entry)
    second[46:51] = b"b.txt"
    end = bytearray(data[eocd:])
    struct.pack_into("<HHII", end, 8, 2, 2, len(entry) * 2, cd)
    return bytes(data[:cd] + entry + second + end)


def _quine_ish() -> bytes:
    """A zip holding a copy of itself (the classifier's archive_quine case)."""
    inner = _zip({"self.zip": b"PK\x03\x04"})
    return _zip({"self.zip": inner, "again.zip": inner})


def _safetensors_100gb(i: int) -> bytes:
    return struct.pack("<Q", 100 * 10**9) + b'{"__metadata__": {"n": "%d"}' % i


def _gguf_absurd(i: int) -> bytes:
    # magic, version 3, tensor count 2^63-1, kv count 2^63-1, then a lying string length
    return (
        b"GGUF"
        + struct.pack("<IQQ", 3, 2**63 - 1, 2**63 - 1)
        + struct.pack("<Q", 2**62)
        + b"k%d" % i
    )


def _pickle(marker: Path, i: int) -> bytes:
    """Protocol 2: `os.system('touch MARKER')` on load. Must never run."""
    cmd = f"touch {marker} # {i}".encode()
    return b"\x80\x02cos\nsystem\n(X" + struct.pack("<I", len(cmd)) + cmd + b"tR."


def _truncated(i: int) -> tuple[str, bytes]:
    """A real header of some format, cut short."""
    header = (
        struct.pack("<Q", 4096)
        + b'{"w": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0,'
    )
    formats: list[tuple[str, bytes]] = [
        ("zip", _zip({"a.txt": b"hello " * 50})[:60]),
        ("safetensors", header),
        ("gguf", b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + b"\x05\x00"),
        ("pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R"),
        ("h5", b"\x89HDF\r\n\x1a\n\x00\x00\x00"),
        ("npy", b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'sha"),
        ("parquet", b"PAR1\x15\x04\x15"),
        ("onnx", b"\x08\x07\x12\x07pytorch\x1a\x05"),
        ("pt", _zip({"archive/data.pkl": b"\x80\x02}q\x00(X"})[:120]),
        ("pkl", b"\x80\x04\x95\xff\xff\xff\xff\x00\x00\x00\x00\x8c"),
        ("7z", b"7z\xbc\xaf\x27\x1c\x00\x04"),
        ("gz", b"\x1f\x8b\x08\x00\x00\x00"),
        ("tar", b"ustar" + b"\0" * 40),
        ("docx", _zip({"word/document.xml": b"<w:document>" + b"x" * 400})[:200]),
        ("keras", _zip({"config.json": b'{"class_name": "Sequential"'})[:90]),
        ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ]
    ext, data = formats[(i // len(CASES)) % len(formats)]
    return ext, data + b"%d" % i


CASES = (
    "zip_bomb",
    "nested_zip",
    "overlap_zip",
    "quine_zip",
    "safetensors_100gb",
    "gguf_absurd",
    "malicious_pickle",
    "malicious_torch",
    "truncated",
    "fifo",
    "symlink_loop",
    "non_utf8_name",
    "unreadable",
)


def generate(root: Path, n: int, marker: Path) -> Counter[str]:
    """Write n hostile entries under root (100 per directory); return counts per case."""
    bomb, nested, overlap, quine = _bomb(), _nested(), _overlap(), _quine_ish()
    counts: Counter[str] = Counter()

    def write(d: Path, name: str, data: bytes) -> None:
        (d / name).write_bytes(data)

    writers: dict[str, Callable[[Path, int], None]] = {
        # a zip comment makes every copy a distinct file (a new sha256)
        "zip_bomb": lambda d, i: write(
            d, f"bomb{i}.zip", bomb[:-2] + struct.pack("<H", 6) + b"%06d" % i
        ),
        "nested_zip": lambda d, i: write(d, f"nested{i}.zip", nested + b"%d" % i),
        "overlap_zip": lambda d, i: write(
            d, f"overlap{i}.zip", overlap[:-2] + struct.pack("<H", 6) + b"%06d" % i
        ),
        "quine_zip": lambda d, i: write(d, f"quine{i}.zip", quine + b"%d" % i),
        "safetensors_100gb": lambda d, i: write(d, f"huge{i}.safetensors", _safetensors_100gb(i)),
        "gguf_absurd": lambda d, i: write(d, f"absurd{i}.gguf", _gguf_absurd(i)),
        "malicious_pickle": lambda d, i: write(
            d, f"evil{i}.{'pkl' if i // len(CASES) % 2 else 'pt'}", _pickle(marker, i)
        ),
        # a torch.save zip whose data.pkl calls os.system: the attack as it ships
        "malicious_torch": lambda d, i: write(
            d,
            f"trojan{i}.pt",
            _zip({"archive/data.pkl": _pickle(marker, i), "archive/version": b"3\n"}),
        ),
        "truncated": lambda d, i: write(d, f"trunc{i}.{_truncated(i)[0]}", _truncated(i)[1]),
        "fifo": lambda d, i: os.mkfifo(d / f"pipe{i}"),
        "symlink_loop": _loop,
        "non_utf8_name": lambda d, i: (d / os.fsdecode(b"name\xff\xfe%d.txt" % i)).write_bytes(
            b"text %d\n" % i
        ),
        "unreadable": _unreadable,
    }
    for i in range(n):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        case = CASES[i % len(CASES)]
        writers[case](d, i)
        counts[case] += 1
    return counts


def _loop(d: Path, i: int) -> None:
    # a -> b -> a, and a link to its own directory (a walker that follows links would recurse)
    os.symlink(f"loopb{i}", d / f"loopa{i}")
    os.symlink(f"loopa{i}", d / f"loopb{i}")
    if not (d / "up").is_symlink():
        os.symlink(".", d / "up")


def _unreadable(d: Path, i: int) -> None:
    p = d / f"secret{i}.txt"
    p.write_bytes(b"no one may read this %d\n" % i)
    p.chmod(0)


def entries(root: Path, regular_only: bool = False) -> set[str]:
    """Every non-directory entry under root, as the agent prints paths (\\xNN escapes)."""
    out: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(dirpath, x))]:
            full = os.path.join(dirpath, name)
            if regular_only and not stat.S_ISREG(os.lstat(full).st_mode):
                continue
            out.add(os.fsencode(full).decode("utf-8", "backslashreplace"))
    return out


if __name__ == "__main__":
    target, count = Path(sys.argv[1]), int(sys.argv[2])
    print(dict(generate(target, count, target / "PWNED")))
