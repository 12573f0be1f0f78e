"""The recommender's parts without the studio: signals, the matrix factorisation, the blend."""

from __future__ import annotations

import numpy as np
import pytest

from aigc.apps.recommend.collaborative import FactorConfig, fit_factors, objective
from aigc.apps.recommend.signals import collect


def _row(rater, item, kind, value, other=None, score=None):
    return {"rater": rater, "item_id": item, "other_id": other, "kind": kind, "value": value,
            "score": score}


def test_signals_turn_feedback_into_star_scale_values_and_seen_sets():
    inter = collect([
        _row("anon:a", "i1", "stars", "5", score=5.0),
        _row("anon:a", "i2", "comparison", "a", other="i3"),
        _row("anon:a", "i4", "flag", "unsafe"),
        _row("anon:a", "i1", "signal", "download"),
        _row("anon:b", "i2", "comparison", "tie", other="i3"),
    ])
    a = inter.values["anon:a"]
    assert a["i2"] == (4.0, 0.5) and a["i3"] == (2.0, 0.5) and a["i4"] == (1.0, 1.0)
    assert a["i1"] == pytest.approx(((5.0 + 0.5 * 4.5) / 1.5, 1.5))  # stars + download
    assert inter.seen["anon:a"] == {"i1", "i2", "i3", "i4"}
    assert inter.values["anon:b"] == {"i2": (3.0, 0.25), "i3": (3.0, 0.25)}
    assert inter.counts == {"anon:a": 4, "anon:b": 1}


def _planted(seed=0, n_users=40, n_items=60, rank=2, per_user=15):
    """Stars from a planted rank-2 taste plus a popularity part, each person answering about a
    random subset; returns the observed triples and the full true matrix."""
    rng = np.random.default_rng(seed)
    U, V = rng.normal(size=(n_users, rank)), rng.normal(size=(n_items, rank))
    quality = rng.normal(0, 0.5, n_items)
    truth = U @ V.T + quality  # (users, items)
    users, items, values = [], [], []
    for u in range(n_users):
        for i in rng.choice(n_items, per_user, replace=False):
            users.append(u)
            items.append(i)
            values.append(float(np.clip(np.round(3 + truth[u, i]), 1, 5)))
    return np.array(users), np.array(items), np.array(values), truth


def _ndcg_at(scores, truth, seen, k=10):
    """NDCG@k of ``scores`` against gains ``truth`` (shifted to >= 0) over unseen items."""
    out = []
    for u in range(truth.shape[0]):
        cand = np.array([i for i in range(truth.shape[1]) if i not in seen[u]])
        gain = truth[u, cand] - truth.min()
        order = cand[np.argsort(-scores[u, cand], kind="stable")][:k]
        g = (truth[u, order] - truth.min())
        disc = 1 / np.log2(np.arange(2, k + 2))
        out.append(float(g @ disc) / float(np.sort(gain)[::-1][:k] @ disc))
    return float(np.mean(out))


def test_factorisation_recovers_a_planted_low_rank_taste_better_than_popularity():
    users, items, values, truth = _planted()
    n_users, n_items = truth.shape
    model = fit_factors(users, items, values, np.ones(len(values)), n_users, n_items,
                        FactorConfig(rank=2, lam=1.0, iterations=20))
    seen = [set(items[users == u]) for u in range(n_users)]
    mf = np.stack([model.predict(u) for u in range(n_users)])
    means = np.array([values[items == i].mean() if (items == i).any() else 3.0
                      for i in range(n_items)])
    pop = np.tile(means, (n_users, 1))
    ndcg_mf, ndcg_pop = _ndcg_at(mf, truth, seen), _ndcg_at(pop, truth, seen)
    assert ndcg_mf > ndcg_pop + 0.05, (ndcg_mf, ndcg_pop)
    # and the personal part correlates with the planted taste on unseen entries
    mask = np.ones_like(truth, dtype=bool)
    mask[users, items] = False
    assert np.corrcoef(mf[mask], truth[mask])[0, 1] > 0.6


def test_each_sweep_lowers_the_objective_and_the_fit_is_deterministic():
    users, items, values, truth = _planted(seed=1, n_users=15, n_items=20, per_user=8)
    w = np.full(len(values), 0.7)
    losses = [objective(fit_factors(users, items, values, w, *truth.shape,
                                    FactorConfig(rank=3, lam=1.0, iterations=n)),
                        users, items, values, w, 1.0) for n in (1, 2, 4, 8)]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:])), losses
    a = fit_factors(users, items, values, w, *truth.shape, FactorConfig(rank=3, iterations=3))
    b = fit_factors(users, items, values, w, *truth.shape, FactorConfig(rank=3, iterations=3))
    assert np.array_equal(a.P, b.P) and np.array_equal(a.Q, b.Q)


