"""Hostile input: bombs, quines, lying headers, malicious pickles, special files, races.

Each must end as a counted skip or a partial tag — never an exception, a hang, or
unbounded memory — and the skip shows in egress_agent_classify_skipped_total{reason}.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.classify import Classifier, classify_file
from agent.classify.hashing import FileChanged, HashCache, sha256_fd
from agent.config import ClassifySection
from tests.classify import corpus as C

NO_MAGIKA = ClassifySection(use_magika=False)


def skips(reason: str) -> float:
    return REGISTRY.get_sample_value("egress_agent_classify_skipped_total", {"reason": reason}) or 0


def test_zip_bomb_by_ratio_is_not_expanded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z,
        z.open("zeros.bin", "w", force_zip64=True) as fh,
    ):
        chunk = b"\x00" * (1 << 20)
        for _ in range(300):  # 300 MiB of zeros in ~300 KB
            fh.write(chunk)
    before = skips("compression_ratio")
    t0 = time.monotonic()
    a = classify_file(bomb, settings=NO_MAGIKA)
    assert time.monotonic() - t0 < 5
    assert a.skipped == "compression_ratio"
    assert "archive" in a.kinds and "partial: compression_ratio" in a.tags[0].evidence
    assert skips("compression_ratio") > before


def test_overlapping_entries_zip_is_refused(tmp_path: Path) -> None:
    """Fifield-style: two central-directory entries pointing at the same local data."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a.txt", b"A" * 100)
    data = bytearray(buf.getvalue())
    cd = data.index(b"PK\x01\x02")
    eocd = data.index(b"PK\x05\x06")
    entry = bytes(data[cd:eocd])
    second = bytearray(entry)
    second[46 : 46 + 5] = b"b.txt"
    new = data[:cd] + entry + second
    cd_size = len(entry) * 2
    end = bytearray(data[eocd:])
    struct.pack_into("<HHII", end, 8, 2, 2, cd_size, cd)
    (tmp_path / "overlap.zip").write_bytes(bytes(new + end))
    a = classify_file(tmp_path / "overlap.zip", settings=NO_MAGIKA)
    assert a.skipped == "zip_overlap"
    assert a.kinds == ("archive",)


def test_nested_zips_stop_at_the_depth_limit(tmp_path: Path) -> None:
    """42.zip style: archives within archives, each level stopped at max_archive_depth."""
    inner = C.zip_bytes({"deep.txt": b"x"})
    for level in range(8):
        inner = C.zip_bytes({f"level{level}.zip": inner, f"copy{level}.zip": inner})
    (tmp_path / "nested.zip").write_bytes(inner)
    t0 = time.monotonic()
    a = classify_file(
        tmp_path / "nested.zip", settings=ClassifySection(use_magika=False, max_archive_depth=3)
    )
    assert time.monotonic() - t0 < 5
    assert a.skipped == "depth_limit"


def test_member_identical_to_an_ancestor_is_cut(tmp_path: Path) -> None:
    """A quine contains itself: a member whose hash is an enclosing archive's is not walked."""
    from agent.classify.archives import walk_zip
    from agent.classify.base import Limits, Source
    from agent.classify.budget import Budget
    from agent.classify.tiers import ContentTiers, name_tags

    inner = C.zip_bytes({"readme.txt": b"hello"})
    outer = C.zip_bytes({"self.zip": inner})
    tiers = ContentTiers(Limits(), use_magika=False)
    budget = Budget(Limits())
    budget.ancestors.add(hashlib.sha256(inner).hexdigest())  # as if we were inside `inner`
    found = walk_zip(Source.from_bytes("outer.zip", outer), budget, tiers.classify, name_tags)
    assert budget.reasons == ["archive_quine"]
    assert found.members[0].tags == ()


def test_many_members_stop_at_the_member_limit(tmp_path: Path) -> None:
    C.zip_of(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(300)})
    a = classify_file(
        tmp_path / "many.zip", settings=ClassifySection(use_magika=False, max_archive_members=50)
    )
    assert a.skipped == "member_limit"
    assert a.tags[0].details["members"] == 50


