"""Content features of studio items, so that "more like what you liked" works for an item no one
has rated yet.

One feature space per kind of content (similarities are only taken inside one space):

* images of a dataset with a shipped feature classifier (MNIST, Fashion-MNIST; the record's
  ``data``): the classifier's penultimate features (``aigc.metrics.features``, the same network
  the FID of those datasets uses), space ``image:<data>``; any other image: its grey levels on
  an 8x8 grid plus the mean of each colour channel, space ``image:pixels``.
* texts: MiniLM sentence embeddings (``aigc.models.pretrained.embed_sentences``), space
  ``text:minilm``.
* music: key-relative pitch-class distribution, share of notes in the key, onsets per bar,
  mean note length and number of voices (``aigc.metrics.music``, from the item's MIDI file),
  space ``music:stats``.

Features are computed once per item and kept in :class:`ContentIndex` (items never change: a
studio file is content addressed).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("aigc.recommend")
PIXEL_GRID = 8
NEAR_NEIGHBOURS = 1
# Spaces whose dimensions are divided by their standard deviation before the cosine: hand-made
# statistics in mixed units. Learned features (classifier, MiniLM) are only centred: scaling
# each of MiniLM's 384 dimensions to unit variance over a few texts drowns the topic in noise.
STANDARDISED = ("image:pixels", "music:stats")


def _image_array(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img).copy()


def _pixel_features(arr: np.ndarray) -> np.ndarray:
    """Grey levels on a PIXEL_GRID x PIXEL_GRID grid (area means) and the channel means."""
    x = arr.astype(np.float64) / 255.0
    rgb = x if x.ndim == 3 else np.repeat(x[..., None], 3, axis=2)
    grey = rgb.mean(axis=2)
    h, w = grey.shape
    rows = np.array_split(np.arange(h), PIXEL_GRID)
    cols = np.array_split(np.arange(w), PIXEL_GRID)
    grid = np.array([[grey[np.ix_(r, c)].mean() for c in cols] for r in rows])
    return np.concatenate([grid.ravel(), rgb.reshape(-1, 3).mean(axis=0)])


def music_features(piece) -> np.ndarray:
    """``(16,)`` statistics of a :class:`aigc.data.music.pieces.Piece`."""
    from aigc.metrics.music import in_key_counts, pitch_class_counts

    pcs = pitch_class_counts(piece)
    pcs = pcs / max(pcs.sum(), 1.0)
    inside, total = in_key_counts(piece)
    bars = max(piece.bars, 1)
    durations = [n.duration for n in piece.notes] or [0]
    voices = len({n.voice for n in piece.notes})
    return np.concatenate([pcs, [inside / max(total, 1), len(piece.notes) / bars,
                                 float(np.mean(durations)) / piece.bar_ticks, voices]])


class ContentIndex:
    """Feature vectors of items by id, computed on first use and kept.

    ``files_dir`` is the studio's files folder (``Store.files_dir``).
    """

    def __init__(self, files_dir: str | Path):
        self.files_dir = Path(files_dir)
        self.vectors: dict[str, tuple[str, np.ndarray]] = {}  # id -> (space, raw features)
        self._extractors: dict[str, Any] = {}

    def _extractor(self, data: str | None):
        from aigc.metrics.features import load_extractor, shipped_records

        if data is None or data not in shipped_records():
            return None
        if data not in self._extractors:
            self._extractors[data] = load_extractor(data)
        return self._extractors[data]

    def update(self, rows: list[dict[str, Any]]) -> None:
        """Compute the features of the items of ``rows`` (store item rows) not seen yet. An item
        whose file cannot be read gets no features (logged), and so no content score."""
        new = [r for r in rows if r["id"] not in self.vectors]
        if not new:
            return
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for r in new:
            by_kind.setdefault(r["kind"], []).append(r)
        self._images(by_kind.get("image", []))
        self._texts(by_kind.get("text", []))
        self._music(by_kind.get("music", []))

    def _images(self, rows: list[dict[str, Any]]) -> None:
        import torch

        batches: dict[str, list[tuple[str, np.ndarray]]] = {}
        for r in rows:
            try:
                arr = _image_array(self.files_dir / r["file"])
            except OSError as exc:
                log.warning("recommend: image %s unreadable: %s", r["id"], exc)
                continue
            data = (r.get("record") or {}).get("data")
            ext = self._extractor(data)
            if ext is not None and arr.ndim == 2 and arr.shape[0] == arr.shape[1] \
                    and arr.shape[0] % ext.image_size == 0:
                step = arr.shape[0] // ext.image_size  # a nearest upscale, undone exactly
                batches.setdefault(data, []).append((r["id"], arr[::step, ::step]))
            else:
                self.vectors[r["id"]] = ("image:pixels", _pixel_features(arr))
        for data, pairs in batches.items():
            x = torch.from_numpy(np.stack([a for _, a in pairs])).float().div(255)[:, None]
            feats = self._extractors[data].extract(x)["features"].numpy()
            for (item_id, _), f in zip(pairs, feats, strict=True):
                self.vectors[item_id] = (f"image:{data}", f)

    def _texts(self, rows: list[dict[str, Any]]) -> None:
        from aigc.models.pretrained import embed_sentences

        rows = [r for r in rows if (r.get("text") or r.get("prompt"))]
        if not rows:
            return
        emb = embed_sentences([(r.get("text") or r.get("prompt") or "")[:2000] for r in rows])
        for r, e in zip(rows, emb.double().numpy(), strict=True):
            self.vectors[r["id"]] = ("text:minilm", e)

    def _music(self, rows: list[dict[str, Any]]) -> None:
        from aigc.data.music.midi import piece_from_midi

        for r in rows:
            mid = ((r.get("record") or {}).get("files") or {}).get("mid")
            if not mid:
                continue
            try:
                piece = piece_from_midi(self.files_dir / mid)
            except Exception as exc:  # a file we cannot parse: no content score, keep going
                log.warning("recommend: music %s unreadable: %s", r["id"], exc)
                continue
            self.vectors[r["id"]] = ("music:stats", music_features(piece))

    def similarity(self, ids: list[str]) -> np.ndarray:
        """Similarities ``(N, N)`` of the items ``ids``: cosines after centring each feature space
        over the items given (and scaling each dimension to unit variance in the
        :data:`STANDARDISED` spaces), divided by the
        space's mean cosine of an item to its nearest other item and clipped
        to [-1, 1]; 0 between items of different spaces or without features."""
        n = len(ids)
        sim = np.zeros((n, n))
        spaces: dict[str, list[int]] = {}
        for j, item_id in enumerate(ids):
            if item_id in self.vectors:
                spaces.setdefault(self.vectors[item_id][0], []).append(j)
        for space, idx in spaces.items():
            X = np.stack([self.vectors[ids[j]][1] for j in idx]).astype(np.float64)
            X = X - X.mean(axis=0)
            if space in STANDARDISED and len(idx) > 1:  # hand-made statistics of mixed units
                X = X / np.maximum(X.std(axis=0), 1e-8)
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
            block = X @ X.T
            if len(idx) > 1:
                # Calibrate the space: cosines of MiniLM texts run lower than those of one
                # class's images; scaled so that an item's nearest other item has similarity 1
                # on average, "close" means the same in every space.
                near = min(NEAR_NEIGHBOURS, len(idx) - 1)
                off = block - 2.0 * np.eye(len(idx))  # self out of the top
                q = float(np.partition(off, -near, axis=1)[:, -near:].mean())
                if q > 1e-6:
                    block = np.clip(block / q, -1.0, 1.0)
            np.fill_diagonal(block, 1.0)
            sim[np.ix_(idx, idx)] = block
        return sim

    def space(self, item_id: str) -> str | None:
        v = self.vectors.get(item_id)
        return v[0] if v else None


def read_png(data: bytes) -> np.ndarray:
    """A PNG's pixels (used by tests and the simulation to look at an item)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img).copy()
