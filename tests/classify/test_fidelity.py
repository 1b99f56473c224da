"""Issue 15: what real-world files are — prose vs structured text, public keys vs
secrets, delimited tables as they are found, and binary model and key formats.

Every content here is made by the real tool (cryptography, pyarrow, onnx...) or written
as the format's specification lays it out; none is tuned to a particular file.
"""

from __future__ import annotations

import datetime
import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.classify.base import Limits, Source
from agent.classify.documents import prose_evidence
from agent.classify.secrets import credential_file_tags, der_kind, public_material
from agent.classify.tiers import ContentTiers

TIERS = ContentTiers(Limits(), use_magika=False)


def kinds(name: str, data: bytes) -> list[str]:
    return [t.kind for t in TIERS.classify(Source.from_bytes(name, data)).tags]


def tag(name: str, data: bytes, kind: str) -> dict[str, object]:
    found = TIERS.classify(Source.from_bytes(name, data))
    return next(t.details for t in found.tags if t.kind == kind)


# --- "document" means prose -------------------------------------------------------------
PROSE = (
    "The cathode slurry is coated onto aluminium foil at a speed of twelve metres per\n"
    "minute. After drying, the electrode is calendered to the target density and slit.\n"
    "Each lot is recorded with its mixing time, viscosity and solid content.\n"
)
AFM = "StartFontMetrics 4.1\nFontName Vera\nC 32 ; WX 318 ; N space ; B 0 0 0 0 ;\n" * 3
SVG = (
    '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10">\n'
    + ('<path d="M 0 0 L 10 10 Z" fill="none" stroke="black"/>\n' * 20)
    + "</svg>\n"
)
VOCAB = "\n".join(["[PAD]", "[UNK]", "[CLS]", "the", "of", "##ing", "##s", "model"] * 50)
GERBER = (
    "G04 Layer: top copper*\n%FSLAX46Y46*%\n%MOMM*%\n%ADD10C,0.254*%\nD10*\n"
    + ("X1000Y2000D02*\nX3000Y2000D01*\n" * 40)
    + "M02*\n"
)
SHADER = (
    "#version 330 core\nlayout(location = 0) in vec3 pos;\nuniform mat4 mvp;\n"
    "void main() {\n    gl_Position = mvp * vec4(pos, 1.0);\n}\n"
)


def test_prose_is_a_document_and_structured_text_is_not() -> None:
    assert kinds("notes.txt", PROSE.encode()) == ["document"]
    assert kinds("notes", PROSE.encode()) == ["document"]
    assert kinds(
        "说明.txt",
        "本工艺采用高温固相法合成正极材料。烧结温度为九百摄氏度，保温十二小时。".encode(),
    ) == ["document"]
    for name, text in (
        ("Vera.afm", AFM),
        ("icon.svg", SVG),
        ("vocab.txt", VOCAB),
        ("top.gbr", GERBER),  # engineering (PCB artwork), never a document
        ("shade.vert", SHADER),
    ):
        assert "document" not in kinds(name, text.encode()), name
        assert prose_evidence(text) is None, name


def test_gerber_is_pcb_artwork() -> None:
    assert tag("top.gbr", GERBER.encode(), "engineering")["format"] == "gerber"
    assert tag("renamed", GERBER.encode(), "engineering")["format"] == "gerber"


def test_document_formats_stay_documents() -> None:
    assert kinds("README.md", b"# Title\n\nshort\n") == ["document"]
    assert kinds("page", b"<!DOCTYPE html><html><body><p>hi</p></body></html>") == ["document"]
    assert kinds("paper", b"\\documentclass{article}\n\\begin{document}\nx\n") == ["document"]


@settings(deadline=None, max_examples=50)
@given(st.text(max_size=3000))
def test_prose_evidence_never_raises(text: str) -> None:
    prose_evidence(text)


def test_prose_evidence_is_linear() -> None:
    import time

    for text in ("a. " * 400_000, "word " * 400_000, "，。" * 400_000, "\n" * 1_000_000):
        t0 = time.process_time()
        prose_evidence(text)
        assert time.process_time() - t0 < 2.0