def test_tar_expanded_bytes_limit(tmp_path: Path) -> None:
    import tarfile

    target = tmp_path / "big.tar.gz"
    with tarfile.open(target, "w:gz") as t:
        for i in range(4):
            data = random.Random(i).randbytes(1 << 20)
            ti = tarfile.TarInfo(f"r{i}.bin")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    a = classify_file(
        target, settings=ClassifySection(use_magika=False, max_archive_expanded_bytes=2 << 20)
    )
    assert a.skipped == "expanded_limit"


def test_safetensors_header_claiming_100_gb(tmp_path: Path) -> None:
    f = tmp_path / "liar.safetensors"
    f.write_bytes(struct.pack("<Q", 100 << 30) + b'{"a": {"dtype": "F32"')
    before = skips("header_too_large")
    a = classify_file(f, settings=NO_MAGIKA)
    assert a.skipped == "header_too_large"
    assert a.kinds == ("model_weights",)
    assert "content not parsed" in a.tags[0].evidence
    assert skips("header_too_large") > before


def test_safetensors_header_longer_than_the_file(tmp_path: Path) -> None:
    f = tmp_path / "short.safetensors"
    f.write_bytes(struct.pack("<Q", 5000) + b'{"a": 1}')
    a = classify_file(f, settings=NO_MAGIKA)
    assert a.skipped == "malformed" and a.kinds == ("model_weights",)


def test_gguf_with_absurd_counts(tmp_path: Path) -> None:
    f = tmp_path / "absurd.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60))
    t0 = time.monotonic()
    a = classify_file(f, settings=NO_MAGIKA)
    assert time.monotonic() - t0 < 10  # absurd counts are refused, not walked (a walk: hours)
    assert a.skipped == "absurd_count" and a.kinds == ("model_weights",)
    g = tmp_path / "array.gguf"
    key = b"general.big"
    g.write_bytes(
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
        + struct.pack("<IIQ", 9, 8, 1 << 62)
    )  # fmt: skip
    assert classify_file(g, settings=NO_MAGIKA).skipped == "absurd_count"


