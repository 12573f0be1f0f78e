"""Scoring sentiment predictions against labels: macro-F1 with bootstrap 95 % intervals, the
paired difference between two scorers on the same rows, and Pearson / Spearman correlation with
graded scores where the data has them.

Protocol (every number in docs/sentiment.md follows it): macro-F1 is the unweighted mean of the
per-class F1 over the *scorer's* label set when it is a subset of the data's (a two-class
Chinese model is scored over negative/positive); intervals are percentile bootstraps over rows,
``n_boot`` resamples (default 1,000) from a seeded generator; a paired interval resamples the same
rows for both scorers, so it answers "is A better than B on this data" directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aigc.apps.sentiment.data import Example
from aigc.errors import AigcError

N_BOOT = 1000


def _macro_f1_counts(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Macro-F1 of each row of ``true``/``pred`` (B, N) integer class arrays -> (B,)."""
    f1 = np.zeros(true.shape[0])
    for c in range(n):
        tp = ((pred == c) & (true == c)).sum(1)
        fp = ((pred == c) & (true != c)).sum(1)
        fn = ((pred != c) & (true == c)).sum(1)
        denom = 2 * tp + fp + fn
        f1 += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1 / n


def macro_f1(true: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over ``labels`` of each class's F1.

    Example:
        >>> macro_f1(["positive", "negative"], ["positive", "positive"], ["negative", "positive"])
        0.3333333333333333
    """
    t, p = _encode(true, labels), _encode(pred, labels, allow_unknown=True)
    return float(_macro_f1_counts(t[None], p[None], len(labels))[0])


def _encode(values: Sequence[str], labels: Sequence[str], allow_unknown: bool = False
            ) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for v in values:
        if v not in index:
            if not allow_unknown:
                raise AigcError(f"label {v!r} is not one of {list(labels)}")
            out.append(-1)  # a prediction outside the label set counts as wrong for every class
        else:
            out.append(index[v])
    return np.asarray(out, dtype=np.int64)


def _boot_rows(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def macro_f1_ci(true: Sequence[str], pred: Sequence[str], labels: Sequence[str], *,
                n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """``(macro-F1, low, high)``: the point value and its 95 % percentile-bootstrap interval."""
    t, p = _encode(true, labels), _encode(pred, labels, allow_unknown=True)
    rows = _boot_rows(len(t), n_boot, seed)
    boots = _macro_f1_counts(t[rows], p[rows], len(labels))
    point = float(_macro_f1_counts(t[None], p[None], len(labels))[0])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)


def paired_delta_ci(true: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str],
                    labels: Sequence[str], *, n_boot: int = N_BOOT, seed: int = 0
                    ) -> tuple[float, float, float]:
    """``(F1(a) - F1(b), low, high)`` with a paired bootstrap over the same resampled rows."""
    t = _encode(true, labels)
    a, b = _encode(pred_a, labels, True), _encode(pred_b, labels, True)
    rows = _boot_rows(len(t), n_boot, seed)
    d = (_macro_f1_counts(t[rows], a[rows], len(labels))
         - _macro_f1_counts(t[rows], b[rows], len(labels)))
    point = float(_macro_f1_counts(t[None], a[None], len(labels))[0]
                  - _macro_f1_counts(t[None], b[None], len(labels))[0])
    lo, hi = np.percentile(d, [2.5, 97.5])
    return point, float(lo), float(hi)


def correlations(gold: Sequence[float], predicted: Sequence[float], *, n_boot: int = N_BOOT,
                 seed: int = 0) -> dict[str, float]:
    """Pearson and Spearman correlation of predicted with gold scores, with 95 % bootstrap
    intervals (``pearson``, ``pearson_low``, ``pearson_high``, the same for ``spearman``)."""
    from scipy.stats import rankdata

    g, p = np.asarray(gold, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if len(g) != len(p) or len(g) < 3:
        raise AigcError(f"correlations need >= 3 paired scores, got {len(g)} and {len(p)}")

    def pearson(x, y):  # rows of (B, N) -> (B,)
        x = x - x.mean(-1, keepdims=True)
        y = y - y.mean(-1, keepdims=True)
        den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
        return np.where(den > 0, (x * y).sum(-1) / np.where(den > 0, den, 1), 0.0)

    rows = _boot_rows(len(g), n_boot, seed)
    out = {"pearson": float(pearson(g[None], p[None])[0]),
           "spearman": float(pearson(rankdata(g)[None], rankdata(p)[None])[0])}
    boots = pearson(g[rows], p[rows])
    out["pearson_low"], out["pearson_high"] = map(float, np.percentile(boots, [2.5, 97.5]))
    rg = rankdata(g[rows], axis=1)
    rp = rankdata(p[rows], axis=1)
    boots = pearson(rg, rp)
    out["spearman_low"], out["spearman_high"] = map(float, np.percentile(boots, [2.5, 97.5]))
    return out


def score_table(examples: list[Example], predictions: dict[str, list], labels: Sequence[str], *,
                reference: str | None = None, n_boot: int = N_BOOT, seed: int = 0
                ) -> dict[str, Any]:
    """Per-domain (and ``all``) metrics of several scorers on the same ``examples``.

    Args:
        examples: the labelled rows (one language).
        predictions: scorer name -> one :class:`~aigc.apps.sentiment.scorer.Sentiment` per row.
        labels: the label set macro-F1 runs over.
        reference: a scorer name; every other scorer gets its paired macro-F1 difference to it.

    Returns:
        ``{domain: {"rows": n, scorer: {"macro_f1": [point, low, high], "pearson": ...,
        "delta_vs_<reference>": [point, low, high]}}}``.
    """
    for name, preds in predictions.items():
        if len(preds) != len(examples):
            raise AigcError(f"scorer {name!r} gave {len(preds)} predictions for "
                            f"{len(examples)} rows")
    domains = sorted({e.domain for e in examples})
    out: dict[str, Any] = {}
    for domain in ([*domains, "all"] if len(domains) > 1 else domains):
        rows = [i for i, e in enumerate(examples) if domain == "all" or e.domain == domain]
        true = [examples[i].label for i in rows]
        entry: dict[str, Any] = {"rows": len(rows)}
        for name, preds in predictions.items():
            pred = [preds[i].label for i in rows]
            m: dict[str, Any] = {"macro_f1": list(macro_f1_ci(true, pred, labels,
                                                              n_boot=n_boot, seed=seed))}
            graded = [i for i in rows if examples[i].score is not None]
            if len(graded) >= 3:
                m.update(correlations([examples[i].score for i in graded],
                                      [preds[i].score for i in graded], n_boot=n_boot, seed=seed))
            if reference and name != reference:
                ref = [predictions[reference][i].label for i in rows]
                m[f"delta_vs_{reference}"] = list(paired_delta_ci(true, pred, ref, labels,
                                                                  n_boot=n_boot, seed=seed))
            entry[name] = m
        out[domain] = entry
    return out
