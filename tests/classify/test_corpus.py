# ruff: noqa: E501  (the expectations table reads best one file per line)
"""A real corpus, made with the real libraries: every file gets the right kind and evidence,
also renamed to a misleading extension, copied (lineage) and archived."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.classify import Classifier, classify_file
from agent.classify.hashing import HashCache
from agent.config import ClassifySection
from agent.events import Artefact, Tag
from tests.classify import corpus as C

NO_MAGIKA = ClassifySection(use_magika=False)


def tag(a: Artefact, kind: str) -> Tag:
    found = [t for t in a.tags if t.kind == kind]
    assert found, f"no {kind} tag in {a.tags} (skipped={a.skipped})"
    return found[0]


def details(a: Artefact, kind: str) -> dict[str, Any]:
    return tag(a, kind).details


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    repo = C.git_repo(d / "repo")
    (d / "table.csv").write_text("id,温度,pressure\n1,20.5,101\n2,21.0,99\n3,19.0,100\n")
    (d / "table.tsv").write_text("id\tname\n1\ta\n2\tb\n")
    (d / "id_rsa").write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    )
    (d / "settings.py").write_text('AWS_KEY = "AKIAABCDEFGHIJKLMNOP"\n')
    (d / "part.step").write_text("ISO-10303-21;\nHEADER;\nFILE_NAME('turbine blade');\n")
    (d / "drawing.dxf").write_text("0\nSECTION\n2\nHEADER\n0\nENDSEC\n0\nEOF\n")
    (d / "mill.nc").write_text(
        "%\nO1000\nG21 G90\nG0 X0 Y0\nM3 S1200\nG1 Z-1 F100\nG1 X10\nG2 X20 Y10 R10\nM5\nM30\n%\n"
    )
    (d / "bracket.sldprt").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    (d / "notes.md").write_text("# 稀土永磁工艺\n\nrare earth magnet sintering parameters\n")
    return {
        **C.sample_files(d),
        "csv": d / "table.csv",
        "tsv": d / "table.tsv",
        "docx": C.docx_file(d / "process.docx", "稀土 rare earth sintering process"),
        "pdf": C.pdf_file(d / "spec.pdf", "rare earth sintering"),
        "md": d / "notes.md",
        "py": repo / "solver.py",
        "cu": repo / "kernel.cu",
        "repo": repo,
        "key": d / "id_rsa",
        "aws": d / "settings.py",
        "step": d / "part.step",
        "dxf": d / "drawing.dxf",
        "gcode": d / "mill.nc",
        "sldprt": d / "bracket.sldprt",
    }


EXPECTED = {
    # name: (kind, details subset, evidence fragment)
    "safetensors": ("model_weights", {"format": "safetensors", "tensors": 3, "parameters": 64 * 32 + 1024 + 32, "dtype": "f16"}, "safetensors header"),
    "gguf": ("model_weights", {"format": "gguf", "tensors": 2, "parameters": 320, "architecture": "llama"}, "architecture llama"),
    "onnx": ("model_weights", {"format": "onnx", "tensors": 2, "parameters": 36, "dtype": "f32"}, "ONNX graph"),
    "torch": ("model_weights", {"format": "pytorch", "tensors": 2, "parameters": 28, "dtype": "f32"}, "28 parameters"),
    "keras": ("model_weights", {"format": "keras_h5", "tensors": 2, "parameters": 55}, "Keras HDF5"),
    "parquet": ("dataset", {"format": "parquet", "columns": ["sample_id", "阻抗", "label"], "rows": 100}, "100 rows"),
    "feather": ("dataset", {"format": "arrow", "columns": ["x", "y"], "rows": 3}, "3 rows"),
    "hdf5": ("dataset", {"format": "hdf5", "rows": 50}, "hdf5"),
    "npy": ("dataset", {"format": "npy", "rows": 7}, "shape (7, 3)"),
    "sqlite": ("dataset", {"format": "sqlite", "rows": 20, "columns": ["samples.id", "samples.value"]}, "sqlite"),
    "tfrecord": ("dataset", {"format": "tfrecord", "rows": 3}, "3 rows"),
    "jsonl": ("dataset", {"format": "jsonl", "columns": ["q", "a"], "rows": 30}, "30 rows"),
    "csv": ("dataset", {"format": "csv", "columns": ["id", "温度", "pressure"], "rows": 3}, "3 columns"),
    "tsv": ("dataset", {"format": "tsv", "columns": ["id", "name"], "rows": 2}, "tsv"),
    "docx": ("document", {"format": "docx"}, "characters of text"),
    "pdf": ("document", {"format": "pdf", "pages": 1}, "1 pages"),
    "md": ("document", {"format": "markdown"}, "markdown"),
    "py": ("source_code", {"language": "python", "git_remote": "https://git.example.cn/lab/secret-project.git"}, "git repository"),
    "cu": ("source_code", {"language": "cuda"}, "cuda source"),
    "key": ("secret", {"type": "private_key"}, "PEM private key"),
    "aws": ("secret", {"type": "aws_access_key"}, "AWS access key id"),
    "step": ("engineering", {"format": "step"}, "ISO-10303-21"),
    "dxf": ("engineering", {"format": "dxf"}, "DXF"),
    "gcode": ("engineering", {"format": "gcode"}, "G-code"),
    "sldprt": ("engineering", {"format": "solidworks"}, "by extension .sldprt"),
}  # fmt: skip


def check(a: Artefact, name: str) -> None:
    kind, want, fragment = EXPECTED[name]
    t = tag(a, kind)
    for k, v in want.items():
        assert t.details.get(k) == v, f"{name}: {k}={t.details.get(k)!r}, want {v!r} ({t})"
    assert fragment in t.evidence, f"{name}: {fragment!r} not in {t.evidence!r}"
    assert a.sha256 and len(a.sha256) == 64
    assert a.skipped is None, f"{name}: skipped {a.skipped}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_file_gets_its_kind_and_evidence(files: dict[str, Path], name: str) -> None:
    a = classify_file(files[name], settings=NO_MAGIKA)
    check(a, name)
    assert a.sha256 == hashlib.sha256(files[name].read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name",
    [n for n in sorted(EXPECTED) if n not in ("sldprt", "md", "py", "cu", "csv", "tsv", "jsonl")],
)
def test_misleading_extension_does_not_fool_it(
    files: dict[str, Path], name: str, tmp_path: Path
) -> None:
    """Content wins over the name: each file renamed to notes.txt keeps its kind."""
    renamed = tmp_path / "notes.txt"
    shutil.copy(files[name], renamed)
    a = classify_file(renamed, settings=NO_MAGIKA)
    kind = EXPECTED[name][0]
    assert kind in a.kinds, f"{name} renamed: {a.tags}"
    if kind in ("model_weights", "dataset"):
        assert tag(a, kind).details["format"] == EXPECTED[name][1]["format"]


def test_git_commit_is_the_repositorys_head(files: dict[str, Path]) -> None:
    a = classify_file(files["py"], settings=NO_MAGIKA)
    d = details(a, "source_code")
    assert d["git_commit"] == C.head_commit(files["repo"])
    assert d["git_commit"][:12] in tag(a, "source_code").evidence


def test_copy_inherits_tags_with_lineage(files: dict[str, Path], tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "hc.db")
    clf = Classifier(NO_MAGIKA, cache=cache)
    first = clf.classify_path(str(files["safetensors"]))
    assert first.parents == ()
    copy = tmp_path / "copy-of-weights.bin"
    shutil.copy(files["safetensors"], copy)
    second = clf.classify_path(str(copy))
    assert second.sha256 == first.sha256
    assert second.parents == (first.sha256,)
    assert second.tags == first.tags
    clf.close()
    cache.close()


def test_targz_of_weights_is_an_archive_with_nested_weights(
    files: dict[str, Path], tmp_path: Path
) -> None:
    bundle = C.tar_gz(tmp_path / "bundle.tar.gz", [files["safetensors"], files["py"]])
    a = classify_file(bundle, settings=NO_MAGIKA)
    arch = details(a, "archive")
    assert arch["format"] == "tar.gz"
    assert arch["members"] == 2
    assert set(arch["nested_kinds"]) == {"model_weights", "source_code"}
    w = details(a, "model_weights")
    assert w["parameters"] == EXPECTED["safetensors"][1]["parameters"]
    assert w["member"] == "model.safetensors"
    weights_sha = hashlib.sha256(files["safetensors"].read_bytes()).hexdigest()
    assert weights_sha in a.parents
    # and the same archive under a misleading name
    hidden = tmp_path / "holiday.jpg"
    shutil.copy(bundle, hidden)
    assert "model_weights" in classify_file(hidden, settings=NO_MAGIKA).kinds


@pytest.mark.parametrize("fmt", ["zip", "tar.bz2", "tar.xz", "tar.zst", "gz"])
def test_other_archive_formats(files: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    import gzip
    import io
    import tarfile

    data = files["gguf"].read_bytes()
    target = tmp_path / f"pack.{fmt}"
    if fmt == "zip":
        C.zip_of(target, {"inner/model.gguf": data})
    elif fmt == "gz":
        target.write_bytes(gzip.compress(data))
    elif fmt == "tar.zst":
        import zstandard

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            ti = tarfile.TarInfo("model.gguf")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        target.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    else:
        with tarfile.open(target, f"w:{fmt.split('.')[1]}") as t:
            t.add(files["gguf"], arcname="model.gguf")
    a = classify_file(target, settings=NO_MAGIKA)
    assert "archive" in a.kinds and "model_weights" in a.kinds, a.tags
    assert details(a, "model_weights")["architecture"] == "llama"


def test_7z_is_listed_by_header(files: dict[str, Path], tmp_path: Path) -> None:
    py7zr = pytest.importorskip("py7zr")
    target = tmp_path / "pack.7z"
    with py7zr.SevenZipFile(target, "w") as z:
        z.write(files["safetensors"], "weights/model.safetensors")
        z.write(files["py"], "src/solver.py")
    a = classify_file(target, settings=NO_MAGIKA)
    arch = details(a, "archive")
    assert arch["format"] == "7z" and arch["members"] == 2
    assert set(arch["nested_kinds"]) == {"model_weights", "source_code"}
    assert a.skipped == "header_only"


def test_savedmodel_directory(tmp_path: Path) -> None:
    sm = tmp_path / "export"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"\x08\x01\x12\x04\x0a\x02\x08\x01")
    (sm / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00" * 400)
    (sm / "variables" / "variables.index").write_bytes(b"\x00" * 16)
    a = classify_file(sm, settings=NO_MAGIKA)
    d = details(a, "model_weights")
    assert d["format"] == "tf_savedmodel" and d["parameters"] == 100


def test_zip_with_office_and_npz(tmp_path: Path) -> None:
    import numpy as np

    np.savez(tmp_path / "arrays.npz", images=np.zeros((12, 4)), labels=np.zeros(12))
    a = classify_file(tmp_path / "arrays.npz", settings=NO_MAGIKA)
    d = details(a, "dataset")
    assert d["format"] == "npz" and d["rows"] == 12 and set(d["columns"]) == {"images", "labels"}


def test_magika_names_what_the_parsers_do_not(tmp_path: Path) -> None:
    pytest.importorskip("magika")
    f = tmp_path / "blob"
    f.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body><p>hi</p></body></html>\n"
    )
    a = classify_file(f)  # magika on: the text tier tags it a document first
    assert a.kinds
    g = tmp_path / "unknown.bin"
    g.write_bytes(bytes(range(256)) * 64)
    assert classify_file(g).sha256  # unknown binary: hashed, whatever magika says


def test_keras_v3_archive(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    h5 = tmp_path / "model.weights.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.zeros((6, 4), dtype=np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.zeros((4,), dtype=np.float32))
    target = C.zip_of(
        tmp_path / "clf.keras",
        {"metadata.json": b"{}", "config.json": b"{}", "model.weights.h5": h5.read_bytes()},
    )
    d = details(classify_file(target, settings=NO_MAGIKA), "model_weights")
    assert d["format"] == "keras" and d["tensors"] == 2 and d["parameters"] == 28


def test_magika_runs_after_the_hash_of_a_big_unknown_file(tmp_path: Path) -> None:
    """Files of 16 MiB and more are hashed beside the cheap tiers; magika comes after."""
    pytest.importorskip("magika")
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0)
    body = (
        chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", random.Random(1).randbytes(17 << 20))
        + chunk(b"IEND", b"")
    )
    f = tmp_path / "scan.dat"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    a = classify_file(f)
    assert a.content_type == "image/png" and a.kinds == ()
    assert a.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


def test_structured_text_is_not_a_table(tmp_path: Path) -> None:
    (tmp_path / "conf.json").write_text('{\n  "a": 1,\n  "b": 2,\n  "c": 3,\n  "d": 4\n}\n')
    a = classify_file(tmp_path / "conf.json", settings=NO_MAGIKA)
    assert "dataset" not in a.kinds


PROMISED = {
    "model_weights": {"format", "parameters", "tensors", "dtype"},
    "dataset": {"format", "columns", "rows"},
    "source_code": {"language", "git_remote", "git_commit"},
    "archive": {"format", "members", "nested_kinds"},
    "document": {"format", "chars"},
    "engineering": {"format"},
    "secret": {"type"},
}


def test_every_tag_carries_the_promised_details(files: dict[str, Path], tmp_path: Path) -> None:
    """agent/categories.py promises these keys to policy conditions, for every kind."""
    paths = [files[n] for n in EXPECTED]
    paths.append(C.tar_gz(tmp_path / "b.tar.gz", [files["safetensors"]]))
    liar = tmp_path / "liar.safetensors"
    liar.write_bytes(b"\xff" * 8 + b'{"')  # signature-level tag only
    paths.append(liar)
    enc = bytearray(C.zip_bytes({"w.safetensors": b"x" * 50, "a.py": b"x", "p.sldprt": b"x"}))
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (pos := enc.find(sig, start)) >= 0:
            enc[pos + at] |= 0x01  # encrypted: members are tagged by name only
            start = pos + 4
    (tmp_path / "enc.zip").write_bytes(bytes(enc))
    paths.append(tmp_path / "enc.zip")
    for p in paths:
        for t in classify_file(p, settings=NO_MAGIKA).tags:
            missing = PROMISED[t.kind] - set(t.details)
            assert not missing, f"{p.name}: {t.kind} lacks {missing}"
    by_name = classify_file(tmp_path / "enc.zip", settings=NO_MAGIKA)
    assert {t.kind for t in by_name.tags} == {
        "archive",
        "model_weights",
        "source_code",
        "engineering",
    }


def test_nested_archives_carry_deep_lineage(files: dict[str, Path], tmp_path: Path) -> None:
    """upload.zip ⊃ bundle.tar.gz ⊃ model.safetensors: the upload's parents reach the weights."""
    inner = C.tar_gz(tmp_path / "bundle.tar.gz", [files["safetensors"]])
    upload = C.zip_of(tmp_path / "upload.zip", {"bundle.tar.gz": inner.read_bytes()})
    a = classify_file(upload, settings=NO_MAGIKA)
    assert set(details(a, "archive")["nested_kinds"]) == {"archive", "model_weights"}
    weights_sha = hashlib.sha256(files["safetensors"].read_bytes()).hexdigest()
    inner_sha = hashlib.sha256(inner.read_bytes()).hexdigest()
    assert a.parents[:2] == (inner_sha, weights_sha)
    assert details(a, "model_weights")["parameters"] == EXPECTED["safetensors"][1]["parameters"]