def test_malicious_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = C.malicious_pickle(marker)
    (tmp_path / "evil.pkl").write_bytes(payload)
    ckpt = tmp_path / "evil.pt"
    with zipfile.ZipFile(ckpt, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", b"3\n")
    a = classify_file(ckpt, settings=NO_MAGIKA)
    b = classify_file(tmp_path / "evil.pkl", settings=NO_MAGIKA)
    assert not marker.exists()
    d = a.tags[0].details
    assert d["format"] == "pytorch" and d["unsafe_globals"] == ["os.system"]
    assert "never executed" in a.tags[0].evidence
    assert b.content_type == "application/x-pickle"
    # a planted payload is a counted skip, in a checkpoint and on its own
    assert a.skipped == b.skipped == "unsafe_pickle"
    benign = tmp_path / "benign.pkl"
    benign.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00wK\x01s.")  # {"w": 1}
    assert classify_file(benign, settings=NO_MAGIKA).skipped is None
    # the payload is real: unpickling it would have created the marker
    code = f"import pickle; pickle.loads({payload!r})"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert marker.exists()


def test_truncated_files_end_as_partial_tags(tmp_path: Path) -> None:
    sources = [
        C.safetensors_file(tmp_path / "a.safetensors"),
        C.gguf_file(tmp_path / "a.gguf"),
        C.onnx_file(tmp_path / "a.onnx"),
        C.torch_zip(tmp_path / "a.pt"),
        C.parquet_file(tmp_path / "a.parquet"),
        C.hdf5_dataset(tmp_path / "a.h5"),
        C.docx_file(tmp_path / "a.docx", "text"),
        C.pdf_file(tmp_path / "a.pdf", "text"),
        C.sqlite_file(tmp_path / "a.sqlite"),
        C.tar_gz(tmp_path / "a.tar.gz", [tmp_path / "a.safetensors"]),
    ]
    partial = 0
    for src in sources:
        data = src.read_bytes()
        whole = classify_file(src, settings=NO_MAGIKA)
        for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
            t = tmp_path / f"cut-{cut}-{src.name}"
            t.write_bytes(data[:cut])
            a = classify_file(t, settings=NO_MAGIKA)
            assert a.sha256 == hashlib.sha256(data[:cut]).hexdigest(), (t, a)
            if a.skipped is None:  # the cut spared what the parser reads (a GGUF header)
                assert a.kinds == whole.kinds, (t, a)
                continue
            partial += 1
            # the signature still names a kind, and the tag says it was not fully read
            assert a.tags and a.kinds, (t, a)
            assert any(
                "not parsed" in tag.evidence or "partial" in tag.evidence for tag in a.tags
            ), (t, a)
            assert skips(a.skipped) > 0, (t, a)
    assert partial >= 2 * len(sources), partial  # most cuts break what a parser needs


def test_fifo_and_devices_are_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    before = skips("special_file")
    t0 = time.monotonic()
    assert classify_file(fifo).skipped == "special_file"  # opening it would block forever
    assert classify_file("/dev/zero").skipped == "special_file"
    assert time.monotonic() - t0 < 10  # a hang is for ever; a 1 s bound measured the machine
    assert skips("special_file") >= before + 2


def test_symlinks_and_loops(tmp_path: Path) -> None:
    os.symlink(tmp_path / "loop-b", tmp_path / "loop-a")
    os.symlink(tmp_path / "loop-a", tmp_path / "loop-b")
    assert classify_file(tmp_path / "loop-a").skipped == "symlink"
    (tmp_path / "real.py").write_text("print(1)\n")
    os.symlink(tmp_path / "real.py", tmp_path / "link.py")
    assert classify_file(tmp_path / "link.py").skipped == "symlink"
    assert classify_file(tmp_path / "missing").skipped == "vanished"


def test_permission_denied() -> None:
    """In a forked child running as nobody (we are root here, and root reads everything)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="classify-perm-")
    try:
        os.chmod(d, 0o755)
        secret = os.path.join(d, "locked.py")
        Path(secret).write_text("x = 1\n")
        os.chmod(secret, 0o600)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, classify, report, exit without cleanup
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                a = classify_file(secret, settings=NO_MAGIKA)
                os.write(w, str(a.skipped).encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        with os.fdopen(r) as f:
            assert f.read() == "permission"
    finally:
        shutil.rmtree(d)


def test_non_utf8_names(tmp_path: Path) -> None:
    name = os.path.join(os.fsencode(tmp_path), b"\xff\xfe-model.safetensors")
    C.safetensors_file(Path(os.fsdecode(name)))
    a = classify_file(os.fsdecode(name), settings=NO_MAGIKA)
    assert a.kinds == ("model_weights",)


def test_file_changing_while_hashed_is_detected(tmp_path: Path) -> None:
    f = tmp_path / "growing.bin"
    f.write_bytes(b"a" * 1000)
    fd = os.open(f, os.O_RDONLY)
    try:
        with open(f, "ab") as w:
            w.write(b"b" * 10)
        with pytest.raises(FileChanged):
            sha256_fd(fd, 1000)
    finally:
        os.close(fd)


def test_growing_file_never_caches_a_stale_hash(tmp_path: Path) -> None:
    """A writer appends while the classifier hashes; afterwards the hash is the real one."""
    import hashlib

    f = tmp_path / "log.bin"
    f.write_bytes(random.Random(2).randbytes(32 << 20))
    stop = threading.Event()

    def writer() -> None:
        with open(f, "ab") as w:
            while not stop.is_set():
                w.write(b"x" * 65536)
                w.flush()
                time.sleep(0.001)

    cache = HashCache(tmp_path / "hc.db")
    clf = Classifier(NO_MAGIKA, cache=cache)
    t = threading.Thread(target=writer)
    t.start()
    try:
        during = clf.classify_path(str(f))
    finally:
        stop.set()
        t.join()
    assert during.skipped in (None, "changed_while_read")
    after = clf.classify_path(str(f))
    assert after.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    clf.close()
    cache.close()


def test_file_deleted_after_open_still_classifies(tmp_path: Path) -> None:
    f = C.gguf_file(tmp_path / "gone.gguf")
    clf = Classifier(NO_MAGIKA)
    fd = os.open(f, os.O_RDONLY)
    st = os.stat(f)
    os.unlink(f)
    try:
        a = clf._classify_fd(str(f), fd, st)
    finally:
        os.close(fd)
    assert a.kinds == ("model_weights",)
    assert clf.classify_path(str(f)).skipped == "vanished"
    clf.close()


@pytest.mark.parametrize("fmt", ["gz", "bz2", "xz", "zst", "tar.gz"])
def test_compressed_stream_bombs_stop_at_the_ratio(tmp_path: Path, fmt: str) -> None:
    import bz2
    import gzip
    import lzma
    import tarfile

    import zstandard

    zeros = b"\x00" * (64 << 20)
    target = tmp_path / f"bomb.{fmt}"
    if fmt == "tar.gz":
        with tarfile.open(target, "w:gz") as t:
            ti = tarfile.TarInfo("zeros.bin")
            ti.size = len(zeros)
            t.addfile(ti, io.BytesIO(zeros))
    else:
        compress = {
            "gz": gzip.compress,
            "bz2": bz2.compress,
            "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress,
        }[fmt]
        target.write_bytes(compress(zeros))
    t0 = time.monotonic()
    a = classify_file(target, settings=ClassifySection(use_magika=False, max_compression_ratio=50))
    assert time.monotonic() - t0 < 10
    assert a.skipped == "compression_ratio", (fmt, a.skipped, a.tags)
    assert "archive" in a.kinds


def test_encrypted_zip_member_is_a_partial_tag(tmp_path: Path) -> None:
    buf = bytearray(C.zip_bytes({"secret.safetensors": b"x" * 100}))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = buf.index(sig)
        buf[pos + flag_at] |= 0x01  # "encrypted" general-purpose bit
    (tmp_path / "enc.zip").write_bytes(bytes(buf))
    a = classify_file(tmp_path / "enc.zip", settings=NO_MAGIKA)
    assert a.skipped == "encrypted"
    assert "model_weights" in a.kinds  # the member's name still says what it is
    assert a.tags[1].details.get("by_name") is True


def test_a_cached_partial_result_stays_partial(tmp_path: Path) -> None:
    f = tmp_path / "liar.safetensors"
    f.write_bytes(struct.pack("<Q", 100 << 30) + b'{"a": 1}')
    cache = HashCache(tmp_path / "hc.db")
    clf = Classifier(NO_MAGIKA, cache=cache)
    assert clf.classify_path(str(f)).skipped == "header_too_large"
    assert clf.classify_path(str(f)).skipped == "header_too_large"  # from the cache
    copy = tmp_path / "copy.bin"
    copy.write_bytes(f.read_bytes())
    again = clf.classify_path(str(copy))
    assert again.skipped == "header_too_large" and again.parents == (again.sha256,)
    clf.close()
    cache.close()


def test_pickle_module_is_never_loaded(tmp_path: Path) -> None:
    """The classifier decodes pickle opcodes itself: neither pickle nor pickletools loads."""
    ckpt = C.torch_zip(tmp_path / "m.pt")
    (tmp_path / "evil.pkl").write_bytes(C.malicious_pickle(tmp_path / "PWNED"))
    files = (str(ckpt), str(tmp_path / "evil.pkl"))
    code = (
        "import sys; from agent.classify import classify_file;"
        "from agent.config import ClassifySection as S;"
        f"[classify_file(p, settings=S(use_magika=False)) for p in {files!r}];"
        "print(sorted(m for m in sys.modules if m in ('pickle', 'pickletools', '_pickle')))"
    )
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    assert not (tmp_path / "PWNED").exists()


def test_opcode_decoder_agrees_with_pickletools() -> None:
    import collections
    import pickle
    import pickletools

    from agent.classify.pickle_opcodes import opcodes

    objs = [
        {"a": [1, 2.5, None, True, "x", b"y"], "b": (1, 2, 3), "c": {1, 2}, "d": frozenset([3])},
        collections.OrderedDict(a=1),
        list(range(300)),
        "é" * 300,
        2**100,
        -5,
        bytearray(b"zz"),
    ]
    for proto in range(6):
        for obj in objs:
            data = pickle.dumps(obj, protocol=proto)
            mine = [(n, a) for n, a in opcodes(data)]
            ref = [(op.name, arg) for op, arg, _ in pickletools.genops(io.BytesIO(data))]
            assert [n for n, _ in mine] == [n for n, _ in ref], (proto, obj)
            for (n, a), (_, b) in zip(mine, ref):
                if isinstance(b, (int, str, bytes)) and n not in ("STRING", "LONG", "INT"):
                    assert a == b, (proto, n, a, b)
