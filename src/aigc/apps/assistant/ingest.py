"""Reading documents into sections, and sections into overlapping chunks.

Formats: Markdown (``.md``, ``.markdown``), plain text (``.txt``), HTML (``.html``, ``.htm``,
stdlib :mod:`html.parser`), PDF (``.pdf``, :mod:`pypdf`), and any of them gzipped (``.txt.gz``,
``.pdf.gz`` as the Debian FAQ ships them). A file that cannot be read raises
:class:`UnreadableDocument` with the reason; the indexer reports it and goes on.

A *section* is the text under one heading (HTML ``h1``-``h4``, Markdown ``#`` lines, numbered
lines such as ``1.2. What is Debian?`` in plain text, one page of a PDF). Chunks never cross a
section, so each chunk keeps its source and its section heading, which is what citations show.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")

CHUNK_CHARS = 700  # ~130-170 MiniLM tokens of English; MiniLM reads at most 128 (the rest is cut)
OVERLAP_CHARS = 150

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


class UnreadableDocument(Exception):
    """A file the indexer cannot read; ``str(exc)`` is the reason, reported per file."""


@dataclass(frozen=True)
class Section:
    heading: str
    text: str


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # stable: hash of source, section and text
    source: str  # path relative to the indexed folder
    section: str  # heading of the section the chunk comes from ("" when the file has none)
    text: str
    lang: str  # "zh" when at least 20% of its letters are CJK characters, else "en"


def language_of(text: str) -> str:
    """"zh" when CJK characters are at least 20% of the non-space characters, else "en"."""
    letters = [c for c in text if not c.isspace()]
    if not letters:
        return "en"
    cjk = sum(1 for c in letters if _CJK.match(c))
    return "zh" if cjk / len(letters) >= 0.2 else "en"


def is_supported(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(SUPPORTED_SUFFIXES)


def read_sections(path: str | Path) -> list[Section]:
    """Sections of one document. Raises :class:`UnreadableDocument` naming the reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableDocument(f"cannot read: {exc.strerror or exc}") from None
    name = path.name.lower()
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise UnreadableDocument(f"not a valid gzip file: {exc}") from None
        name = name[:-3]
    if name.endswith(".pdf"):
        sections = _pdf_sections(data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnreadableDocument(f"not UTF-8 text (byte {exc.start})") from None
        if name.endswith((".html", ".htm")):
            sections = _html_sections(text)
        elif name.endswith((".md", ".markdown")):
            sections = _heading_sections(text, re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$"))
        elif name.endswith(".txt"):
            sections = _heading_sections(text, re.compile(r"^(\d+(?:\.\d+)*\.\s+\S.{0,150})$"))
        else:
            raise UnreadableDocument(f"unsupported file type (supported: {SUPPORTED_SUFFIXES})")
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise UnreadableDocument("no text found")
    return sections


def _heading_sections(text: str, heading: re.Pattern) -> list[Section]:
    sections, current, lines = [], "", []
    for line in text.splitlines():
        m = heading.match(line.strip())
        if m:
            if lines:
                sections.append(Section(current, _squash("\n".join(lines))))
            current, lines = m.group(1).strip(), []
        else:
            lines.append(line)
    if lines:
        sections.append(Section(current, _squash("\n".join(lines))))
    return sections


def _pdf_sections(data: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnreadableDocument(f"not a readable PDF: {exc}") from None
    if not any(p.strip() for p in pages):
        raise UnreadableDocument(
            f"PDF has no text layer ({len(pages)} page(s), scanned images?); OCR is not done")
    return [Section(f"page {i + 1}", _squash(p)) for i, p in enumerate(pages) if p.strip()]


class _HTMLSections(HTMLParser):
    """Text under each h1-h4 heading; skips script/style and DocBook navigation/TOC blocks."""

    _VOID = {"br", "img", "meta", "link", "hr", "input", "area", "base", "col", "wbr", "source"}
    _SKIP_TAGS = {"script", "style", "head", "nav"}
    _SKIP_CLASSES = {"navheader", "navfooter", "toc"}
    _BLOCK = {"p", "div", "li", "tr", "pre", "dt", "dd", "table", "ul", "ol", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.heading = ""
        self.buf: list[str] = []
        self.in_heading: list[str] | None = None
        self.stack: list[bool] = []  # per open tag: does it start a skipped block?
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._VOID:
            if tag == "br":
                self.buf.append("\n")
            return
        classes = set((dict(attrs).get("class") or "").split())
        skipped = tag in self._SKIP_TAGS or bool(classes & self._SKIP_CLASSES)
        self.stack.append(skipped)
        self.skip += skipped
        if tag in ("h1", "h2", "h3", "h4") and not self.skip:
            self._flush()
            self.in_heading = []
        elif tag in self._BLOCK:
            self.buf.append("\n")

    def handle_endtag(self, tag):
        if tag in self._VOID or not self.stack:
            return
        if tag in ("h1", "h2", "h3", "h4") and self.in_heading is not None:
            self.heading = _squash("".join(self.in_heading)).replace("\n", " ")
            self.in_heading = None
        elif tag in self._BLOCK:
            self.buf.append("\n")
        self.skip -= self.stack.pop()

    def handle_data(self, data):
        if self.skip:
            return
        (self.in_heading if self.in_heading is not None else self.buf).append(data)

    def _flush(self):
        text = _squash("".join(self.buf))
        if text:
            self.sections.append(Section(self.heading, text))
        self.buf = []

    def close(self):
        super().close()
        self._flush()


def _html_sections(text: str) -> list[Section]:
    parser = _HTMLSections()
    parser.feed(text)
    parser.close()
    return parser.sections


def _squash(text: str) -> str:
    """Collapse runs of spaces inside lines and of blank lines, keep paragraph breaks."""
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _split_points(text: str) -> list[int]:
    """Offsets where a chunk may end: after paragraph breaks, sentence ends (. ! ? 。！？；) and
    spaces, preferred in that order by :func:`chunk_section`."""
    return [m.end() for m in re.finditer(r"\n+|[.!?]\s+|[。！？；]|\s+", text)]


def chunk_section(text: str, *, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``size`` characters that overlap by about ``overlap``
    characters, ending at a paragraph, a sentence or a word boundary when one lies in the last
    third of the window (hard cut otherwise, e.g. a long run of Chinese without punctuation)."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"chunk size must be > 0 and 0 <= overlap < size, got size={size}, "
                         f"overlap={overlap}")
    text = text.strip()
    if len(text) <= size:
        return [text] if text else []
    points = _split_points(text)
    pieces, start = [], 0
    while start < len(text):
        end = start + size
        if end >= len(text):
            pieces.append(text[start:].strip())
            break
        good = [p for p in points if start + size * 2 // 3 <= p <= end]
        end = max(good) if good else end
        pieces.append(text[start:end].strip())
        # the next piece starts at a boundary about `overlap` characters before this end
        back = [p for p in points if end - overlap <= p < end and p > start]
        start = min(back) if back else max(end - overlap, start + 1)
    return [p for p in pieces if p]


def chunks_of(source: str, sections: list[Section], **chunk_args) -> list[Chunk]:
    out = []
    for section in sections:
        for piece in chunk_section(section.text, **chunk_args):
            digest = hashlib.sha1(f"{source}\0{section.heading}\0{piece}".encode()).hexdigest()
            out.append(Chunk(digest[:16], source, section.heading, piece,
                             language_of(section.heading + piece)))
    return out
