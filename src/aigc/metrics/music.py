"""Music metrics and the n-gram (Markov) baseline they are reported beside.

Statistics of a set of pieces (:class:`MusicStatistics`, ``update(pieces)`` / ``compute()`` /
``reset()`` over float64 counts; the maths in pure functions):

* **pitch-class histogram**, key-relative: note counts per ``(pitch - tonic) mod 12``, so pieces in
  different keys are comparable; compared by Jensen-Shannon distance (base 2, in [0, 1]).
* **in-key note rate**: the share of notes whose pitch class lies in the key's scale: major
  = the major scale; minor = natural minor plus the raised 6th and 7th (melodic and harmonic
  minor), as chorales use them.
* **note density**: onsets per bar (all voices), histogram over 0..63, JS distance.
* **duration distribution**: note durations in ticks (1..192), histogram, JS distance.
* **parallel fifths / octaves rate** (for four-voice music): over every pair of voices and every
  two consecutive notes of both voices that start together, the share where both move in
  the same direction from a perfect fifth to a perfect fifth, or from an octave/unison to an
  octave/unison (intervals modulo 12). Bach's chorales avoid them; the rate is near zero.
* **same-voice overlap rate**: notes per 1000 that start while an earlier note of the same
  voice still sounds (onset after that note's onset and before its end; notes of one voice
  starting together, a chord, do not count). Each voice of a chorale or a folk tune sounds one
  note at a time, so real pieces give 0; so must composed ones (the grammar keeps it so).

:func:`perplexity` is the exponentiated mean negative log-likelihood of the held-out pieces'
tokens after their header (the bars and the final ``<eos>``), the same targets for every model.

:class:`NGramModel` is an interpolated absolute-discounting n-gram model (Ney, Essen & Kneser,
1994) over the same tokens as the GPT; it samples through the same grammar-constrained loop
(:func:`aigc.models.music_gpt.compose`), so the comparison is like for like.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from aigc.data.music import HEADER_LEN, VOCAB, MusicVocab, Piece, piece_ids
from aigc.metrics.text import Perplexity

MAJOR_SCALE = frozenset({0, 2, 4, 5, 7, 9, 11})
MINOR_SCALE = frozenset({0, 2, 3, 5, 7, 8, 10, 9, 11})  # natural + raised 6th and 7th
DENSITY_BINS = 64


# ------------------------------------------------------------------------- pure functions


def jensen_shannon_distance(p, q) -> float:
    """sqrt(JS divergence) in bits between two histograms (normalised here); 0 = identical,
    1 = disjoint supports. Same as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return math.sqrt(max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m)))


def pitch_class_counts(piece: Piece) -> np.ndarray:
    """Notes per key-relative pitch class, ``(12,)``."""
    out = np.zeros(12)
    for n in piece.notes:
        out[(n.pitch - piece.tonic) % 12] += 1
    return out


def in_key_counts(piece: Piece) -> tuple[int, int]:
    """``(notes in the key's scale, notes)``."""
    scale = MAJOR_SCALE if piece.mode == "major" else MINOR_SCALE
    inside = sum((n.pitch - piece.tonic) % 12 in scale for n in piece.notes)
    return inside, len(piece.notes)