# --- public keys and certificates are not secrets -----------------------------------------
def _dsa_parameters_pem(n: object) -> bytes:
    """`openssl dsaparam` output: PEM of DER SEQUENCE { p, q, g } (RFC 3279)."""
    import base64

    def length(k: int) -> bytes:
        return bytes([k]) if k < 128 else b"\x82" + k.to_bytes(2, "big")

    def integer(v: int) -> bytes:
        raw = v.to_bytes(v.bit_length() // 8 + 1, "big")
        return b"\x02" + length(len(raw)) + raw

    body = b"".join(integer(getattr(n, a)) for a in ("p", "q", "g"))
    der = b"\x30" + length(len(body)) + body
    b64 = base64.encodebytes(der).decode()
    return f"-----BEGIN DSA PARAMETERS-----\n{b64}-----END DSA PARAMETERS-----\n".encode()


def _key_material() -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization as S
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    rsa_key = rsa.generate_private_key(65537, 2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(7)
        .not_valid_before(datetime.datetime(2024, 1, 1))
        .not_valid_after(datetime.datetime(2034, 1, 1))
        .sign(ec_key, hashes.SHA256())
    )
    nopw = S.NoEncryption()
    params = dsa.generate_parameters(1024)
    return {
        "cert.pem": cert.public_bytes(S.Encoding.PEM),
        "cert.der": cert.public_bytes(S.Encoding.DER),
        "pub.pem": rsa_key.public_key().public_bytes(
            S.Encoding.PEM, S.PublicFormat.SubjectPublicKeyInfo
        ),
        "pub.der": rsa_key.public_key().public_bytes(
            S.Encoding.DER, S.PublicFormat.SubjectPublicKeyInfo
        ),
        "id_rsa.pub": rsa_key.public_key().public_bytes(S.Encoding.OpenSSH, S.PublicFormat.OpenSSH),
        "dsaparam.pem": _dsa_parameters_pem(params.parameter_numbers()),
        "key.der": rsa_key.private_bytes(S.Encoding.DER, S.PrivateFormat.PKCS8, nopw),
        "ec.der": ec_key.private_bytes(S.Encoding.DER, S.PrivateFormat.PKCS8, nopw),
        "rsa1.der": rsa_key.private_bytes(S.Encoding.DER, S.PrivateFormat.TraditionalOpenSSL, nopw),
        "enc.der": ec_key.private_bytes(
            S.Encoding.DER, S.PrivateFormat.PKCS8, S.BestAvailableEncryption(b"pw")
        ),
        "bundle.p12": pkcs12.serialize_key_and_certificates(
            b"lab", ec_key, cert, None, S.BestAvailableEncryption(b"pw")
        ),
        "key.pem": ec_key.private_bytes(S.Encoding.PEM, S.PrivateFormat.PKCS8, nopw),
    }


def test_public_material_is_neither_secret_nor_document() -> None:
    files = _key_material()
    for name in ("cert.pem", "cert.der", "pub.pem", "pub.der", "id_rsa.pub", "dsaparam.pem"):
        for shown in (name, "renamed"):
            assert kinds(shown, files[name]) == [], (name, shown)
    assert public_material(files["cert.pem"].decode()) == "x509-certificate"
    assert public_material(files["dsaparam.pem"].decode()) == "dsa-parameters"
    assert public_material(files["cert.pem"].decode() + files["key.pem"].decode()) is None


def test_der_private_keys_and_pkcs12_are_secrets_also_renamed() -> None:
    files = _key_material()
    want = {"key.der": "private_key", "ec.der": "private_key", "rsa1.der": "private_key"}
    want |= {"enc.der": "private_key", "bundle.p12": "pkcs12"}
    for name, typ in want.items():
        for shown in (name, "blob.bin"):
            found = TIERS.classify(Source.from_bytes(shown, files[name]))
            assert [(t.kind, t.details["type"]) for t in found.tags] == [("secret", typ)], shown
    # one byte more or less: the outer length no longer is the file
    assert der_kind(files["key.der"] + b"\x00", len(files["key.der"]) + 1) is None
    assert der_kind(files["key.der"][:-1], len(files["key.der"]) - 1) is None


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200))
def test_der_kind_never_raises(data: bytes) -> None:
    der_kind(b"\x30" + data, len(data) + 1)


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://10.0.0.1:6443
  name: lab
users:
- name: admin
  user:
    client-certificate-data: LS0tLS1CRUdJTiBDRVJU
    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ==