def test_archive_facts_keep_the_parameter_count(files: dict[str, Path], tmp_path: Path) -> None:
    """A member whose header could not be read must not hide another member's count."""
    from agent.policy.facts import artefact_facts

    liar = tmp_path / "broken.gguf"
    liar.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)  # absurd counts
    upload = C.zip_of(
        tmp_path / "u.zip",
        {"a.safetensors": files["safetensors"].read_bytes(), "b.gguf": liar.read_bytes()},
    )
    a = classify_file(upload, settings=NO_MAGIKA)
    facts: dict[str, Any] = {}
    artefact_facts(facts, a, {})
    assert facts["model_weights.parameters"] == EXPECTED["safetensors"][1]["parameters"]


def _ooxml(path: Path, parts: dict[str, str]) -> Path:
    members = {"[Content_Types].xml": '<?xml version="1.0"?><Types/>'} | parts
    return C.zip_of(path, {k: v.encode() for k, v in members.items()})


def test_xlsx_and_pptx_text_is_extracted(tmp_path: Path) -> None:
    from agent.categories import CategorySpec

    cat = CategorySpec(code="RE", pack="p", keywords=("稀土", "sintering"))
    xlsx = _ooxml(
        tmp_path / "book.xlsx",
        {
            "xl/sharedStrings.xml": "<sst><si><t>稀土 配方</t></si><si><t>Sintering &amp; temp</t></si></sst>"
        },
    )
    pptx = _ooxml(
        tmp_path / "deck.pptx",
        {"ppt/slides/slide1.xml": "<p:sld><a:t>sintering line</a:t></p:sld>"},
    )
    a = classify_file(xlsx, [cat], NO_MAGIKA)
    assert details(a, "document")["format"] == "xlsx" and a.matches[0].count == 2
    b = classify_file(pptx, [cat], NO_MAGIKA)
    assert details(b, "document")["format"] == "pptx" and b.matches[0].count == 1


