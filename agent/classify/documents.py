"""Documents: PDF, Office Open XML (DOCX, XLSX, PPTX), OpenDocument, Markdown and text.

The point is the text, bounded by `classify.max_text_bytes`, for the keyword matcher;
only its length is kept. OOXML and ODF are zips of XML: the parts holding text are read
(bounded) and the tags stripped with a regular expression — no XML parser, so entity
expansion ("billion laughs") and external entities cannot happen. PDF goes through
pypdf when installed, page by page until the text bound.
"""

from __future__ import annotations

import html
import io
import itertools
import re
import zipfile

from agent.classify.base import Finding, Limits, ParseError, Source
from agent.classify.datasets import dataset_tag
from agent.events import Tag

MAX_TAG = 4096  # characters inside one XML tag; a longer "tag" is text
_OOXML_PARTS = {
    "docx": (re.compile(r"^word/(document|header\d*|footer\d*|footnotes|comments)\.xml$"), "docx"),
    "xlsx": (re.compile(r"^xl/(sharedStrings|worksheets/sheet\d+)\.xml$"), "xlsx"),
    "pptx": (re.compile(r"^ppt/(slides/slide\d+|notesSlides/notesSlide\d+)\.xml$"), "pptx"),
    "odf": (re.compile(r"^content\.xml$"), "odf"),
}
_MIME = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odf": "application/vnd.oasis.opendocument",
}


def document_tag(fmt: str, chars: int, extra: str = "") -> Tag:
    evidence = f"{fmt} document, {chars} characters of text"
    if extra:
        evidence += f", {extra}"
    return Tag("document", evidence, {"format": fmt, "chars": chars})


def office_kind(names: list[str]) -> str | None:
    """docx / xlsx / pptx / odf from the member names of a zip, else None."""
    s = set(names)
    if "[Content_Types].xml" in s:
        for kind, prefix in (("docx", "word/"), ("xlsx", "xl/"), ("pptx", "ppt/")):
            if any(n.startswith(prefix) for n in names):
                return kind
    if "mimetype" in s and "content.xml" in s:
        return "odf"
    return None


def parse_office(zf: zipfile.ZipFile, kind: str, limits: Limits) -> Finding:
    pattern, fmt = _OOXML_PARTS[kind]
    budget = limits.max_text_bytes
    chunks: list[str] = []
    partial = False
    sheets: list[str] = []
    shared: list[str] = []
    for info in zf.infolist():
        if not pattern.match(info.filename):
            continue
        if budget <= 0:
            partial = True
            break
        if (
            info.compress_size
            and info.file_size / info.compress_size > limits.max_compression_ratio
        ):
            partial = True
            continue
        with zf.open(info) as fh:
            raw = fh.read(budget)
        budget -= len(raw)
        xml = raw.decode("utf-8", "replace")
        if kind == "xlsx" and "/worksheets/" in info.filename:
            sheets.append(xml)
        elif kind == "xlsx":
            found = itertools.islice(_SI.finditer(xml[: 64 << 10]), 1000)  # header names
            shared = [html.unescape(strip_tags(m.group(1))).strip() for m in found]
        text = html.unescape(strip_tags(xml))
        chunks.append(re.sub(r"\s+", " ", text))
    text = " ".join(chunks).strip()
    tags = [document_tag(fmt, len(text))]
    table = next((t for t in (sheet_table(s, shared) for s in sheets) if t), None)
    if table is not None:
        tags.append(table)
    return Finding(_MIME[kind], tags, text=text, skipped="text_limit" if partial else None)


_SI = re.compile(r"<si>(.{0,1024}?)</si>", re.S)
_CELL = re.compile(r"<c\b[^>]{0,512}?(?:/>|>(.{0,4096}?)</c>)", re.S)
_VALUE = re.compile(r"<v>([^<]{0,256})</v>")
MAX_SHEET_ROWS = 100_000