"""


def test_credential_files_are_secrets() -> None:
    types = {t.details["type"] for t in credential_file_tags(KUBECONFIG)}
    assert types == {"kubeconfig"}
    assert "secret" in kinds("config", KUBECONFIG.encode())
    adc = json.dumps(
        {"client_id": "x", "client_secret": "d-FL95Q1", "refresh_token": "1//0gLk2Q3abcdEFGH"}
    )
    assert [t.details["type"] for t in credential_file_tags(adc)] == ["gcp_oauth_credentials"]
    az = json.dumps({"clientId": "a", "clientSecret": "s3cr3t-value-1234", "tenantId": "t"})
    assert [t.details["type"] for t in credential_file_tags(az)] == ["azure_credentials"]
    docker = '{"auths": {"registry.lab": {"auth": "dXNlcjpwYXNzd29yZA=="}}}'
    assert [t.details["type"] for t in credential_file_tags(docker)] == ["docker_auth"]
    netrc = "machine git.lab.cn login ci password hunter2hunter2\n"
    assert [t.details["type"] for t in credential_file_tags(netrc)] == ["netrc"]
    # a kubeconfig without credentials, and prose that mentions them, are not secrets
    assert credential_file_tags(KUBECONFIG.split("users:")[0]) == []
    assert credential_file_tags("Set the client_secret and the refresh_token.") == []


def test_credential_patterns_are_linear() -> None:
    import time

    for lit in ("kind: Config\n", "refresh_token", "clientSecret", "tenantId", "auths", "password"):
        text = lit * (4_000_000 // len(lit))
        t0 = time.process_time()
        credential_file_tags(text)
        assert time.process_time() - t0 < 2.0, lit


# --- delimited tables as they are found ----------------------------------------------------
def test_csv_with_comments_title_rows_and_quotes() -> None:
    rows = "".join(f"{i},{i * 0.5},{'ab'[i % 2]}\n" for i in range(50))
    commented = "# exported 2024-01-01\n# units: mm\nid,len,cls\n" + rows
    d = tag("data.txt", commented.encode(), "dataset")
    assert d["columns"] == ["id", "len", "cls"] and d["rows"] == 50
    titled = "569,30,malignant,benign\n" + "".join(
        f"{i}.1,{i}.2,{i}.3,{i}.4,{i}.5,0\n" for i in range(40)
    )
    assert tag("bc.csv", titled.encode(), "dataset")["format"] == "csv"
    assert kinds("bc", titled.encode()) == ["dataset"]
    quoted = "name,city,score\n" + "".join(f'"Doe, J{i}","Paris, FR",{i}\n' for i in range(30))
    d = tag("q.dat", quoted.encode(), "dataset")
    assert len(d["columns"]) == 3


def test_whitespace_numeric_table() -> None:
    table = "x y z\n" + "".join(f"{i} {i * 1.5:.3f} {-i}e-3\n" for i in range(40))
    assert tag("points.dat", table.encode(), "dataset")["format"] == "whitespace_table"
    assert kinds("points", table.encode()) == ["dataset"]
    words = "".join(f"token{i} other{i} more{i}\n" for i in range(40))
    assert "dataset" not in kinds("words.txt", words.encode())


def test_csv_gz_is_an_archive_of_a_dataset() -> None:
    table = "a,b\n" + "".join(f"{i},{i}\n" for i in range(100))
    got = kinds("digits.csv.gz", gzip.compress(table.encode()))
    assert "dataset" in got


def test_prose_with_commas_is_not_a_table() -> None:
    text = "".join(f"Line {i} says hello, and then it goes on at some length about it.\n"
                   for i in range(10))  # fmt: skip
    assert kinds("story.txt", text.encode()) == ["document"]


@settings(deadline=None, max_examples=100)
@given(st.text(alphabet=st.sampled_from(list(',;\t|" \n#ab1.')), max_size=2000))
def test_sniffer_never_raises(text: str) -> None:
    from agent.classify.delimited import sniff_layout

    sniff_layout(text, "csv")
    sniff_layout(text, "")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


# --- datasets in statistics formats and JSON ---------------------------------------------
def test_json_array_of_records() -> None:
    records = [{"id": i, "name": f"n{i}", "score": i / 3} for i in range(200)]
    data = json.dumps(records, indent=1).encode()
    for name in ("rows.json", "rows"):
        d = tag(name, data, "dataset")
        assert (
            d["format"] == "json" and d["rows"] == 200 and d["columns"] == ["id", "name", "score"]
        )
    # a cut array (an archive member's head): rows estimated from the bytes per record
    cut = TIERS.classify(Source.from_bytes("rows.json", data[:5000], size=len(data)))
    est = next(t for t in cut.tags if t.kind == "dataset").details["rows"]
    assert 150 <= est <= 260
    for not_records in (b"[1, 2, 3]", b'[{"a": 1}]', b'[{"a": 1}, {"b": 2}, {"c": 3}]', b"[[[[[[["):
        assert "dataset" not in kinds("x.json", not_records), not_records
    assert "dataset" not in kinds("deep.json", b"[" * 100_000 + b"]" * 100_000)


def test_orc() -> None:
    import io

    import pyarrow as pa
    import pyarrow.orc as orc

    buf = io.BytesIO()
    orc.write_table(pa.table({"x": list(range(500)), "label": ["a"] * 500}), buf)
    for name in ("t.orc", "renamed.bin"):
        d = tag(name, buf.getvalue(), "dataset")
        assert d["format"] == "orc" and d["rows"] == 500 and d["columns"] == ["x", "label"]


def _stata_header(release: int, nvar: int, nobs: int) -> bytes:
    """The opening of a Stata 117-119 .dta (Stata's dta format specification)."""
    k, n = ("<H", "<I") if release == 117 else ("<I" if release == 119 else "<H", "<Q")
    import struct

    return (
        f"<stata_dta><header><release>{release}</release><byteorder>LSF</byteorder><K>".encode()
        + struct.pack(k, nvar)
        + b"</K><N>"
        + struct.pack(n, nobs)
        + b"</N><label>\x00\x00</label><timestamp>\x00</timestamp></header><map>"
        + b"\x00" * 64
    )


def test_stata_spss_sas_headers() -> None:
    import struct

    for release in (117, 118, 119):
        d = tag("survey.dta", _stata_header(release, 12, 3400), "dataset")
        assert d["format"] == "stata" and d["rows"] == 3400 and d["variables"] == 12
    old = bytes([114, 2, 1, 0]) + struct.pack("<HI", 7, 250) + b"\x00" * 200
    assert tag("old.dta", old, "dataset")["rows"] == 250
    assert "dataset" not in kinds("old.bin", old)  # the old header is too weak unnamed
    stamped = old[:91] + b"27 May 2010 23:49\x00" + old[109:]
    assert tag("renamed", stamped, "dataset")["rows"] == 250
    sav = (
        b"$FL2"
        + b"@(#) IBM SPSS STATISTICS 64-bit".ljust(60)
        + struct.pack("<iiiii", 2, 9, 1, 0, 812)
    )
    sav += b"\x00" * 200
    d = tag("study.sav", sav, "dataset")
    assert d["format"] == "spss" and d["rows"] == 812
    from agent.classify.tables import SAS_MAGIC

    assert tag("x.sas7bdat", SAS_MAGIC + b"\x00" * 1000, "dataset")["format"] == "sas7bdat"


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=400), st.sampled_from(["ORC", "<stata_dta><header><release>", "$FL2"]))
def test_table_headers_never_raise_but_parse_errors(data: bytes, magic: str) -> None:
    found = TIERS.classify(Source.from_bytes("x.dta", magic.encode() + data))
    assert found is not None