def density_counts(piece: Piece) -> np.ndarray:
    """Histogram of onsets (all voices) per bar, ``(DENSITY_BINS,)``; the last bin holds more."""
    per_bar = np.zeros(max(piece.bars, 1), dtype=np.int64)
    for n in piece.notes:
        per_bar[n.onset // piece.bar_ticks] += 1
    return np.bincount(np.minimum(per_bar, DENSITY_BINS - 1), minlength=DENSITY_BINS).astype(float)


def duration_counts(piece: Piece, max_duration: int = 192) -> np.ndarray:
    out = np.zeros(max_duration + 1)
    for n in piece.notes:
        out[min(n.duration, max_duration)] += 1
    return out


def parallel_counts(piece: Piece) -> tuple[int, int]:
    """``(parallel fifths + octaves, voice-pair motions)`` (see the module docstring)."""
    by_voice: dict[int, dict[int, int]] = {}
    for n in piece.notes:  # onset -> highest pitch starting there, per voice
        slot = by_voice.setdefault(n.voice, {})
        slot[n.onset] = max(slot.get(n.onset, -1), n.pitch)
    voices = sorted(by_voice)
    parallels = motions = 0
    for a in range(len(voices)):
        for b in range(a + 1, len(voices)):
            va, vb = by_voice[voices[a]], by_voice[voices[b]]
            common = sorted(set(va) & set(vb))  # time points where both voices start notes
            next_a = dict(zip(sorted(va), sorted(va)[1:]))
            next_b = dict(zip(sorted(vb), sorted(vb)[1:]))
            for t0, t1 in zip(common, common[1:]):
                if next_a.get(t0) != t1 or next_b.get(t0) != t1:
                    continue  # not consecutive notes in both voices
                da, db = va[t1] - va[t0], vb[t1] - vb[t0]
                if da == 0 or db == 0:
                    continue
                motions += 1
                i0, i1 = abs(va[t0] - vb[t0]) % 12, abs(va[t1] - vb[t1]) % 12
                if (da > 0) == (db > 0) and i0 == i1 and i0 in (0, 7):
                    parallels += 1
    return parallels, motions


def overlap_counts(piece: Piece) -> tuple[int, int]:
    """``(notes starting while an earlier note of their voice sounds, notes)``.

    Example: voice 0 with a half note at tick 0 (24 ticks) and a quarter at tick 12 gives
    ``(1, 2)``; two notes of one voice at the same onset (a chord) give ``(0, 2)``.
    """
    sounding_until: dict[int, int] = {}  # voice -> end of its notes with an earlier onset
    here: dict[int, tuple[int, int]] = {}  # voice -> (onset, latest end) of its current notes
    overlaps = 0
    for n in piece.notes:  # sorted by onset, then voice (Piece keeps them so)
        onset, end = here.get(n.voice, (-1, 0))
        if n.onset != onset:  # a later onset: the notes at the earlier one are now "earlier"
            sounding_until[n.voice] = max(sounding_until.get(n.voice, 0), end)
            here[n.voice] = (n.onset, n.onset + n.duration)
        else:
            here[n.voice] = (onset, max(end, n.onset + n.duration))
        overlaps += n.onset < sounding_until.get(n.voice, 0)
    return overlaps, len(piece.notes)


# --------------------------------------------------------------------------------- metric


class MusicStatistics:
    """Running float64 statistics of a set of pieces (``update`` / ``compute`` / ``reset``)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.pitch_classes = np.zeros(12)
        self.in_key = np.zeros(2)  # (in key, all)
        self.density = np.zeros(DENSITY_BINS)
        self.durations = np.zeros(193)
        self.parallels = np.zeros(2)  # (parallels, motions)
        self.overlaps = np.zeros(2)  # (same-voice overlapping notes, notes)
        self.pieces = 0
        self.bars = 0

    def update(self, pieces: list[Piece]) -> None:
        for p in pieces:
            self.pitch_classes += pitch_class_counts(p)
            self.in_key += in_key_counts(p)
            self.density += density_counts(p)
            self.durations += duration_counts(p)
            self.parallels += parallel_counts(p)
            self.overlaps += overlap_counts(p)
            self.pieces += 1
            self.bars += p.bars

    def compute(self) -> dict:
        return {
            "pieces": self.pieces,
            "notes": int(self.in_key[1]),
            "in_key_rate": float(self.in_key[0] / max(self.in_key[1], 1)),
            "notes_per_bar": float(self.in_key[1] / max(self.bars, 1)),
            "parallel_rate": float(self.parallels[0] / self.parallels[1]) if self.parallels[1] else None,
            "overlaps_per_1000_notes":
                float(1000 * self.overlaps[0] / self.overlaps[1]) if self.overlaps[1] else None,
            "pitch_class_histogram": (self.pitch_classes / max(self.pitch_classes.sum(), 1)).tolist(),
        }

    def distances(self, reference: MusicStatistics) -> dict[str, float]:
        """Jensen-Shannon distances of this set's histograms to ``reference``'s."""
        return {
            "pitch_class_js": jensen_shannon_distance(self.pitch_classes, reference.pitch_classes),
            "density_js": jensen_shannon_distance(self.density, reference.density),
            "duration_js": jensen_shannon_distance(self.durations, reference.durations),
        }


# ----------------------------------------------------------------------------- n-gram model


class NGramModel:
    """Interpolated absolute-discounting n-gram model over token ids (vocabulary < 512).

    ``p_k(w | h) = (max(c(h w) - d, 0) + d * N1+(h .) * p_{k-1}(w | h')) / c(h)`` where ``h'`` drops
    the oldest token of ``h``, ``p_{-1} = 1 / V``, and a history never seen falls back to
    ``p_{k-1}``. Counts are kept as sorted ``int64`` keys (context and token packed 9 bits each),
    so fitting millions of tokens takes seconds. At most 6 tokens of history (order 7).

    It has the ``reset`` / ``feed`` / ``context_length`` interface of the samplers.
    """

    BITS = 9
    MAX_ORDER = 7

    def __init__(self, order: int = 5, vocab_size: int = VOCAB.vocab_size, discount: float = 0.75):
        if not 1 <= order <= self.MAX_ORDER:
            raise ValueError(f"order must be in 1..{self.MAX_ORDER}, got {order}")
        if vocab_size > 1 << self.BITS:
            raise ValueError(f"vocab_size must be <= {1 << self.BITS}, got {vocab_size}")
        self.order, self.V, self.d = order, vocab_size, discount
        self.tables: list[tuple[np.ndarray, ...]] = []
        self.context_length = 1 << 30
        self.history: list[int] = []

    def _histories(self, s: np.ndarray, k: int) -> np.ndarray:
        """Packed k-token histories ending before each position of ``s`` (left-padded with 0)."""
        padded = np.concatenate([np.zeros(self.MAX_ORDER, dtype=np.int64), s])
        h = np.zeros(len(s), dtype=np.int64)
        for i in range(1, k + 1):  # most recent token in the low bits
            h |= padded[self.MAX_ORDER - i : self.MAX_ORDER - i + len(s)] << (self.BITS * (i - 1))
        return h

    def fit(self, stream) -> NGramModel:
        s = np.asarray(stream, dtype=np.int64)
        self.tables = []
        for k in range(self.order):
            keys = (self._histories(s, k) << self.BITS) | s
            hw, c_hw = np.unique(keys, return_counts=True)
            h, first, n1 = np.unique(hw >> self.BITS, return_index=True, return_counts=True)
            c_h = np.add.reduceat(c_hw, first)
            self.tables.append((hw, c_hw.astype(np.float64), h, c_h.astype(np.float64),
                                n1.astype(np.float64)))
        return self

    @staticmethod
    def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
        i = np.searchsorted(sorted_keys, queries)
        i = np.minimum(i, len(sorted_keys) - 1)
        return np.where(sorted_keys[i] == queries, values[i], 0.0)

    def log_probs(self, stream, order: int | None = None) -> np.ndarray:
        """Natural-log probability of each token of ``stream`` given the tokens before it."""
        s = np.asarray(stream, dtype=np.int64)
        p = np.full(len(s), 1.0 / self.V)
        for k in range(order or self.order):
            hw, c_hw, h, c_h, n1 = self.tables[k]
            hist = self._histories(s, k)
            ch = self._lookup(h, c_h, hist)
            chw = self._lookup(hw, c_hw, (hist << self.BITS) | s)
            nn1 = self._lookup(h, n1, hist)
            seen = ch > 0
            p = np.where(seen, (np.maximum(chw - self.d, 0) + self.d * nn1 * p) / np.maximum(ch, 1), p)
        return np.log(p)

    def distribution(self, history: list[int]) -> np.ndarray:
        """``p(. | history)`` over the vocabulary, ``(V,)`` float64."""
        p = np.full(self.V, 1.0 / self.V)
        recent = list(history)[-(self.order - 1):] if self.order > 1 else []
        recent = [0] * (self.order - 1 - len(recent)) + recent
        for k in range(self.order):
            hw, c_hw, h, c_h, n1 = self.tables[k]
            code = 0
            for i in range(1, k + 1):
                code |= recent[-i] << (self.BITS * (i - 1))
            j = np.searchsorted(h, code)
            if j >= len(h) or h[j] != code:
                continue
            lo, hi = np.searchsorted(hw, [code << self.BITS, (code + 1) << self.BITS])
            words = (hw[lo:hi] & ((1 << self.BITS) - 1)).astype(np.int64)
            new = self.d * n1[j] * p / c_h[j]
            new[words] += np.maximum(c_hw[lo:hi] - self.d, 0) / c_h[j]
            p = new
        return p

    # the sampler interface (aigc.models.music_gpt.compose)
    def reset(self) -> None:
        self.history = []

    def feed(self, ids: list[int]) -> torch.Tensor:
        self.history += list(ids)
        return torch.from_numpy(np.log(self.distribution(self.history)))


def fit_ngram(train_stream, val_stream, *, orders=range(1, NGramModel.MAX_ORDER + 1),
              vocab_size: int = VOCAB.vocab_size) -> tuple[NGramModel, dict[int, float]]:
    """Fit the largest order once, pick the order with the lowest validation perplexity.

    Returns ``(model at the best order, {order: validation perplexity})``.
    """
    orders = list(orders)
    model = NGramModel(max(orders), vocab_size).fit(train_stream)
    val = np.asarray(val_stream, dtype=np.int64)
    if len(val) < 2:  # nothing to choose on: keep the largest order
        return model, {}
    ppl = {k: perplexity(-float(model.log_probs(val, order=k)[1:].sum()), len(val) - 1)
           for k in orders}
    best = min(ppl, key=ppl.get)
    model.order = best
    model.tables = model.tables[:best]
    return model, ppl


# ----------------------------------------------------------------------------- perplexity


def ngram_piece_nll(model: NGramModel, pieces: list[Piece], vocab: MusicVocab = VOCAB) -> tuple[float, int]:
    """``(total NLL in nats, targets)`` over each piece's tokens after its header."""
    total, count = 0.0, 0
    for p in pieces:
        ids, _ = piece_ids(p, vocab)
        lp = model.log_probs(ids)
        total -= float(lp[HEADER_LEN:].sum())
        count += len(ids) - HEADER_LEN
    return total, count


@torch.no_grad()
def gpt_piece_nll(model, pieces: list[Piece], vocab: MusicVocab = VOCAB) -> tuple[float, int]:
    """``(total NLL in nats, targets)`` of a GPT over each piece's tokens after its header.

    A piece longer than the context is scored in windows that start with the header and then a
    bar; each window scores only targets not scored before, each with at least half a context
    of music before it where the piece allows.
    """
    import torch.nn.functional as F

    T = model.cfg.context_length
    device = model.wte.weight.device
    total, count = 0.0, 0
    for p in pieces:
        ids, bars = piece_ids(p, vocab)
        done = HEADER_LEN  # index of the first target not yet scored
        while done < len(ids):
            if done == HEADER_LEN:
                start = HEADER_LEN
            else:
                later = [b for b in bars if done - T // 2 <= b <= done]
                start = min(later) if later else max(HEADER_LEN, done - T // 2)
            window = ids[:HEADER_LEN] + ids[start : start + T + 1 - HEADER_LEN]
            x = torch.tensor([window[:-1]], device=device)
            y = torch.tensor(window[1:], device=device)
            nll = F.cross_entropy(model(x)[0].float(), y, reduction="none")
            # window position j predicts window[j + 1] = ids[start + j + 1 - HEADER_LEN]
            first = done - start + HEADER_LEN - 1
            total += float(nll[first:].sum())
            count += len(window) - 1 - first
            done = start + len(window) - HEADER_LEN
    return total, count


def perplexity(total_nll: float, count: int) -> float:
    """``exp(total_nll / count)`` through :class:`aigc.metrics.text.Perplexity` (1.0 when
    nothing was scored, as before)."""
    if count == 0:
        return 1.0
    ppl = Perplexity()
    ppl.update(-total_nll, count)
    return ppl.compute()["perplexity"]


# ----------------------------------------------------------------------------- the protocol


def evaluate_music_model(checkpoint, *, data: str | None = None, n: int = 20, bars: int = 8,
                         temperature: float = 1.0, seed: int = 0, samples_dir=None,
                         progress: bool = True) -> dict:
    """The music GPT beside an n-gram baseline and the held-out corpus, per style.

    Protocol: the n-gram model is fitted on the GPT's training tokens (training split, twelve
    transpositions) and its order chosen on the validation split. For each style, ``n`` pieces
    of ``bars`` bars are composed by each model under the conditions (style, key, meter) of the
    test pieces in turn, piece ``i`` with seed ``seed + i``, through the same grammar-constrained
    sampler. Distances are to the test split; the validation split, scored the same way, shows
    how far two samples of real music are from each other. Perplexity is over the test pieces'
    tokens after their header.
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from aigc.checkpoints import library_versions
    from aigc.data.music import TRANSPOSITIONS, load_music_corpus, token_stream, write_midi
    from aigc.errors import AigcError
    from aigc.models.music_gpt import ComposeParams, compose, load_music_model
    from aigc.music import save_piano_roll

    if n < 1 or bars < 1:
        raise AigcError(f"--n and --bars must be >= 1, got {n} and {bars}")
    model, vocab, ckpt = load_music_model(checkpoint)
    data = data or ckpt.meta.get("data")
    if not data:
        raise AigcError(f"{ckpt.path} does not record its corpus; pass --data")
    corpus = load_music_corpus(data, progress=progress)
    train, val, test = corpus.split("train"), corpus.split("val"), corpus.split("test")
    ngram, ngram_val_ppl = fit_ngram(token_stream(train, TRANSPOSITIONS), token_stream(val),
                                     vocab_size=vocab.vocab_size)
    values: dict[str, dict] = {}
    for style in sorted({p.style for p in test}):
        test_s = [p for p in test if p.style == style]
        val_s = [p for p in val if p.style == style]
        reference = MusicStatistics()
        reference.update(test_s)
        rows: dict[str, dict] = {}
        for name, lm in (("music-gpt", model), (f"ngram-{ngram.order}", ngram)):
            stats = MusicStatistics()
            pieces = []
            for i in tqdm(range(n), desc=f"compose {style} {name}", disable=not progress):
                cond = test_s[i % len(test_s)]
                params = ComposeParams(bars=bars, style=style, key=cond.key_name,
                                       meter=f"{cond.meter[0]}/{cond.meter[1]}",
                                       temperature=temperature, seed=seed + i)
                pieces.append(compose(lm, params, vocab=vocab).piece)
            stats.update(pieces)
            nll = gpt_piece_nll(model, test_s, vocab) if lm is model else ngram_piece_nll(ngram, test_s, vocab)
            rows[name] = {**stats.compute(), **stats.distances(reference), "perplexity": perplexity(*nll)}
            if samples_dir:
                for i, piece in enumerate(pieces[:2]):
                    stem = Path(samples_dir) / f"{style}-{name}-{i}"
                    write_midi(piece, stem.with_suffix(".mid"))
                    save_piano_roll(piece, stem.with_suffix(".png"),
                                    record={"kind": "music-eval-sample", "model": name, "seed": seed + i})
        if val_s:
            real = MusicStatistics()
            real.update(val_s)
            rows["val corpus (real)"] = {**real.compute(), **real.distances(reference)}
        rows["test corpus (ref)"] = reference.compute()
        for row in rows.values():
            row.pop("pitch_class_histogram", None)
        values[style] = rows
    return {
        "values": values,
        "protocol": {
            "checkpoint": str(ckpt.path), "checkpoint_sha256": ckpt.sha256, "step": ckpt.step,
            "data": data, "pieces_per_model": n, "bars": bars, "temperature": temperature,
            "seeds": f"{seed}..{seed + n - 1}", "conditions": "style/key/meter of the test pieces in turn",
            "reference": "test split", "ngram_order": ngram.order,
            "ngram_val_perplexity_by_order": ngram_val_ppl, "sampler": "grammar-constrained, full softmax",
            "distances": "Jensen-Shannon distance, base 2", "versions": library_versions(),
        },
    }
