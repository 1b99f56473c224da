"""Builders for a real test corpus, made with the real libraries (no torch: its zip by hand)."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

Build = TypeVar("Build", bound=Callable[[Path], Path])
# format: the builder below that makes its sample file, and the file's name
SAMPLES: dict[str, tuple[Callable[[Path], Path], str]] = {}


def sample(fmt: str, name: str) -> Callable[[Build], Build]:
    """Register the builder it decorates as the maker of `fmt`'s sample file `name`."""

    def register(build: Build) -> Build:
        SAMPLES[fmt] = (build, name)
        return build

    return register


def sample_files(d: Path) -> dict[str, Path]:
    """In `d`, the sample file of each registered model-weights and dataset format."""
    return {fmt: build(d / name) for fmt, (build, name) in SAMPLES.items()}


@sample("safetensors", "model.safetensors")
def safetensors_file(path: Path, n: int = 64) -> Path:
    from safetensors.numpy import save_file

    tensors = {
        "embed.weight": np.zeros((n, 32), dtype=np.float16),
        "layer.0.weight": np.ones((32, 32), dtype=np.float16),
        "layer.0.bias": np.ones((32,), dtype=np.float16),
    }
    save_file(tensors, str(path), metadata={"format": "np"})
    return path  # parameters: n*32 + 1024 + 32