# --- model formats ----------------------------------------------------------------------
def _legacy_torch() -> bytes:
    """torch.save(..., _use_new_zipfile_serialization=False) byte for byte: the pickles
    of the magic number, protocol version and sys_info, the state dict whose tensors
    name persistent storages, the storage keys, then the raw storages. Written opcode
    by opcode as in corpus.py (no torch, and nothing here is ever unpickled)."""
    import pickle
    import struct

    from tests.classify.corpus import _pickle_tensor_dict

    out = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    out += pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    out += _pickle_tensor_dict([("fc.weight", "FloatStorage", "0", (4, 6)),
                                ("fc.bias", "HalfStorage", "1", (4,))])  # fmt: skip
    out += pickle.dumps(["0", "1"], protocol=2)
    for n in (24, 4):
        out += struct.pack("<q", n) + b"\x00" * 4 * n
    return out


def test_legacy_torch_pickle_also_renamed() -> None:
    data = _legacy_torch()
    for name in ("model.pt", "weights.bin", "x"):
        d = tag(name, data, "model_weights")
        assert d["format"] == "pytorch_legacy" and d["tensors"] == 2 and d["parameters"] == 28
    cut = data[:30]  # the header pickles are there, the state dict is not
    assert TIERS.classify(Source.from_bytes("m.pt", cut)).skipped in ("malformed", "truncated")


