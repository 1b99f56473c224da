"""Property tests: random and truncated bytes never make a parser raise anything but
ParseError, and never make the content tiers raise at all — quickly."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.classify import datasets, delimited, documents, onnx_graph, weights
from agent.classify.base import Finding, Limits, ParseError, Source
from agent.classify.pickle_vm import scan_pickle
from agent.classify.tiers import ContentTiers
from tests.classify import corpus as C

LIMITS = Limits(max_archive_expanded_bytes=8 << 20, max_member_inline=1 << 20)
TIERS = ContentTiers(LIMITS, use_magika=False)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Parser = Callable[[Source, Limits], Finding]
PARSERS: dict[str, Parser] = {
    "safetensors": weights.parse_safetensors,
    "gguf": weights.parse_gguf,
    "onnx": onnx_graph.parse_onnx,
    "pickle": weights.parse_pickle,
    "npy": datasets.parse_npy,
    "tfrecord": datasets.parse_tfrecord,
    "parquet": datasets.parse_parquet,
    "arrow": datasets.parse_arrow,
    "hdf5": datasets.parse_hdf5,
    "pdf": documents.parse_pdf,
    "sqlite": lambda src, lim: datasets.parse_sqlite(src, lim, None),
}
PREFIX = {
    "safetensors": struct.pack("<Q", 40) + b'{"',
    "gguf": b"GGUF\x03\x00\x00\x00",
    "onnx": b"\x08\x07\x12",
    "pickle": b"\x80\x02",
    "npy": b"\x93NUMPY\x01\x00",
    "tfrecord": b"",
    "parquet": b"PAR1",
    "arrow": b"ARROW1\x00\x00",
    "hdf5": b"\x89HDF\r\n\x1a\n",
    "pdf": b"%PDF-1.4\n",
    "sqlite": b"SQLite format 3\x00",
}


def only_parse_errors(parser: Parser, data: bytes) -> None:
    try:
        parser(Source.from_bytes("x", data), LIMITS)
    except ParseError:
        pass


@pytest.mark.parametrize("name", sorted(PARSERS))
@FAST
@given(tail=st.binary(max_size=2048))
def test_parsers_raise_only_parse_error_on_random_bytes(name: str, tail: bytes) -> None:
    only_parse_errors(PARSERS[name], PREFIX[name] + tail)


class Samples(dict[str, bytes]):
    def __repr__(self) -> str:  # keep hypothesis reports short
        return "<samples>"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("samples")
    built = C.sample_files(d)
    built["arrow"] = built.pop("feather")  # the parser's name for it
    built["docx"] = C.docx_file(d / "a.docx", "x")
    built["pdf"] = C.pdf_file(d / "a.pdf", "x")
    built["targz"] = C.tar_gz(d / "a.tar.gz", [built["safetensors"]])
    samples = {name: path.read_bytes() for name, path in built.items()}
    samples["pickle"] = C._pickle_tensor_dict([("w", "FloatStorage", "0", (2, 3))])
    return Samples(samples)


def _mutated(data: st.DataObject, sample: bytes, flips: int) -> bytes:
    """`sample` with up to `flips` bytes overwritten, then cut short: a drawn length."""
    raw = bytearray(sample)
    cut = data.draw(st.integers(0, len(raw)))
    at = st.tuples(st.integers(0, max(len(raw) - 1, 0)), st.integers(0, 255))
    for pos, value in data.draw(st.lists(at, max_size=flips)):
        if pos < len(raw):
            raw[pos] = value
    return bytes(raw[:cut])


@pytest.mark.parametrize("name", sorted(PARSERS))
@FAST
@given(data=st.data())
def test_parsers_on_truncated_and_mutated_real_files(
    samples: dict[str, bytes], name: str, data: st.DataObject
) -> None:
    only_parse_errors(PARSERS[name], _mutated(data, samples[name], flips=4))


@pytest.mark.parametrize("name", ["torch", "docx", "pdf", "targz", "safetensors", "gguf", "hdf5"])
@FAST
@given(data=st.data())
def test_content_tiers_never_raise(
    samples: dict[str, bytes], name: str, data: st.DataObject
) -> None:
    found = TIERS.classify(Source.from_bytes(f"f.{name}", _mutated(data, samples[name], flips=3)))
    assert isinstance(found, Finding)


@FAST
@given(
    blob=st.binary(max_size=4096),
    name=st.sampled_from(["a.zip", "a.tar", "x.txt", "a.py", "b.csv", "n"]),
)
def test_content_tiers_on_random_bytes(blob: bytes, name: str) -> None:
    assert isinstance(TIERS.classify(Source.from_bytes(name, blob)), Finding)


@FAST
@given(st.binary(max_size=4096))
def test_pickle_scanner_only_parse_error(data: bytes) -> None:
    try:
        scan_pickle(b"\x80\x04" + data)
    except ParseError:
        pass


@FAST
@given(
    members=st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
        st.binary(max_size=512),
        max_size=8,
    )
)
def test_random_zip_and_tar_archives(members: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    found = TIERS.classify(Source.from_bytes("r.zip", buf.getvalue()))
    assert found.tags  # an archive (or npz, when every member is .npy)
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as t:
        for n, b in members.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(b)
            t.addfile(ti, io.BytesIO(b))
    assert isinstance(TIERS.classify(Source.from_bytes("r.tar", tbuf.getvalue())), Finding)


def test_git_config_parser_on_odd_files(tmp_path: Path) -> None:
    from agent.classify.source import git_info

    repo = tmp_path / "r"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/dev\n")
    sha = "ab" * 20
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/dev\n")
    (repo / ".git" / "config").write_text(
        '[core]\n\tbare = false\n[remote "upstream"]\n\turl = https://user:tok3n@git.example.cn/x.git\n'
    )
    (repo / "src").mkdir()
    info = git_info(str(repo / "src" / "a.py"))
    assert info is not None
    assert info.commit == sha and info.branch == "dev"
    assert info.remote == "https://git.example.cn/x.git"  # credentials removed
    # a worktree-style .git file pointing elsewhere
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    info2 = git_info(str(wt / "b.py"))
    assert info2 is not None and info2.commit == sha


@FAST
@given(text=st.text(max_size=3000), ext=st.sampled_from(["py", "c", "sql", "m", "csv", "txt", ""]))
def test_text_tier_functions_never_raise(text: str, ext: str) -> None:
    from agent.classify import code_comments, documents, engineering, secrets, source

    lang = source.language_for(f"f.{ext}", text.encode("utf-8", "surrogatepass")[:256])
    code_comments.comments(text, lang or "c", 10_000)
    engineering.text_tag(text, ext)
    secrets.secret_tags(text)
    delimited.sniff_delimited(text, ext)
    datasets.is_jsonl(text)
    documents.text_document(text, ext)


@FAST
@given(config=st.text(max_size=2000), head=st.text(max_size=100))
def test_git_files_with_random_content(
    tmp_path_factory: pytest.TempPathFactory, config: str, head: str
) -> None:
    from agent.classify import source

    repo = tmp_path_factory.mktemp("g")
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text(config, errors="surrogateescape")
    (repo / ".git" / "HEAD").write_text(head, errors="surrogateescape")
    info = source.git_info(str(repo / "x.py"))
    assert info is not None
    assert info.commit is None or len(info.commit) in (40, 64)