@sample("gguf", "model.gguf")
def gguf_file(path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_context_length(128)
    w.add_tokenizer_model("llama")
    w.add_token_list([b"<s>", b"</s>", "模型".encode()])
    w.add_tensor("tok_embd.weight", np.zeros((10, 16), dtype=np.float32))
    w.add_tensor("output.weight", np.zeros((16, 10), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path  # 2 tensors, 320 parameters, architecture llama


@sample("onnx", "model.onnx")
def onnx_file(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 4), dtype=np.float32), name="W")
    b = numpy_helper.from_array(np.ones((4,), dtype=np.float32), name="B")
    node = helper.make_node("Gemm", ["X", "W", "B"], ["Y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, producer_name="corpus")
    onnx.save(model, str(path))
    return path  # 2 tensors, 36 parameters


def _pickle_tensor_dict(tensors: list[tuple[str, str, str, tuple[int, ...]]]) -> bytes:
    """data.pkl as torch.save writes it: an OrderedDict of _rebuild_tensor_v2 reduces.

    Written opcode by opcode (protocol 2) — the tests never import pickle for this.
    """
    out = bytearray(b"\x80\x02")

    def s(text: str) -> bytes:
        raw = text.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    out += b"ccollections\nOrderedDict\n)R"  # GLOBAL, EMPTY_TUPLE, REDUCE
    out += b"("  # MARK for SETITEMS
    for name, storage_cls, key, shape in tensors:
        numel = 1
        for d in shape:
            numel *= d
        out += s(name)
        out += b"ctorch._utils\n_rebuild_tensor_v2\n"
        out += b"("  # MARK for the args tuple
        out += b"(" + s("storage") + f"ctorch\n{storage_cls}\n".encode() + s(key) + s("cpu")
        out += i(numel) + b"tQ"  # TUPLE, BINPERSID
        out += i(0)
        out += b"(" + b"".join(i(d) for d in shape) + b"t"
        stride = []
        acc = 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        out += b"(" + b"".join(i(d) for d in stride) + b"t"
        out += b"\x89"  # NEWFALSE
        out += b"ccollections\nOrderedDict\n)R"
        out += b"tR"  # TUPLE, REDUCE
    out += b"u."  # SETITEMS, STOP
    return bytes(out)


@sample("torch", "model.pt")
def torch_zip(path: Path, root: str = "archive") -> Path:
    """A PyTorch-format checkpoint like torch.save writes (2 tensors, 24+4 parameters)."""
    tensors = [
        ("fc.weight", "FloatStorage", "0", (4, 6)),
        ("fc.bias", "FloatStorage", "1", (4,)),
    ]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", _pickle_tensor_dict(tensors))
        z.writestr(f"{root}/data/0", b"\x00" * 4 * 24)
        z.writestr(f"{root}/data/1", b"\x00" * 4 * 4)
        z.writestr(f"{root}/version", b"3\n")
        z.writestr(f"{root}/byteorder", b"little")
    return path


def malicious_pickle(marker: Path) -> bytes:
    """A pickle whose __reduce__ would run `touch marker` if anything unpickled it."""
    cmd = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."


@sample("parquet", "data.parquet")
def parquet_file(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"sample_id": list(range(100)), "阻抗": [0.5] * 100, "label": ["a"] * 100})
    pq.write_table(table, path)
    return path


@sample("feather", "data.feather")
def feather_file(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.feather as feather

    feather.write_feather(pa.table({"x": [1, 2, 3], "y": [4, 5, 6]}), path)
    return path


@sample("hdf5", "data.h5")
def hdf5_dataset(path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("measurements", data=np.zeros((50, 3)))
        f.create_dataset("labels", data=np.zeros((50,)))
    return path


@sample("keras", "model.h5")
def keras_h5(path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("model_weights/dense/dense")
        g.create_dataset("kernel:0", data=np.zeros((10, 5), dtype=np.float32))
        g.create_dataset("bias:0", data=np.zeros((5,), dtype=np.float32))
    return path  # 2 tensors, 55 parameters


def docx_file(path: Path, text: str) -> Path:
    import docx

    d = docx.Document()
    d.add_heading("工艺规程", 0)
    d.add_paragraph(text)
    d.save(str(path))
    return path


def pdf_file(path: Path, text: str) -> Path:
    """A one-page PDF with `text` (ASCII) in a Helvetica text object."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return write_pdf(path, objs)


def write_pdf(path: Path, objects: list[bytes], header: bytes = b"%PDF-1.4\n") -> Path:
    """`objects` numbered from 1 (the catalog first) after `header`, then the
    cross-reference table and trailer a reader needs to find them by offset."""
    out = bytearray(header)
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))
    return path


@sample("sqlite", "data.sqlite")
def sqlite_file(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE samples (id INTEGER, value REAL)")
    conn.executemany("INSERT INTO samples VALUES (?, ?)", [(i, i / 2) for i in range(20)])
    conn.commit()
    conn.close()
    return path


@sample("tfrecord", "data.tfrecord")
def tfrecord_file(path: Path, records: int = 3) -> Path:
    from agent.classify.datasets import masked_crc

    out = bytearray()
    for i in range(records):
        data = f"record {i}".encode()
        length = struct.pack("<Q", len(data))
        out += length + struct.pack("<I", masked_crc(length))
        out += data + struct.pack("<I", masked_crc(data))
    path.write_bytes(bytes(out))
    return path


@sample("npy", "arr.npy")
def npy_file(path: Path) -> Path:
    np.save(path, np.zeros((7, 3), dtype=np.float32))
    return path


def git_repo(root: Path, remote: str = "https://git.example.cn/lab/secret-project.git") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.cn",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.cn",
    }
    (root / "solver.py").write_text(
        "#!/usr/bin/env python3\n# 稀土 separation process, rare earth extraction\n"
        "def solve():\n    return 42\n"
    )
    (root / "kernel.cu").write_text(
        "// CUDA kernel for the 光刻 simulation\n__global__ void k(){}\n"
    )

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    git("remote", "add", "origin", remote)
    return root


def head_commit(root: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def tar_gz(path: Path, members: list[Path]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for m in members:
            t.add(m, arcname=m.name)
    return path


def zip_of(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@sample("jsonl", "data.jsonl")
def jsonl_file(path: Path) -> Path:
    path.write_text("".join(json.dumps({"q": f"问题 {i}", "a": i}) + "\n" for i in range(30)))
    return path
