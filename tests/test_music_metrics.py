"""Music metrics against references (scipy, brute-force counts), pinned values, batch-size
independence; the n-gram baseline's probabilities; perplexity windows."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from aigc.data.music import HEADER_LEN, VOCAB, Note, Piece, piece_ids
from aigc.metrics.music import (
    MusicStatistics,
    NGramModel,
    fit_ngram,
    gpt_piece_nll,
    in_key_counts,
    jensen_shannon_distance,
    ngram_piece_nll,
    overlap_counts,
    parallel_counts,
)
from aigc.models.gpt import GPT, GPTConfig


def _melody(pitches, tonic=0, mode="major", step=12, voice=0, name="m"):
    return Piece(name, "folk", tonic, mode, (4, 4),
                 [Note(i * step, voice, p, step) for i, p in enumerate(pitches)])


def test_js_distance_matches_scipy():
    from scipy.spatial.distance import jensenshannon

    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(12) * (rng.random(12) > 0.3), rng.random(12)
        assert jensen_shannon_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)


def test_js_distance_pinned():
    assert jensen_shannon_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon_distance([1, 1], [2, 2]) == pytest.approx(0.0)
    # p = (1/2, 1/2), q = (1, 0): JS = 1/2 [1/2 log2(2/3) * ... ] = 0.311278 bits; sqrt -> 0.557925
    assert jensen_shannon_distance([0.5, 0.5], [1, 0]) == pytest.approx(0.5579230, abs=1e-6)


def test_in_key_rate():
    assert in_key_counts(_melody([60, 62, 64, 65, 67, 69, 71, 72])) == (8, 8)
    assert in_key_counts(_melody(list(range(60, 72)))) == (7, 12)
    # A minor: G# (raised 7th) is in key, G too (natural minor); Bb is not.
    assert in_key_counts(_melody([69, 68, 67, 70], tonic=9, mode="minor")) == (3, 4)


def test_parallel_fifths_and_octaves():
    upper = [67, 69, 71, 72]
    parallel_fifths = Piece("p", "chorale", 0, "major", (4, 4),
                            [Note(i * 12, 0, p, 12) for i, p in enumerate(upper)]
                            + [Note(i * 12, 1, p - 7, 12) for i, p in enumerate(upper)])
    assert parallel_counts(parallel_fifths) == (3, 3)
    contrary = Piece("c", "chorale", 0, "major", (4, 4),
                     [Note(i * 12, 0, p, 12) for i, p in enumerate([72, 74, 76])]
                     + [Note(i * 12, 1, p, 12) for i, p in enumerate([60, 59, 57])])
    assert parallel_counts(contrary) == (0, 2)
    # a passing note in one voice between the two fifths: not consecutive notes, not counted
    passing = Piece("x", "chorale", 0, "major", (4, 4),
                    [Note(0, 0, 67, 12), Note(12, 0, 69, 12),
                     Note(0, 1, 60, 6), Note(6, 1, 61, 6), Note(12, 1, 62, 12)])
    assert parallel_counts(passing) == (0, 0)


def _brute_force_overlaps(piece):
    """Every note against every earlier-starting note of its voice (the reference)."""
    return sum(any(m.voice == n.voice and m.onset < n.onset < m.onset + m.duration
                   for m in piece.notes) for n in piece.notes)


def test_overlap_counts_pinned_and_against_brute_force():
    half_then_quarter = Piece("o", "folk", 0, "major", (4, 4),
                              [Note(0, 0, 60, 24), Note(12, 0, 62, 12)])
    assert overlap_counts(half_then_quarter) == (1, 2)
    legato = Piece("l", "folk", 0, "major", (4, 4), [Note(0, 0, 60, 12), Note(12, 0, 62, 12)])
    assert overlap_counts(legato) == (0, 2)  # the next note starts as the previous one ends
    chord_then_note = Piece("c", "folk", 0, "major", (4, 4),
                            [Note(0, 0, 60, 6), Note(0, 0, 64, 24), Note(12, 0, 67, 12)])
    assert overlap_counts(chord_then_note) == (1, 3)  # the chord itself is not an overlap
    other_voice = Piece("v", "chorale", 0, "major", (4, 4),
                        [Note(0, 0, 72, 24), Note(12, 1, 60, 12)])
    assert overlap_counts(other_voice) == (0, 2)  # voices may overlap each other
    rng = np.random.default_rng(3)
    for i in range(50):
        notes = {Note(int(rng.integers(0, 96)), int(rng.integers(0, 4)), int(rng.integers(50, 80)),
                     int(rng.integers(1, 30))) for _ in range(int(rng.integers(1, 40)))}
        piece = Piece(str(i), "chorale", 0, "major", (4, 4), list(notes))
        assert overlap_counts(piece) == (_brute_force_overlaps(piece), len(piece.notes))
    stats = MusicStatistics()
    stats.update([half_then_quarter, legato])
    assert stats.compute()["overlaps_per_1000_notes"] == pytest.approx(250.0)


def test_statistics_do_not_depend_on_batching():
    rng = np.random.default_rng(1)
    pieces = [_melody(rng.integers(55, 80, 20).tolist(), tonic=int(rng.integers(12)), name=str(i))
              for i in range(9)]
    one, many = MusicStatistics(), MusicStatistics()
    one.update(pieces)
    for i in range(0, 9, 2):
        many.update(pieces[i : i + 2])
    assert one.compute() == many.compute()
    ref = MusicStatistics()
    ref.update(pieces[:3])
    assert one.distances(ref) == many.distances(ref)
    one.reset()
    assert one.compute()["pieces"] == 0


def test_pitch_class_histogram_is_key_relative():
    a, b = MusicStatistics(), MusicStatistics()
    a.update([_melody([60, 64, 67])])
    b.update([_melody([62, 66, 69], tonic=2)])  # the same melody in D
    assert a.distances(b)["pitch_class_js"] == pytest.approx(0.0)


def _brute_force_prob(stream, history, w, order, d, V):
    """Interpolated absolute discounting by direct counting (the reference)."""
    p = 1.0 / V
    padded = [0] * 6 + list(stream)
    for k in range(order):
        ctx = tuple(history[len(history) - k :]) if k else ()
        ctx = (0,) * (k - len(ctx)) + ctx
        follow = Counter(padded[6 + t] for t in range(len(stream))
                         if tuple(padded[6 + t - k : 6 + t]) == ctx)
        c_h = sum(follow.values())
        if c_h:
            p = (max(follow[w] - d, 0) + d * len(follow) * p) / c_h
    return p


def test_ngram_matches_brute_force_and_normalises():
    rng = np.random.default_rng(2)
    stream = rng.integers(0, 6, 300).tolist()
    model = NGramModel(order=4, vocab_size=8).fit(stream)
    for t in (0, 1, 5, 77, 299):
        dist = model.distribution(stream[:t])
        assert dist.sum() == pytest.approx(1.0, abs=1e-12)
        for w in range(8):
            assert dist[w] == pytest.approx(_brute_force_prob(stream, stream[:t], w, 4, 0.75, 8))
    lp = model.log_probs(stream)
    for t in (3, 150, 299):
        assert lp[t] == pytest.approx(math.log(model.distribution(stream[:t])[stream[t]]))


def test_ngram_order_selection_prefers_structure():
    pattern = [1, 2, 3, 4, 5, 1, 2, 3, 4, 6] * 50  # needs 4 tokens of history to be exact
    model, ppl = fit_ngram(pattern, pattern[:100], vocab_size=8)
    assert model.order >= 5 and ppl[model.order] < 1.1 < ppl[1]


def test_perplexity_windows_score_every_target_once():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB.vocab_size, context_length=40, layers=1, heads=2,
                          width=16)).eval()
    short = _melody([60, 62, 64], name="short")
    long = _melody(list(range(50, 90)), name="long")  # ~120 tokens: several windows
    for piece in (short, long):
        ids, _ = piece_ids(piece)
        total, count = gpt_piece_nll(model, [piece])
        assert count == len(ids) - HEADER_LEN
        assert math.isfinite(total) and total > 0
    # a piece that fits: the same as one forward pass over all of it
    ids, _ = piece_ids(short)
    x = torch.tensor([ids[:-1]])
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(x)[0], torch.tensor(ids[1:]), reduction="none")
    assert gpt_piece_nll(model, [short])[0] == pytest.approx(float(nll[HEADER_LEN - 1 :].sum()), rel=1e-5)
    ng = NGramModel(order=3).fit(piece_ids(long)[0])
    assert ngram_piece_nll(ng, [short])[1] == len(ids) - HEADER_LEN