def test_more_engineering_formats(tmp_path: Path) -> None:
    import struct

    (tmp_path / "a.dwg").write_bytes(b"AC1032" + b"\x00" * 200)
    iges = "Start of IGES file".ljust(72) + "S      1\n" + "1H,,1H;".ljust(72) + "G      1\n"
    (tmp_path / "part.igs").write_text(iges)
    tri = struct.pack("<12fH", *([0.0] * 12), 0)
    (tmp_path / "mesh.bin").write_bytes(b"\x00" * 80 + struct.pack("<I", 3) + tri * 3)
    (tmp_path / "mesh.txt").write_text(
        "solid m\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n  endloop\n endfacet\nendsolid m\n"
    )
    want = {"a.dwg": "dwg", "part.igs": "iges", "mesh.bin": "stl", "mesh.txt": "stl"}
    for name, fmt in want.items():
        a = classify_file(tmp_path / name, settings=NO_MAGIKA)
        assert details(a, "engineering")["format"] == fmt, (name, a.tags)


def test_tokens_are_typed_never_kept(tmp_path: Path) -> None:
    token = "ghp_" + "A1b2C3d4" * 4 + "ZzZz"
    (tmp_path / "ci.yml").write_text(f"env:\n  GH_TOKEN: {token}\n")
    a = classify_file(tmp_path / "ci.yml", settings=NO_MAGIKA)
    assert details(a, "secret")["type"] == "github_token"
    assert token not in repr(a)  # only the type and count, never the value


