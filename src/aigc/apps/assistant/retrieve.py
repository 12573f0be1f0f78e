"""Search the knowledge base: BM25, dense MiniLM (faiss), or both fused by reciprocal rank.

``Retriever(index_dir).search(query, k=5, mode="hybrid")`` returns :class:`Hit` objects, best
first. By default a query only searches chunks in its own language (``lang="auto"``: Chinese
when at least 20% of its characters are CJK), so an English question is answered from the
English FAQ and a Chinese one from the Chinese FAQ; ``lang=None`` searches everything.

Hybrid fusion is reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009):
``rrf(d) = sum_r w_r / (RRF_K + rank_r(d))`` over the BM25 and dense rankings, ranks from 1.
MiniLM is an English model that reads most Chinese characters as ``[UNK]``, so for Chinese
queries the dense ranking gets weight ``DENSE_WEIGHT["zh"]`` (see docs/assistant.md for the
numbers behind it). No reranker is used.

Each hit carries a ``confidence`` in [0, 1] used to decide a handoff (see
:func:`confidence_of`): how much of the query's IDF mass the chunk contains, blended with the
dense cosine for English.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from aigc.apps.assistant.index import (
    _build_lock,
    bm25_idf,
    bm25_tokens,
    load_chunks,
    read_manifest,
)
from aigc.apps.assistant.ingest import language_of
from aigc.errors import AigcError

MAX_QUERY_CHARS = 2000  # a question longer than this is refused, not cut
RRF_K = 60  # the constant of Cormack et al.
# Weight of the dense ranking in the fusion, per query language (BM25 has weight 1).
DENSE_WEIGHT = {"en": 2.0, "zh": 0.0}  # chosen on the eval set; zh 0: MiniLM cannot read Chinese
EN_DENSE_SHARE = 0.5  # confidence = share * cosine + (1 - share) * idf coverage, English
Mode = Literal["hybrid", "bm25", "dense"]
MODES = ("hybrid", "bm25", "dense")


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    text: str
    source: str
    section: str
    score: float  # the ranking score of the mode searched (BM25, cosine, or RRF)
    confidence: float  # in [0, 1]; see confidence_of
    rank: int  # 1-based
    lang: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_query(query: str) -> str:
    """The query stripped; AigcError when it is not a string, empty, or too long."""
    if not isinstance(query, str):
        raise AigcError(f"the question must be a string, got {type(query).__name__}")
    query = query.strip()
    if not query:
        raise AigcError("the question is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise AigcError(f"the question is {len(query)} characters long; at most "
                        f"{MAX_QUERY_CHARS} are accepted (nothing was cut or stored)")
    return query


def confidence_of(coverage: float, cosine: float, lang: str) -> float:
    """Retrieval confidence of one hit: the IDF-weighted share of the query's distinct terms
    found in the chunk (``coverage``), blended for English with the MiniLM cosine (clipped to
    [0, 1]). Chinese uses coverage alone (MiniLM cannot read it)."""
    if lang == "zh":
        return coverage
    return EN_DENSE_SHARE * max(0.0, min(1.0, cosine)) + (1 - EN_DENSE_SHARE) * coverage


class Retriever:
    """Loads an index written by :func:`aigc.apps.assistant.index.build_index`."""

    def __init__(self, index_dir: str | Path):
        import faiss

        self.index_dir = Path(index_dir)
        with _build_lock(self.index_dir, shared=True):  # not half-way through a build
            self.manifest = read_manifest(self.index_dir)
            self.chunks = load_chunks(self.index_dir)
            self.faiss = faiss.read_index(str(self.index_dir / "dense.faiss"))
            stats = json.loads((self.index_dir / "bm25.json").read_text(encoding="utf-8"))
        if self.faiss.ntotal != len(self.chunks):
            raise AigcError(f"{self.index_dir}: dense.faiss has {self.faiss.ntotal} rows but "
                            f"chunks.jsonl {len(self.chunks)}; rebuild the index")
        self.k1, self.b, self.avgdl = stats["k1"], stats["b"], stats["avgdl"]
        self.n = stats["n"]
        self.idf = {t: bm25_idf(self.n, d) for t, d in stats["df"].items()}
        self.unseen_idf = bm25_idf(self.n, 0)
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)  # term -> (row, tf)
        self.lengths = []
        for row, c in enumerate(self.chunks):
            self.lengths.append(len(c["tokens"]))
            if c.get("duplicate_of"):
                continue
            counts: dict[str, int] = defaultdict(int)
            for t in c["tokens"]:
                counts[t] += 1
            for t, tf in counts.items():
                self.postings[t].append((row, tf))
        self.langs = np.array([c["lang"] for c in self.chunks])
        self.searchable = np.array([not c.get("duplicate_of") for c in self.chunks])

    def __len__(self) -> int:
        """Searchable chunks (duplicates excluded)."""
        return int(self.searchable.sum())

    # -- the two rankings -------------------------------------------------------------------
    def _bm25(self, terms: list[str], allowed: np.ndarray) -> dict[int, float]:
        scores: dict[int, float] = defaultdict(float)
        for t in set(terms):
            idf = self.idf.get(t)
            if idf is None:
                continue
            qtf = terms.count(t)  # repeated query terms count again, as in Lucene
            for row, tf in self.postings[t]:
                if not allowed[row]:
                    continue
                norm = tf + self.k1 * (1 - self.b + self.b * self.lengths[row] / self.avgdl)
                scores[row] += qtf * idf * tf * (self.k1 + 1) / norm
        return scores

    def _dense(self, query: str, allowed: np.ndarray) -> dict[int, float]:
        from aigc.models.pretrained import embed_sentences

        q = embed_sentences([query]).numpy().astype(np.float32)  # (1, 384)
        sims, rows = self.faiss.search(q, len(self.chunks))
        return {int(r): float(s) for r, s in zip(rows[0], sims[0])
                if r >= 0 and allowed[r]}

    def _coverage(self, terms: list[str], row: int) -> float:
        distinct = set(terms)
        if not distinct:
            return 0.0
        have = set(self.chunks[row]["tokens"])
        total = sum(self.idf.get(t, self.unseen_idf) for t in distinct)
        return sum(self.idf[t] for t in distinct if t in have) / total

    # -- the public search --------------------------------------------------------------------
    def search(self, query: str, k: int = 5, mode: Mode = "hybrid",
               lang: str | None = "auto") -> list[Hit]:
        """The ``k`` best chunks for ``query``.

        Args:
            query: the question (at most :data:`MAX_QUERY_CHARS` characters).
            k: how many hits (>= 1).
            mode: ``"hybrid"`` (RRF of BM25 and dense), ``"bm25"`` or ``"dense"``.
            lang: ``"auto"`` (the query's language), ``"en"``, ``"zh"``, or ``None`` (all).
        """
        query = check_query(query)
        if mode not in MODES:
            raise AigcError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(k, int) or k < 1:
            raise AigcError(f"k must be an integer >= 1, got {k!r}")
        if lang not in ("auto", "en", "zh", None):
            raise AigcError(f"lang must be 'auto', 'en', 'zh' or None, got {lang!r}")
        qlang = language_of(query)
        want = qlang if lang == "auto" else lang
        allowed = self.searchable if want is None else self.searchable & (self.langs == want)
        if not allowed.any():  # e.g. an English-only base asked in Chinese: search everything
            allowed = self.searchable
        terms = bm25_tokens(query)
        bm25 = self._bm25(terms, allowed) if mode != "dense" else {}
        dense = self._dense(query, allowed)  # also feeds the confidence
        if mode == "bm25":
            ranked = sorted(bm25.items(), key=lambda kv: -kv[1])
        elif mode == "dense":
            ranked = sorted(dense.items(), key=lambda kv: -kv[1])
        else:
            w_dense = DENSE_WEIGHT[qlang]
            fused: dict[int, float] = defaultdict(float)
            for r, (row, _) in enumerate(sorted(bm25.items(), key=lambda kv: -kv[1]), 1):
                fused[row] += 1.0 / (RRF_K + r)
            if w_dense > 0:
                for r, (row, _) in enumerate(sorted(dense.items(), key=lambda kv: -kv[1]), 1):
                    fused[row] += w_dense / (RRF_K + r)
            ranked = sorted(fused.items(), key=lambda kv: -kv[1])
        hits = []
        for rank, (row, score) in enumerate(ranked[:k], 1):
            c = self.chunks[row]
            conf = confidence_of(self._coverage(terms, row), dense.get(row, 0.0), qlang)
            hits.append(Hit(c["chunk_id"], c["text"], c["source"], c["section"],
                            float(score), float(conf), rank, c["lang"]))
        return hits

    def top_confidence(self, hits: list[Hit]) -> float:
        """The confidence a handoff decision uses: the best among the hits (0 with none)."""
        return max((h.confidence for h in hits), default=0.0)