def test_factorisation_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="item indices must lie in"):
        fit_factors(np.array([0]), np.array([5]), np.array([3.0]), np.array([1.0]), 1, 5)
    with pytest.raises(ValueError, match="weights must all be > 0"):
        fit_factors(np.array([0]), np.array([0]), np.array([3.0]), np.array([0.0]), 1, 1)
    with pytest.raises(ValueError, match="rank must be in 1..256, got 0"):
        FactorConfig(rank=0)


def test_neighbours_carry_a_groups_taste_to_items_the_person_never_saw():
    """Two groups with opposite tastes over 20 items; a new member of group A who answered about
    items 0-3 only is predicted to like what group A liked among items 4-19."""
    from aigc.apps.recommend.ranker import BlendWeights, _neighbour_scores

    rng = np.random.default_rng(0)
    taste = np.where(rng.random(20) < 0.5, 1.0, -1.0)  # group A's residual per item
    pseudo = np.vstack([taste + rng.normal(0, 0.3, 20) for _ in range(6)]
                       + [-taste + rng.normal(0, 0.3, 20) for _ in range(6)]
                       + [np.concatenate([taste[:4], np.zeros(16)])])
    answered = np.array([20.0] * 12 + [4.0])
    got = _neighbour_scores(pseudo, answered, 12, BlendWeights(people_neighbours=5))
    assert np.corrcoef(got[4:], taste[4:])[0, 1] > 0.9
    assert (np.sign(got[4:]) == taste[4:]).all()


def test_content_similarity_is_calibrated_per_space_and_zero_across_spaces(tmp_path):
    from aigc.apps.recommend.content import ContentIndex

    rng = np.random.default_rng(0)
    index = ContentIndex(tmp_path)
    centre_a, centre_b = rng.normal(size=16), rng.normal(size=16)
    for k in range(4):  # two clusters in one space
        index.vectors[f"a{k}"] = ("text:minilm", centre_a + 0.5 * rng.normal(size=16))
        index.vectors[f"b{k}"] = ("text:minilm", centre_b + 0.5 * rng.normal(size=16))
    index.vectors["img"] = ("image:pixels", rng.normal(size=67))
    ids = [f"a{k}" for k in range(4)] + [f"b{k}" for k in range(4)] + ["img", "none"]
    sim = index.similarity(ids)
    assert np.allclose(np.diag(sim)[:9], 1.0) and sim[9, 9] == 0.0  # no features: no similarity
    assert (sim[8, :8] == 0).all() and (sim[:8, 8] == 0).all()  # other space
    assert np.allclose(sim, sim.T) and sim.min() >= -1 and sim.max() <= 1
    # calibrated: the nearest other item of an average item is at 1 before clipping, so some
    # reach 1; the clusters survive (each item's nearest other is in its own cluster)
    off = sim[:8, :8] - 2 * np.eye(8)
    assert off.max() == 1.0 and off.max(axis=1).mean() > 0.5
    assert (off.argmax(axis=1) // 4 == np.arange(8) // 4).all()


def test_music_features_read_a_stored_midi_file(tmp_path):
    from aigc.apps.recommend.content import ContentIndex
    from aigc.data.music.midi import write_midi
    from aigc.data.music.pieces import Note, Piece

    # C major scale, one voice, in 4/4
    notes = [Note(onset=24 * k, voice=0, pitch=p, duration=24)
             for k, p in enumerate((60, 62, 64, 65, 67, 69, 71, 72))]
    piece = Piece(name="scale", style="folk", tonic=0, mode="major", meter=(4, 4), notes=notes)
    write_midi(piece, tmp_path / ("a" * 64 + ".mid"))
    index = ContentIndex(tmp_path)
    index.update([{"id": "m1", "kind": "music", "file": "x.wav",
                   "record": {"files": {"mid": "a" * 64 + ".mid"}}},
                  {"id": "m2", "kind": "music", "file": "y.wav", "record": {}}])
    space, f = index.vectors["m1"]
    assert space == "music:stats" and "m2" not in index.vectors  # no MIDI: no features
    assert f[:12].sum() == pytest.approx(1.0) and f[0] == pytest.approx(2 / 8)  # two Cs
    assert f[12] == 1.0 and f[13] == pytest.approx(8 / piece.bars) and f[15] == 1  # in key