def _tflite(const: bool = True) -> bytes:
    """A TFLite flatbuffer by the schema (tensorflow/lite/schema/schema.fbs): Model{
    version=0, subgraphs=2, buffers=4}, SubGraph{tensors=0}, Tensor{shape=0, type=1,
    buffer=2}, Buffer{data=0}; identifier TFL3."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def vec_i32(values: list[int]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependInt32(v)
        return b.EndVector()

    def vec_off(offs: list[int]) -> int:
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    weight = bytes(4 * 8 * 16)
    b.StartVector(1, len(weight), 16)
    for byte in reversed(weight):
        b.PrependByte(byte)
    data = b.EndVector()
    buffers = []
    for payload in (None, data if const else None, None):
        b.StartObject(3)
        if payload is not None:
            b.PrependUOffsetTRelativeSlot(0, payload, 0)
        buffers.append(b.EndObject())
    tensors = []
    for shape, buf in (([1, 16], 0), ([8, 16], 1), ([1, 8], 2)):
        s = vec_i32(shape)
        b.StartObject(5)
        b.PrependUOffsetTRelativeSlot(0, s, 0)
        b.PrependInt8Slot(1, 0, 0)
        b.PrependUint32Slot(2, buf, 0)
        tensors.append(b.EndObject())
    tv = vec_off(tensors)
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tv, 0)
    sub = b.EndObject()
    subs, bufs = vec_off([sub]), vec_off(buffers)
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(2, subs, 0)
    b.PrependUOffsetTRelativeSlot(4, bufs, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def test_tflite_counts_constant_tensors() -> None:
    for name in ("m.tflite", "renamed"):
        d = tag(name, _tflite(), "model_weights")
        assert d["format"] == "tflite" and d["tensors"] == 1 and d["parameters"] == 128
    assert tag("m.tflite", _tflite(const=False), "model_weights")["parameters"] == 0


def test_fasttext_and_word2vec() -> None:
    import struct

    from agent.classify.models import FASTTEXT_MAGIC

    # fastText .bin (src/fasttext.cc saveModel, args.cc save, dictionary.cc save)
    ft = struct.pack("<iI", FASTTEXT_MAGIC, 12)
    ft += struct.pack("<12i", 100, 5, 5, 5, 5, 1, 2, 3, 200_000, 0, 0, 100) + struct.pack(
        "<d", 1e-4
    )
    ft += struct.pack("<3iqq", 1000, 990, 10, 50_000, -1) + b"\x00" * 512
    d = tag("lid.bin", ft, "model_weights")
    assert d["format"] == "fasttext" and d["parameters"] == (990 + 200_000) * 100 + 10 * 100
    # word2vec binary (word2vec.c: "%lld %lld\n" then "word " + dim float32 + "\n")
    words, dim = 50, 20
    w2v = f"{words} {dim}\n".encode() + b"".join(
        f"w{i} ".encode() + struct.pack(f"<{dim}f", *([0.25] * dim)) + b"\n" for i in range(words)
    )
    for name in ("vectors.bin", "renamed"):
        d = tag(name, w2v, "model_weights")
        assert d["format"] == "word2vec" and d["parameters"] == words * dim
    text = f"{words} 3\n" + "".join(f"w{i} 0.1 -0.2 0.3\n" for i in range(words))
    assert tag("vectors.txt", text.encode(), "model_weights")["parameters"] == words * 3
    assert "model_weights" not in kinds("counts.txt", b"12 3\nno numbers here at all\n" * 3)


def test_coreml_header() -> None:
    # Model{specificationVersion=4, description=2 {}, neuralNetwork=500 {}}
    spec = b"\x08\x04" + b"\x12\x00" + b"\xa2\x1f\x02\x0a\x00"
    d = tag("clf.mlmodel", spec, "model_weights")
    assert d["format"] == "coreml"
    unnamed = TIERS.classify(Source.from_bytes("clf.bin", spec)).tags
    assert all(t.details.get("format") != "coreml" for t in unnamed)  # only by name


def test_onnx_counts_constants_subgraphs_and_external_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    const = helper.make_node(
        "Constant", [], ["W"], value=numpy_helper.from_array(np.ones((8, 4), np.float32))
    )
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(np.ones(5)))],
        "then", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [5])],
    )  # fmt: skip
    cond = helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch)
    mm = helper.make_node("MatMul", ["X", "W"], ["Y"])
    graph = helper.make_graph(
        [const, mm, cond],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    model = helper.make_model(graph)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    d = tag("m.onnx", path.read_bytes(), "model_weights")
    assert d["parameters"] == 32 + 5 + 5 and d["constant_tensors"] == 3
    init = numpy_helper.from_array(np.ones((64, 64), np.float32), name="B")
    graph2 = helper.make_graph(
        [helper.make_node("Add", ["X", "B"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [64, 64])], initializer=[init],
    )  # fmt: skip
    ext = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph2), str(ext), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.data", size_threshold=0)  # fmt: skip
    d = tag("ext.onnx", ext.read_bytes(), "model_weights")
    assert d["parameters"] == 4096 and d["external_tensors"] == 1


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=600), st.sampled_from(["tflite", "fasttext", "w2v", "coreml"]))
def test_model_headers_on_hostile_bytes(data: bytes, fmt: str) -> None:
    import struct

    from agent.classify.models import FASTTEXT_MAGIC

    prefix = {
        "tflite": struct.pack("<I", 16) + b"TFL3",
        "fasttext": struct.pack("<iI", FASTTEXT_MAGIC, 12),
        "w2v": b"3 4\nab ",
        "coreml": b"\x08\x04",
    }[fmt]
    found = TIERS.classify(Source.from_bytes("x.mlmodel", prefix + data))
    assert found.skipped in (None, "malformed", "truncated", "absurd_count")


def test_formats_found_in_the_wild() -> None:
    import struct

    # fastText's first releases wrote no magic: the argument block must all be plausible
    args = struct.pack("<12i", 10, 5, 5, 5, 5, 1, 2, 2, 1000, 3, 6, 10_000)
    old_ft = args + struct.pack("<d", 1e-4) + struct.pack("<3iq", 1762, 1762, 0, 60_000) + bytes(64)
    assert tag("lee.bin", old_ft, "model_weights")["parameters"] == (1762 + 1000) * 10 + 1762 * 10
    assert "model_weights" not in kinds("x.bin", struct.pack("<12i", *range(99, 111)) + bytes(64))
    # a single numeric column (a target vector) and a Matrix Market file are datasets
    column = "".join(f"{i * 1.5:.18e}\n" for i in range(40))
    assert kinds("target.csv", column.encode()) == ["dataset"]
    assert "dataset" not in kinds("few.txt", b"1\n2\n3\n")
    mm = "%%MatrixMarket matrix coordinate real general\n% comment\n9 12 4\n"
    mm += "1 1 0.5\n2 3 1.0\n4 4 2.5\n9 12 0.1\n"
    assert kinds("corpus.mm", mm.encode()) == ["dataset"]
    # a TSV in a legacy 8-bit code page (cp852) is still a table
    tsv = "".join(f"sł{i}\tžena{i}\t{i}\n" for i in range(20)).encode("cp852")
    assert kinds("pairs.tsv", tsv) == ["dataset"]
    # comments of a config file are not prose; X9.42 DH parameters are public
    rc = "# This style is used for the gallery. It is part of the private API.\n"
    rc += "# make it so the axes labels don't show up. Obviously not good style.\n"
    rc += "axes.grid: True\nfigure.figsize: 2, 2\n"
    assert kinds("gallery.mplstyle", rc.encode()) == []
    x942 = (
        "-----BEGIN X9.42 DH PARAMETERS-----\nMIICKQKCAQEArRB+\n-----END X9.42 DH PARAMETERS-----\n"
    )
    assert kinds("dhp.pem", x942.encode()) == []


def _xlsx(rows: list[list[str | int]]) -> bytes:
    """An .xlsx as Excel lays it out (ECMA-376): shared strings for text cells."""
    import io
    import zipfile

    strings: list[str] = []
    body = []
    for r, row in enumerate(rows, 1):
        cells = []
        for c, v in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if isinstance(v, str):
                strings.append(v)
                cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{v}</v></c>')
        body.append(f'<row r="{r}">{"".join(cells)}</row>')
    sheet = f"<worksheet><sheetData>{''.join(body)}</sheetData></worksheet>"
    sst = "<sst>" + "".join(f"<si><t>{s}</t></si>" for s in strings) + "</sst>"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
        z.writestr("xl/sharedStrings.xml", sst)
        z.writestr("xl/worksheets/sheet1.xml", sheet)
    return buf.getvalue()


def test_excel_sheet_that_is_a_table() -> None:
    table = _xlsx([["lot", "density", "supplier"]] + [[i, i * 2, f"s{i}"] for i in range(30)])
    found = TIERS.classify(Source.from_bytes("lots.xlsx", table))
    d = next(t.details for t in found.tags if t.kind == "dataset")
    assert (
        d["format"] == "xlsx" and d["rows"] == 30 and d["columns"] == ["lot", "density", "supplier"]
    )
    assert "document" in [t.kind for t in found.tags]
    memo = _xlsx([["Minutes of the review"], ["Attendees: A, B"], ["Decision", "ship", "now", "x"]])
    assert "dataset" not in kinds("memo.xlsx", memo)


def test_shared_strings_are_linear() -> None:
    import time

    hostile = _xlsx([["a", "b"], [1, 2], [3, 4]]).replace(b"<sst>", b"<sst>" + b"<si>" * 20_000)
    t0 = time.process_time()
    kinds("h.xlsx", hostile)
    from agent.classify.documents import sheet_table

    sheet_table("<row>" + "<c>" * 1_000_000, [])
    sheet_table("<row><c/><c/></row>" * 200_000, [])
    assert time.process_time() - t0 < 3.0


def test_structured_text_with_some_words_is_not_a_document() -> None:
    style = "### LINES\n# See the docs for more information on line properties.\n" + "".join(
        f"lines.prop{i}   : {i}.0     # the width of the line in points\n" for i in range(30)
    )
    assert kinds("classic.mplstyle", style.encode()) == []
    cfg = (
        "[tool:pytest]\nfilterwarnings =\n"
        + "    ignore:Using a non-tuple sequence:FutureWarning\n" * 9
    )
    assert kinds("setup.cfg", cfg.encode()) == []
    xml = (
        '<?xml version="1.0" ?>\n<resource>\n'
        + ('  <object class="wxStaticText"><label>Value of the field</label></object>\n' * 20)
        + "</resource>\n"
    )
    assert kinds("frame.xrc", xml.encode()) == []
    caption = "/*\nWest German data until 1990, all of Germany afterwards and the rest\n*/\n"
    caption += "".join(f"{i}.1 {i}.2 {i}.3 {i}.4\n" for i in range(80))
    assert "document" not in kinds("e6.dat", caption.encode())
    latex_in_setting = "text.latex.preamble : \\documentclass{article}\n" * 3
    assert kinds("rc.mplstyle", latex_in_setting.encode()) == []


def test_notes_without_full_stops_are_documents() -> None:
    log = "2004-05-18 Jane Doe <jane@example.org>\n" + "".join(
        f"\t* Added the {w} characters to every weight of the family\n"
        for w in ("Polish", "German", "Czech", "Greek")
    )
    assert kinds("ChangeLog.txt", log.encode()) == ["document"]
    xml_prose = "<article><para>" + PROSE + "</para></article>"
    assert kinds("doc.xml", xml_prose.encode()) == ["document"]


def test_arff_matrix_market_lowercase_and_json_are_not_prose() -> None:
    arff = "% 1. Title: Iris Plants Database\n%\n@RELATION iris\n\n@ATTRIBUTE sepallength REAL\n"
    arff += "@ATTRIBUTE class {Iris-setosa,Iris-versicolor}\n\n@DATA\n"
    arff += "".join(f"5.{i},Iris-setosa\n" for i in range(9)) + "% end\n"
    d = tag("iris.arff", arff.encode(), "dataset")
    assert d["format"] == "arff" and d["columns"] == ["sepallength", "class"] and d["rows"] == 9
    mm = "%%matrixmarket matrix coordinate real general\n3 5 3\n1 1 1.0\n2 2 1.0\n3 5 2.0\n"
    assert kinds("small.mm", mm.encode()) == ["dataset"]
    api = json.dumps({"data_set_description": {"description": PROSE, "name": "iris"}})
    assert kinds("api.json", api.encode()) == []


def test_a_short_note_is_a_document_a_short_list_is_not() -> None:
    assert kinds("todo.txt", b"call Li about the sintered batch\n") == ["document"]
    assert kinds("稀土-notes.txt", b"nothing here\n") == ["document"]
    assert kinds("vocab.txt", b"[PAD]\n[UNK]\nthe\n") == []
    assert kinds("ids.txt", b"4711 0815\n") == []


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("records.json", b"[" + b'{"a":1},' * 500_000),
        ("deep.json", b"[" + b'{"a":[' * 600_000),
        ("attrs.arff", b"@relation x\n" + b"@attribute a real\n" * 230_000),
        ("certs.pem", b"-----BEGIN CERTIFICATE-----\n" * 150_000),
        ("mm.mm", b"%%MatrixMarket x\n" + b"1 2 3\n" * 700_000),
        ("w2v.txt", b"100 3\n" + b"w 1 2 3\n" * 500_000),
        ("quotes.csv", b'"a,b' * 1_000_000),
        ("kube.yaml", b"kind: Config\ntoken: x\n" * 190_000),
        ("tabs.tsv", b"\t" * 4_000_000),
        ("words.txt", b"word " * 800_000),
    ],
)
def test_new_text_checks_are_bounded_on_4mb(name: str, data: bytes) -> None:
    """Every check this issue added to the text tier, on 4 MB shaped against it."""
    import time

    t0 = time.process_time()
    TIERS.classify(Source.from_bytes(name, data))
    assert time.process_time() - t0 < 3.0


def test_tflite_of_130000_shared_tensors_is_bounded() -> None:
    """One tensor table referenced 130,000 times (flatbuffers allow sharing): every
    reference is counted up to max_tensors, in bounded time."""
    import time

    import flatbuffers

    b = flatbuffers.Builder(1 << 20)
    b.StartVector(1, 4, 16)
    for _ in range(4):
        b.PrependByte(1)
    data = b.EndVector()
    bufs = []
    for payload in (None, data):
        b.StartObject(3)
        if payload is not None:
            b.PrependUOffsetTRelativeSlot(0, payload, 0)
        bufs.append(b.EndObject())
    b.StartVector(4, 2, 4)
    b.PrependInt32(4)
    b.PrependInt32(1)
    shape = b.EndVector()
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, shape, 0)
    b.PrependUint32Slot(2, 1, 0)
    tensor = b.EndObject()
    b.StartVector(4, 130_000, 4)
    for _ in range(130_000):
        b.PrependUOffsetTRelative(tensor)
    tv = b.EndVector()
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tv, 0)
    sub = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(sub)
    subs = b.EndVector()
    b.StartVector(4, 2, 4)
    for o in reversed(bufs):
        b.PrependUOffsetTRelative(o)
    bv = b.EndVector()
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(2, subs, 0)
    b.PrependUOffsetTRelativeSlot(4, bv, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    t0 = time.process_time()
    d = tag("m.tflite", bytes(b.Output()), "model_weights")
    assert d["tensors"] == 130_000 and d["parameters"] == 4 * 130_000
    assert time.process_time() - t0 < 3.0


def test_members_beyond_the_limits_are_named_by_their_extension() -> None:
    from agent.classify.signatures import name_tags

    assert [(t.kind, t.details["format"]) for t in name_tags("m/model.tflite")] == [
        ("model_weights", "tflite")
    ]
    assert name_tags("survey.dta")[0].kind == "dataset"
    assert name_tags("keys/client.p12")[0].details["type"] == "pkcs12"


def test_source_quoting_a_certificate_is_still_source() -> None:
    cert = _key_material()["cert.pem"].decode()
    code = "import ssl\n\n\ndef context():\n    ctx = ssl.create_default_context()\n"
    code += (
        "    ctx.load_verify_locations(cadata=CA)\n    return ctx\n\n\nCA = '''" + cert + "'''\n"
    )
    code += "".join(f"\n\ndef helper_{i}(x):\n    return x * {i} + len(CA)\n" for i in range(12))
    assert kinds("tls.py", code.encode()) == ["source_code"]
    bundle = "# Issuer: CN=Lab Root\n# Label: lab\n" + cert
    assert kinds("ca-bundle.crt", bundle.encode()) == []


def _openvino_xml(consts: list[tuple[str, str]]) -> str:
    """An OpenVINO IR v11 `model.xml` as `ov.save_model` writes it (layers, Const
    weights with element_type and shape, edges)."""
    layers = [
        '<layer id="0" name="x" type="Parameter" version="opset1">'
        '<data shape="1,3,32,32" element_type="f32"/><output><port id="0"/></output></layer>'
    ]
    for i, (shape, et) in enumerate(consts, 1):
        layers.append(
            f'<layer id="{i}" name="w{i}" type="Const" version="opset1">'
            f'<data element_type="{et}" shape="{shape}" offset="0" size="4"/>'
            '<output><port id="0"/></output></layer>'
        )
    layers.append('<layer id="99" name="conv" type="Convolution" version="opset1">'
                  '<data strides="1,1" pads_begin="0,0"/></layer>')  # fmt: skip
    return ('<?xml version="1.0"?>\n<net name="lab-net" version="11">\n<layers>\n'
            + "\n".join(layers) + "\n</layers>\n<edges/>\n</net>\n")  # fmt: skip


def test_openvino_ir_counts_const_layers() -> None:
    xml = _openvino_xml([("16,3,3,3", "f16"), ("16", "f16"), ("10,16", "f32")])
    for name in ("model.xml", "renamed"):
        d = tag(name, xml.encode(), "model_weights")
        assert d["format"] == "openvino_ir" and d["tensors"] == 3
        assert d["parameters"] == 16 * 27 + 16 + 160 and d["dtype"] == "f16"
    assert kinds("page.xml", b'<?xml version="1.0"?><net version="2"><p>no layers</p></net>') == []
    import time

    t0 = time.process_time()
    kinds("h.xml", b'<net version="11"><layers>' + b'<layer type="Const"' * 500_000)
    assert time.process_time() - t0 < 3.0