@pytest.mark.parametrize(
    ("name", "content", "kind", "key", "value"),
    [
        ("deck.inp", "*HEADING\nbracket\n*NODE\n1, 0., 0., 0.\n", "engineering", "format", "abaqus"),
        ("crash.k", "*KEYWORD\n*NODE\n", "engineering", "format", "lsdyna"),
        ("wing.bdf", "SOL 101\nCEND\nBEGIN BULK\nGRID,1,,0.,0.,0.\n", "engineering", "format", "nastran"),
        ("body.x_t", "**ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz**\n", "engineering", "format", "parasolid"),
        ("line.L5X", '<?xml version="1.0"?>\n<RSLogix5000Content SchemaRevision="1.0">\n', "engineering", "format", "plc"),
        ("run", "#!/usr/bin/env python3\nprint('hi')\n", "source_code", "language", "python"),
        ("build", "#!/bin/sh\necho hi\n", "source_code", "language", "shell"),
    ],
)  # fmt: skip
def test_text_formats_by_content(
    tmp_path: Path, name: str, content: str, kind: str, key: str, value: str
) -> None:
    (tmp_path / name).write_text(content)
    a = classify_file(tmp_path / name, settings=NO_MAGIKA)
    assert details(a, kind)[key] == value, a.tags


def test_binary_odds_and_ends(tmp_path: Path) -> None:
    (tmp_path / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    assert (
        details(classify_file(tmp_path / "old.doc", settings=NO_MAGIKA), "document")["format"]
        == "doc"
    )
    ckpt = tmp_path / "variables.index"
    ckpt.write_bytes(b"\x00" * 64)
    assert (
        details(classify_file(ckpt, settings=NO_MAGIKA), "model_weights")["format"]
        == "tf_checkpoint"
    )
    (tmp_path / "v1.feather").write_bytes(b"FEA1" + b"\x00" * 64)
    assert (
        details(classify_file(tmp_path / "v1.feather", settings=NO_MAGIKA), "dataset")["format"]
        == "feather_v1"
    )
    odt = C.zip_of(
        tmp_path / "spec.odt",
        {
            "mimetype": b"application/vnd.oasis.opendocument.text",
            "content.xml": b"<office:text><text:p>rare earth</text:p></office:text>",
        },
    )
    d = details(classify_file(odt, settings=NO_MAGIKA), "document")
    assert d["format"] == "odf" and d["chars"] == len("rare earth")
