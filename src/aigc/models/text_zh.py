"""A small Chinese text encoder distilled into MiniLM's English sentence space.

Multilingual knowledge distillation (Reimers & Gurevych 2020, "Making Monolingual Sentence
Embeddings Multilingual using Knowledge Distillation"): a student reads a Chinese sentence and is
trained so that its vector lands on the frozen teacher's (all-MiniLM-L6-v2) embedding of the
English translation, loss ``MSE(student(zh), teacher(en))``. Here the translation pairs come from
Unicode CLDR: the Chinese and English name/keyword captions of the same emoji (see
:func:`caption_pairs`).

MiniLM's WordPiece vocabulary lacks most Chinese characters (they read as ``[UNK]``), so the
student has its own input side: a bag of hashed character unigrams and bigrams (no vocabulary to
ship: ``crc32(n-gram) mod buckets``), mean-pooled by an ``EmbeddingBag``, then a two-layer MLP onto
the 384 dimensions of MiniLM and unit length. Everything it knows comes from the CLDR pairs of the
training concepts; no CC-CEDICT (CC-BY-SA) text is baked into its weights.

    encoder = ZhTextEncoder(buckets=8192, dim=64, hidden=256)
    distill(encoder, ["狗", "猫"], embed_sentences(["dog", "cat"]), steps=200)
    encoder.encode(["小狗"])  # (1, 384), unit length, comparable with MiniLM's English vectors
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from aigc.errors import AigcError

TEACHER_DIM = 384  # all-MiniLM-L6-v2, aigc.models.pretrained.MINILM_DIM
_PUNCT = set(" \t\n，,。.:：;；!！?？、()（）\"'“”")


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK unified ideograph (U+3400-U+9FFF, U+F900-U+FAFF)."""
    return any("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in text)


def ngram_ids(text: str, buckets: int) -> list[int]:
    """Hashed character unigrams and bigrams of ``text`` (punctuation and spaces split, and are
    not features). ``crc32`` is fixed across runs and platforms, unlike Python's ``hash``.

    >>> ngram_ids("小狗", 8192) == ngram_ids("小狗", 8192)
    True
    """
    ids: list[int] = []
    for piece in "".join(" " if c in _PUNCT else c for c in text.lower()).split():
        grams = list(piece) + [piece[i : i + 2] for i in range(len(piece) - 1)]
        ids += [zlib.crc32(f"{len(g)}:{g}".encode()) % buckets for g in grams]
    return ids


class ZhTextEncoder(nn.Module):
    """Chinese text -> a unit vector in MiniLM's sentence space (384-d)."""

    def __init__(self, *, buckets: int = 8192, dim: int = 64, hidden: int = 256):
        super().__init__()
        for name, value in (("buckets", buckets), ("dim", dim), ("hidden", hidden)):
            if value < 1:
                raise AigcError(f"ZhTextEncoder: {name} must be >= 1, got {value}")
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, TEACHER_DIM))

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``(N, 384)`` unit vectors. A text with no character feature is refused."""
        if isinstance(texts, str):
            raise AigcError("ZhTextEncoder.encode takes a list of strings, not one string")
        if not texts:
            raise AigcError("ZhTextEncoder.encode: texts is an empty list; give at least one")
        ids, offsets = [], []
        for t in texts:
            grams = ngram_ids(t, self.buckets)
            if not grams:
                raise AigcError(f"ZhTextEncoder.encode: text {t!r} has no characters to read")
            offsets.append(len(ids))
            ids += grams
        device = self.bag.weight.device
        bag = self.bag(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))
        return F.normalize(self.mlp(bag), dim=-1)  # (N, 384)


def distill(encoder: ZhTextEncoder, zh_texts: list[str], targets: torch.Tensor, *,
            steps: int = 2000, batch_size: int = 256, lr: float = 3e-3, seed: int = 0,
            weight_decay: float = 1e-4) -> list[float]:
    """Train ``encoder`` so that ``encoder.encode(zh_texts[i]) ≈ targets[i]`` (unit vectors of the
    teacher). Loss: mean squared error between unit vectors, ``||s - t||² = 2 - 2 cos(s, t)``
    (Reimers & Gurevych 2020, eq. 1). Returns the loss of every step."""
    if len(zh_texts) != len(targets) or not zh_texts:
        raise AigcError(f"distill: zh_texts ({len(zh_texts)}) and targets ({len(targets)}) must be "
                        "non-empty and of the same length")
    if targets.ndim != 2 or targets.shape[1] != TEACHER_DIM:
        raise AigcError(f"distill: targets must be (N, {TEACHER_DIM}), got {tuple(targets.shape)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    encoder.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(zh_texts), (min(batch_size, len(zh_texts)),), generator=gen)
        student = encoder.encode([zh_texts[i] for i in idx.tolist()])
        loss = (student - targets[idx]).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    encoder.eval()
    return losses


def caption_pairs(records: list[dict]) -> list[tuple[str, str]]:
    """(Chinese, English) translation pairs from emoji records: the name, name + keywords, and the
    keywords of each image in both languages, built the same way on both sides. Only Chinese
    strings that are *training* captions of their image are kept (``captions_zh``), so held-out
    Chinese captions never reach the student. Duplicates are dropped, order kept."""
    out: dict[tuple[str, str], None] = {}
    for r in records:
        name_zh, name_en = r.get("name_zh"), r.get("name_en")
        if not name_zh or not name_en:
            continue
        kw_zh = [k for k in r.get("keywords_zh", []) if k != name_zh]
        kw_en = [k for k in r.get("keywords_en", []) if k != name_en]
        pairs = [(name_zh, name_en)]
        if kw_zh and kw_en:
            pairs.append((name_zh + "，" + "，".join(kw_zh), name_en + ", " + ", ".join(kw_en)))
        if r.get("keywords_zh") and r.get("keywords_en"):
            pairs.append(("，".join(r["keywords_zh"]), ", ".join(r["keywords_en"])))
        allowed = set(r.get("captions_zh", []))
        for zh, en in pairs:
            if zh in allowed:
                out[(zh, en)] = None
    return list(out)
