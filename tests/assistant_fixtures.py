"""A small knowledge-base folder for the assistant tests: Markdown, text, HTML, a PDF with a
text layer (written by hand below), a PDF without one, a gzipped text, a duplicate, a file that
is not UTF-8, and a Chinese page."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

GUIDE_MD = """# Returns

You can return any item within 30 days of delivery for a full refund. Pack the item in its
original box and print the prepaid label from your account page.

# Shipping

We ship to twelve countries in Europe. Standard delivery takes three to five working days;
express delivery arrives the next working day when ordered before noon.
"""

NOTES_TXT = """1. Opening hours
The support desk is open Monday to Friday from nine in the morning to six in the evening.

2. Gift cards
Gift cards never expire and can be used for any product in the shop.
"""

FAQ_HTML = """<html><head><title>FAQ</title><style>h2 {color: red}</style></head><body>
<div class="navheader">Prev Next Home</div>
<h2>Warranty</h2><p>Every kettle has a <b>two year</b> warranty covering the heating element.</p>
<h2>Payment</h2><p>We accept credit cards, bank transfer and invoices for companies.</p>
<script>var tracking = 1;</script>
</body></html>
"""

ZH_MD = """# 退货政策

商品在签收后三十天内可以无理由退货，退款会在五个工作日内退回原支付账户。

# 配送范围

我们目前只向中国大陆地区配送，港澳台地区暂不支持。
"""

PDF_TEXT = "The blender motor is guaranteed for five years against burning out."


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF 1.4 whose page shows ``text`` in Helvetica (a real text layer)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def blank_pdf() -> bytes:
    """A one-page PDF with no text layer (what a scanner without OCR makes, minus the image)."""
    import io

    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_kb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "guide.md").write_text(GUIDE_MD, encoding="utf-8")
    (folder / "notes.txt").write_text(NOTES_TXT, encoding="utf-8")
    (folder / "faq.html").write_text(FAQ_HTML, encoding="utf-8")
    (folder / "zh.md").write_text(ZH_MD, encoding="utf-8")
    (folder / "manual.pdf").write_bytes(minimal_pdf(PDF_TEXT))
    (folder / "scan.pdf").write_bytes(blank_pdf())
    (folder / "archive").mkdir(exist_ok=True)
    (folder / "archive" / "old.txt.gz").write_bytes(gzip.compress(
        b"Discontinued products keep their spare parts available for seven years.\n"))
    shutil.copy(folder / "guide.md", folder / "archive" / "guide-copy.md")  # duplicate chunks
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "image.png").write_bytes(b"\x89PNG not indexed")  # unsupported: ignored
    return folder