def sheet_table(xml: str, shared: list[str]) -> Tag | None:
    """A dataset tag when a worksheet is a table: at least three rows, and the cell
    count of the first row (the header) repeated by at least 80 % of the rows. Header
    names come from the shared strings. Linear: one split, bounded matches per row."""
    rows = xml.split("<row")[1 : MAX_SHEET_ROWS + 1]
    if len(rows) < 3:
        return None
    counts = [r.count("<c ") + r.count("<c>") for r in rows]
    width = counts[0]
    if width < 2 or sum(1 for c in counts if c == width) < 0.8 * len(counts):
        return None
    header: list[str] = []
    for m in _CELL.finditer(rows[0]):
        cell = m.group(0)
        v = _VALUE.search(cell)
        value = v.group(1) if v else ""
        if 't="s"' in cell[:512] and value.isdigit() and int(value) < len(shared):
            value = shared[int(value)]
        header.append(value[:128])
    return dataset_tag("xlsx", header[:200], len(rows) - 1, "worksheet table")


def strip_tags(text: str) -> str:
    """`re.sub(r"<[^>]{0,4096}>", " ", text)` in one linear pass.

    The regex retries up to 4,096 characters at every `<` that has no `>` near it, so
    4 MB of `<` took about 20 s; here each position is looked at a bounded number of
    times, and the output is written as it goes (a list of a million pieces is 60 MB).
    """
    out = io.StringIO()
    last = 0  # text before this is copied or replaced
    i = text.find("<")
    gt = text.find(">", i) if i >= 0 else -1
    while i >= 0 and gt >= 0:
        if gt < i:
            gt = text.find(">", i)
            if gt < 0:
                break
        if gt - i - 1 <= MAX_TAG:
            out.write(text[last:i])
            out.write(" ")
            last = gt + 1
            i = text.find("<", last)
        else:  # no `<` before gt - MAX_TAG - 1 can reach gt either
            i = text.find("<", max(i + 1, gt - MAX_TAG - 1))
    out.write(text[last:])
    return out.getvalue()


def parse_pdf(src: Source, limits: Limits) -> Finding:
    try:
        from pypdf import PdfReader
    except ImportError:
        return Finding("application/pdf", [document_tag("pdf", 0, "pypdf not installed")],
                       skipped="missing_library")  # fmt: skip
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    chunks: list[str] = []
    total = 0
    partial = False
    try:
        with src.open() as f:
            reader = PdfReader(f, strict=False)
            pages = len(reader.pages)
            for i, page in enumerate(reader.pages):
                if total >= limits.max_text_bytes or i >= 2000:
                    partial = True
                    break
                src.deadline.check()  # pages decode in memory: no read checks it for us
                text = page.extract_text() or ""
                chunks.append(text)
                total += len(text)
    except ParseError:
        raise
    except Exception as e:  # pypdf raises many types on damaged files
        raise ParseError(f"PDF: {type(e).__name__}: {e}") from None
    text = "\n".join(chunks)[: limits.max_text_bytes]
    tag = document_tag("pdf", len(text), f"{pages} pages")
    tag.details["pages"] = pages
    return Finding("application/pdf", [tag], text=text, skipped="text_limit" if partial else None)


TEXT_DOC_EXT = {"md": "markdown", "markdown": "markdown", "rst": "restructuredtext",
                "txt": "text", "text": "text", "tex": "latex", "org": "org", "adoc": "asciidoc",
                "rtf": "rtf", "html": "html", "htm": "html", "log": "text"}  # fmt: skip


# extensions that name a document format: letters are enough; plain text needs prose
_FORMAT_EXT = {"md", "markdown", "rst", "tex", "org", "adoc", "rtf", "html", "htm"}
PROSE_SAMPLE = 64 * 1024
_WORD = re.compile(r"[^\W\d_]{2,}")
_SENTENCE_END = re.compile(r"[^\W\d_][.!?][\"')\]]?(?:\s|$)")
_LATEX = re.compile(r"^[ \t]*\\(?:documentclass|begin\{document\})", re.M)
_PUNCT = "\"'()[]“‘,.;:!?”’"
_KEY_VALUE = re.compile(r"[\w\-]*[._][\w.\-]*\s*[:=]|[\w.\-]+\s*=")
_CJK = re.compile(r"[\u3400-\u9fff\uac00-\ud7af\u3040-\u30ff]")
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uac00-\ud7af\u3040-\u30ff]{6,}")
_CJK_PUNCT = re.compile(r"[，。；：、！？]")
# structured text that is never prose, whatever its comments say
_NOT_PROSE_STARTS = ("StartFontMetrics", "STARTFONT", "StartCompFontMetrics", "%FS", "G04 ")


