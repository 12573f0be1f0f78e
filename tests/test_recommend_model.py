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
