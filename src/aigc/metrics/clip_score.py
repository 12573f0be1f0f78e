"""CLIPScore-like agreement and caption retrieval R@k from an image-text scorer.

* :class:`ClipScore`: the mean over image-caption pairs of ``100 * max(cos(image, caption), 0)``
  (Hessel et al. 2021, "CLIPScore", with torchmetrics' factor 100 in place of their w = 2.5),
  kept as a float64 running sum, so the value does not depend on how pairs were batched.
* :class:`CaptionRetrieval`: recall@k of the prompt among ``group`` captions. Pairs are taken in
  the order given, in consecutive groups of ``group`` (default 100); inside a group each image's
  own caption competes with the other ``group - 1`` captions (a caption that ties counts
  against it). The caller makes each group hold distinct concepts, else another image's caption
  may be just as right. A last group smaller than ``group`` is left out and counted in
  ``left_out``.

Both take an ``encoder`` with ``encode_images(images) -> (N, D)`` and ``encode_texts(texts) ->
(N, D)`` unit vectors (:class:`aigc.models.clip_scorer.ClipScorer` or ``LocalClip``), or
embeddings directly with ``update_embeddings``. The scorer, its hash and the data go in the metric
card; these numbers come from the scorer used and are not comparable with OpenAI CLIP's.
"""

from __future__ import annotations

import torch

from aigc.errors import AigcError
from aigc.models.clip_scorer import clip_score_from_cosine, recall_at_k


def _pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise AigcError(f"image and text embeddings must both be (N, D) of the same shape, got "
                        f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")


def _encode_pairs(metric, images: torch.Tensor, texts: list[str]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The image and text embeddings of ``metric``'s encoder for ``update(images, texts)``."""
    name = type(metric).__name__
    if metric.encoder is None:
        raise AigcError(f"{name} was built without an encoder: use update_embeddings")
    if len(images) != len(texts):
        raise AigcError(f"images ({len(images)}) and texts ({len(texts)}) must pair up")
    with torch.no_grad():
        return metric.encoder.encode_images(images), metric.encoder.encode_texts(texts)


class ClipScore:
    """``update(images, texts)`` (or ``update_embeddings``), ``compute() -> float``, ``reset()``."""

    def __init__(self, encoder=None) -> None:
        self.encoder = encoder
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = 0

    def update(self, images: torch.Tensor, texts: list[str]) -> None:
        self.update_embeddings(*_encode_pairs(self, images, texts))

    def update_embeddings(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        _pairs(image_emb, text_emb)
        cos = (image_emb.detach().double().cpu() * text_emb.detach().double().cpu()).sum(-1)
        self.total += clip_score_from_cosine(cos).sum()
        self.count += len(cos)

    def compute(self) -> float:
        if self.count == 0:
            raise AigcError("ClipScore.compute: no pairs were given (call update first)")
        return float(self.total / self.count)


class CaptionRetrieval:
    """Recall@k of each image's own caption among ``group`` captions; ``compute()`` gives
    ``{"top1": ..., "top5": ..., "groups": G, "queries": N, "left_out": L}`` for ``ks=(1, 5)``."""

    def __init__(self, encoder=None, *, group: int = 100, ks: tuple[int, ...] = (1, 5)) -> None:
        if group < 2:
            raise AigcError(f"group must be >= 2 (a caption needs rivals), got {group}")
        if not ks or min(ks) < 1 or max(ks) > group:
            raise AigcError(f"ks must lie in [1, group={group}], got {ks}")
        self.encoder, self.group, self.ks = encoder, group, tuple(ks)
        self.reset()

    def reset(self) -> None:
        self.images: list[torch.Tensor] = []
        self.texts: list[torch.Tensor] = []

    def update(self, images: torch.Tensor, texts: list[str]) -> None:
        self.update_embeddings(*_encode_pairs(self, images, texts))

    def update_embeddings(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        _pairs(image_emb, text_emb)
        self.images.append(image_emb.detach().double().cpu())
        self.texts.append(text_emb.detach().double().cpu())

    def compute(self) -> dict[str, float | int]:
        images = torch.cat(self.images) if self.images else torch.empty(0, 0)
        texts = torch.cat(self.texts) if self.texts else torch.empty(0, 0)
        groups = len(images) // self.group
        if groups == 0:
            raise AigcError(f"CaptionRetrieval needs at least group={self.group} pairs, got "
                            f"{len(images)}")
        hits = {k: 0 for k in self.ks}
        for g in range(groups):
            sl = slice(g * self.group, (g + 1) * self.group)
            sim = images[sl] @ texts[sl].T  # (group, group): image i against every caption
            for k in self.ks:
                hits[k] += int(recall_at_k(sim, k).sum())
        n = groups * self.group
        out: dict[str, float | int] = {f"top{k}": hits[k] / n for k in self.ks}
        out.update(groups=groups, queries=n, left_out=len(images) - n)
        return out