def _is_word(token: str) -> bool:
    """A word as prose has it: letters, inner hyphens and apostrophes, surrounding
    quotes and punctuation (str methods: a third of a regex's cost a token)."""
    return token.strip(_PUNCT).replace("-", "").replace("'", "").replace("’", "").isalpha()


def prose_evidence(text: str) -> str | None:
    """Why `text` reads as prose (sentences or paragraphs of words), else None.

    A document is something people wrote to be read: keys, vocabularies, font metrics,
    plots and shaders are text too but not prose. Looked at over a bounded sample:
    lines of five or more words made mostly of letters, and sentence ends; for CJK
    text, runs of characters with CJK punctuation. Linear in the sample.
    """
    sample = text[:PROSE_SAMPLE]
    head = sample.lstrip()
    if head.startswith(_NOT_PROSE_STARTS) or (
        head.startswith(("<svg", "<?xml")) and "<svg" in head[:4096]
    ):
        return None
    if not sample.isascii():
        cjk = len(_CJK_PUNCT.findall(sample))
        runs = len(_CJK_RUN.findall(sample))
        if cjk >= 2 and runs >= 1:
            return "CJK sentences"
        if len(_CJK.findall(sample[:4096])) >= 40 and runs >= 3:
            return "CJK text runs"
    if head.startswith(("{", "[")):
        return None  # JSON: structured data, whatever its strings say
    if head.startswith("<"):  # XML: the prose, if any, is between the tags
        sample = strip_tags(sample)
    lines = nonblank = all_tokens = all_words = widest = 0
    for line in sample.splitlines()[:2000]:
        s = line.strip()
        if not s or s.startswith(("#", "//", ";", "%", "--")) or _KEY_VALUE.match(s):
            continue  # comments and settings of a config or script are not prose
        nonblank += 1
        tokens = s.split()
        words = sum(1 for t in tokens if _is_word(t))
        all_tokens += len(tokens)
        all_words += words
        widest = max(widest, words)
        if words >= 5 and words >= 0.7 * len(tokens):
            lines += 1
            if lines >= 20:
                break  # enough to decide (see below): the rest of the sample is not read
    ends = len(_SENTENCE_END.findall(sample))
    enough = (lines >= 2 and ends >= 1) or (lines >= 1 and ends >= 2) or lines >= 5
    # notes without full stops (a change log, a list of findings): mostly words, in
    # lines of several, a few of them long
    wordy = all_words >= 0.6 * all_tokens and all_tokens >= 3 * nonblank
    enough = enough or (lines >= 3 and wordy)
    # a short note ("call Li about the NdFeB batch"): one to three lines of words
    note = 1 <= nonblank <= 3 and widest >= 2 and all_words >= 0.6 * all_tokens
    if note and not head.startswith("<"):  # markup's few words are labels, not a note
        return f"a short note of {all_words} words"
    # a few lines of words over a table of numbers are its caption, not a document
    if enough and (5 * lines >= nonblank or lines >= 20):
        return f"{lines} of {nonblank} lines are words, {ends} sentence ends"
    return None


def _content_format(text: str) -> str | None:
    """A document format its first characters declare (HTML, RTF, LaTeX), else None."""
    head = text[:512].lstrip().lower()
    if head.startswith(("<!doctype html", "<html")):
        return "html"
    if head.startswith("{\\rtf"):
        return "rtf"
    if _LATEX.search(text[:8192]):  # at a line start: not quoted in a comment or setting
        return "tex"
    return None


def text_document(text: str, ext: str) -> Finding:
    """A document when the text is prose or in a document format; else untagged text."""
    fmt = TEXT_DOC_EXT.get(ext, "text")
    by_content = _content_format(text)
    if by_content is not None and fmt == "text":
        fmt, ext = by_content, by_content
    ctype = f"text/{'markdown' if fmt == 'markdown' else 'plain'}"
    if ext in _FORMAT_EXT and _WORD.search(text[:PROSE_SAMPLE]):
        return Finding(ctype, [document_tag(fmt, len(text))], text=text)
    if prose_evidence(text) is not None:
        return Finding(ctype, [document_tag(fmt, len(text))], text=text)
    return Finding("text/plain", [], text=text)
