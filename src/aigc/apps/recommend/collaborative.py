"""Collaborative filtering: a weighted, biased matrix factorisation fitted by alternating least
squares (Koren, Bell & Volinsky, "Matrix factorization techniques for recommender systems",
IEEE Computer 2009, eq. 5, with a confidence per observed entry as in Hu, Koren & Volinsky 2008).

For the observed entries (u, i) with value y_ui and confidence w_ui it minimises

    sum_ui w_ui (y_ui - mu - b_u - b_i - p_u . q_i)^2 + lam (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2)

Fixing the items, each person's (b_u, p_u) is one ridge regression on the items they rated
(design rows [1, q_i], targets y_ui - mu - b_i); fixing the people, each item's (b_i, q_i) is the
same with the roles swapped. Every step lowers the objective, so it is deterministic given the
seed of the initial factors.

Why not ``implicit`` (installed): its ALS and BPR take only non-negative confidences of
*positive* interactions; star ratings also say "I do not like this", and a 1-star answer
should push an item down, not up. With a few hundred people and items, the closed-form solves
here take milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FactorConfig:
    """Rank, ridge strength, sweeps and the seed of the initial factors."""

    rank: int = 8
    lam: float = 2.0
    iterations: int = 12
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.rank <= 256:
            raise ValueError(f"rank must be in 1..256, got {self.rank}")
        if not self.lam > 0:
            raise ValueError(f"lam must be > 0, got {self.lam}")
        if not 1 <= self.iterations <= 1000:
            raise ValueError(f"iterations must be in 1..1000, got {self.iterations}")


@dataclass
class FactorModel:
    """The fitted factors: ``predict(u, i) = mu + b_user[u] + b_item[i] + P[u] . Q[i]``."""

    mu: float
    b_user: np.ndarray  # (U,)
    b_item: np.ndarray  # (I,)
    P: np.ndarray  # (U, k)
    Q: np.ndarray  # (I, k)

    def interaction(self, u: int) -> np.ndarray:
        """``P[u] . Q[i]`` for every item, ``(I,)``: the personal part, biases left out."""
        return self.Q @ self.P[u]

    def predict(self, u: int) -> np.ndarray:
        """The full prediction for person ``u`` on every item, ``(I,)``."""
        return self.mu + self.b_user[u] + self.b_item + self.interaction(u)


def _solve_rows(rows: list[np.ndarray], cols: list[np.ndarray], ys: list[np.ndarray],
                ws: list[np.ndarray], other: np.ndarray, other_bias: np.ndarray, mu: float,
                lam: float) -> tuple[np.ndarray, np.ndarray]:
    """One half-sweep: for each row r, ridge-regress ``y - mu - other_bias[cols]`` on
    ``[1, other[cols]]`` with weights; returns (biases (R,), factors (R, k))."""
    k = other.shape[1]
    bias = np.zeros(len(rows))
    fac = np.zeros((len(rows), k))
    reg = lam * np.eye(k + 1)
    for r, (c, y, w) in enumerate(zip(cols, ys, ws, strict=True)):
        if len(c) == 0:
            continue
        X = np.hstack([np.ones((len(c), 1)), other[c]])  # (n, k+1)
        t = y - mu - other_bias[c]
        A = X.T @ (X * w[:, None]) + reg
        sol = np.linalg.solve(A, X.T @ (w * t))
        bias[r], fac[r] = sol[0], sol[1:]
    return bias, fac


def fit_factors(users: np.ndarray, items: np.ndarray, values: np.ndarray, weights: np.ndarray,
                n_users: int, n_items: int, config: FactorConfig | None = None) -> FactorModel:
    """Fit :class:`FactorModel` to observed entries given as parallel arrays.

    Args:
        users, items: ``(N,)`` integer indices in ``[0, n_users)`` and ``[0, n_items)``.
        values: ``(N,)`` observed values (stars); weights: ``(N,)`` confidences > 0.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    n = len(values)
    if not (len(users) == len(items) == len(weights) == n):
        raise ValueError(f"users, items, values and weights must have one length; got "
                         f"{len(users)}, {len(items)}, {n}, {len(weights)}")
    if n and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user indices must lie in [0, {n_users}), got "
                         f"[{users.min()}, {users.max()}]")
    if n and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item indices must lie in [0, {n_items}), got "
                         f"[{items.min()}, {items.max()}]")
    if n and not (weights > 0).all():
        raise ValueError("weights must all be > 0")
    config = config or FactorConfig()
    rng = np.random.default_rng(config.seed)
    k = config.rank
    mu = float(np.average(values, weights=weights)) if n else 3.0
    P = rng.normal(0, 0.1, (n_users, k))
    Q = rng.normal(0, 0.1, (n_items, k))
    b_user, b_item = np.zeros(n_users), np.zeros(n_items)
    by_user = [np.flatnonzero(users == u) for u in range(n_users)]
    by_item = [np.flatnonzero(items == i) for i in range(n_items)]
    for _ in range(config.iterations):
        b_user, P = _solve_rows(by_user, [items[s] for s in by_user],
                                [values[s] for s in by_user], [weights[s] for s in by_user],
                                Q, b_item, mu, config.lam)
        b_item, Q = _solve_rows(by_item, [users[s] for s in by_item],
                                [values[s] for s in by_item], [weights[s] for s in by_item],
                                P, b_user, mu, config.lam)
    return FactorModel(mu=mu, b_user=b_user, b_item=b_item, P=P, Q=Q)


def objective(model: FactorModel, users, items, values, weights, lam: float) -> float:
    """The loss :func:`fit_factors` minimises (for tests: it must not increase)."""
    pred = (model.mu + model.b_user[users] + model.b_item[items]
            + np.einsum("nk,nk->n", model.P[users], model.Q[items]))
    fit = float(np.sum(weights * (values - pred) ** 2))
    return fit + lam * float((model.P ** 2).sum() + (model.Q ** 2).sum()
                             + (model.b_user ** 2).sum() + (model.b_item ** 2).sum())
