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
from agent.classify.engine import Engine
from agent.classify.secrets import credential_file_tags, der_kind, public_material

ENGINE = Engine(Limits(), use_magika=False)


def kinds(name: str, data: bytes) -> list[str]:
    return [t.kind for t in ENGINE.classify(Source.from_bytes(name, data)).tags]


def tag(name: str, data: bytes, kind: str) -> dict[str, object]:
    found = ENGINE.classify(Source.from_bytes(name, data))
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
        ("top.gbr", GERBER),
        ("shade.vert", SHADER),
    ):
        assert "document" not in kinds(name, text.encode()), name
        assert prose_evidence(text) is None, name


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
            found = ENGINE.classify(Source.from_bytes(shown, files[name]))
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
    from agent.classify.datasets import sniff_layout

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
    cut = ENGINE.classify(Source.from_bytes("rows.json", data[:5000], size=len(data)))
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
    found = ENGINE.classify(Source.from_bytes("x.dta", magic.encode() + data))
    assert found is not None
