"""Precision/recall and density/coverage: definitions checked against plain loops."""

import pytest
import torch

from aigc.errors import AigcError
from aigc.metrics.manifold import PrecisionRecall, precision_recall_density_coverage


def _loops(real, fake, k):
    """The papers' definitions written out point by point (slow, obviously right)."""
    def radius(x, i):
        d = sorted(float((x[i] - x[j]).norm()) for j in range(len(x)) if j != i)
        return d[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    rf = [radius(fake, i) for i in range(len(fake))]
    inside = [[float((f - r).norm()) <= rr[i] for i, r in enumerate(real)] for f in fake]
    precision = sum(any(row) for row in inside) / len(fake)
    recall = sum(any(float((r - f).norm()) <= rf[j] for j, f in enumerate(fake))
                 for r in real) / len(real)
    density = sum(sum(row) for row in inside) / (k * len(fake))
    coverage = sum(any(inside[j][i] for j in range(len(fake))) for i in range(len(real))) / len(real)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_matches_definitions():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(30, 3, generator=g, dtype=torch.float64) * 1.5 + 0.5
    got = precision_recall_density_coverage(real, fake, k=3)
    want = _loops(real, fake, 3)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1
    assert got == pytest.approx(PINNED, abs=1e-12)


PINNED = {"precision": 2 / 3, "recall": 1.0, "density": 0.4666666666666667, "coverage": 0.5}


def test_identical_sets_and_disjoint_sets():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    same = precision_recall_density_coverage(x, x.clone(), k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = precision_recall_density_coverage(x, x + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_batch_independent_object_and_errors():
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(60, 3, generator=g), torch.randn(50, 3, generator=g)
    metric = PrecisionRecall(k=4)
    for chunk in real.split(7):
        metric.update(chunk, real=True)
    metric.update(fake, real=False)
    assert metric.compute() == precision_recall_density_coverage(real, fake, k=4)
    with pytest.raises(AigcError, match="more than 5 generated"):
        precision_recall_density_coverage(real, fake[:5], k=5)
