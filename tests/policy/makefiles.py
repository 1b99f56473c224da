"""Test files the policy tests generate: Chinese DOCX and PDF, resident-ID CSVs, safetensors.

The PDF is written by hand: a Type0 font (STSong-Light, UniGB-UCS2-H, so code = UCS-2)
with a ToUnicode CMap, which is what lets pypdf extract CJK text without embedding a
font file.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from agent.validators import prc_resident_id_check
from tests.classify.corpus import write_pdf

RARE_EARTH_ZH = [
    "稀土萃取分离工艺说明(内部资料)",
    "本文件描述稀土萃取分离生产线的溶剂萃取工艺：采用P507-煤油体系进行串级萃取，",
    "皂化萃取段控制皂化度为36%，分离镨钕与镧铈。",
    "萃取分离后的氧化镨钕经熔盐电解制得金属，用于钕铁硼永磁体的制备，",
    "并采用晶界扩散工艺提高矫顽力。",
]


def make_docx(path: Path, paragraphs: list[str]) -> Path:
    import docx

    doc = docx.Document()
    for p in paragraphs:
        doc.add_paragraph(p)
    doc.save(str(path))
    return path


def _pdf_text_ops(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 12 Tf", "14 TL", "50 800 Td"]
    for line in lines:
        hexcodes = "".join(f"{ord(c):04X}" for c in line if ord(c) <= 0xFFFF)
        ops.append(f"<{hexcodes}> Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("ascii")


def _to_unicode(chars: set[str]) -> bytes:
    codes = sorted(ord(c) for c in chars if ord(c) <= 0xFFFF)
    out = [
        "/CIDInit /ProcSet findresource begin",
        "12 dict begin",
        "begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def",
        "/CMapType 2 def",
        "1 begincodespacerange",
        "<0000> <FFFF>",
        "endcodespacerange",
    ]
    for i in range(0, len(codes), 100):
        block = codes[i : i + 100]
        out.append(f"{len(block)} beginbfchar")
        out.extend(f"<{c:04X}> <{c:04X}>" for c in block)
        out.append("endbfchar")
    out += ["endcmap", "CMapName currentdict /CMap defineresource pop", "end", "end"]
    return "\n".join(out).encode("ascii")


def make_pdf(path: Path, lines: list[str]) -> Path:
    """A one-page PDF whose CJK text pypdf can extract."""
    content = _pdf_text_ops(lines)
    cmap = _to_unicode(set("".join(lines)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /UniGB-UCS2-H "
        b"/DescendantFonts [6 0 R] /ToUnicode 7 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /STSong-Light "
        b"/CIDSystemInfo << /Registry (Adobe) /Ordering (GB1) /Supplement 2 >> "
        b"/FontDescriptor 8 0 R /DW 1000 >>",
        b"<< /Length %d >>\nstream\n" % len(cmap) + cmap + b"\nendstream",
        b"<< /Type /FontDescriptor /FontName /STSong-Light /Flags 6 "
        b"/FontBBox [-25 -254 1000 880] /ItalicAngle 0 /Ascent 880 /Descent -120 "
        b"/CapHeight 880 /StemV 93 >>",
    ]
    # a binary comment after the version line: readers then treat the file as binary
    return write_pdf(path, objects, header=b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")


def resident_id(rng: random.Random) -> str:
    """A synthetic PRC resident ID with a valid GB 11643 check character."""
    region = rng.choice(["110101", "310104", "440305", "510107", "330106"])
    birth = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    first17 = region + birth + f"{rng.randint(0, 999):03d}"
    return first17 + prc_resident_id_check(first17)


def make_resident_csv(path: Path, rows: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    lines = ["name,resident_id,city"]
    for i in range(rows):
        lines.append(f"person{i},{resident_id(rng)},city{i % 17}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_safetensors(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A real safetensors file (F32 zeros) with these tensor shapes."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path
