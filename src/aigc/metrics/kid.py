"""Kernel distance (KID; Bińkowski et al., 2018): the unbiased estimator of the squared MMD with
the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.

    MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i, y_j)
              - 2/m^2 sum_{i,j} k(x_i, y_j)

For each of ``subsets`` rounds, ``subset_size`` real and generated features are drawn without
replacement (real first, then generated, from one seeded generator: the same draws as
torchmetrics' KernelInceptionDistance under ``torch.manual_seed(seed)``). Reported: the mean and
the population standard deviation (``1/S``) over subsets, as torchmetrics does.

Subset size. The std describes how much the estimate moves between subsets; with ``subset_size``
equal to the number of samples every subset is the whole set (only permuted), so the std is 0 up
to rounding and says nothing. torchmetrics' default is 1000 and it refuses fewer samples; aigc's
evaluations default to :func:`default_subset_size` = ``min(1000, n // 2)``, so small-n runs still
draw distinct subsets. Cards record the size and count used.
"""

from __future__ import annotations

import torch

from aigc.errors import AigcError
from aigc.metrics.features import FeatureBank


def default_subset_size(n: int) -> int:
    """``min(1000, n // 2)`` (at least 2): torchmetrics' 1000 when there is room, else half the
    samples, so that subsets drawn without replacement differ and the std means something."""
    if n < 4:
        raise AigcError(f"KID needs at least 4 samples per set for subsets of 2, got {n}")
    return max(2, min(1000, n // 2))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0
                      ) -> torch.Tensor:
    """``(x y^T / d + coef) ** degree`` for ``x (n, d)``, ``y (m, d)``: an ``(n, m)`` matrix."""
    return (x @ y.T / x.shape[1] + coef) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD^2 between two equal-size samples ``x, y (m, d)`` (see module docstring)."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise AigcError(f"the unbiased MMD needs two samples of equal size >= 2, got {m} and "
                        f"{y.shape[0]}")
    k_xx = polynomial_kernel(x, x, degree, coef)
    k_yy = polynomial_kernel(y, y, degree, coef)
    k_xy = polynomial_kernel(x, y, degree, coef)
    off_diag = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return float(off_diag / (m * (m - 1)) - 2 * k_xy.sum() / m**2)


class KernelDistance:
    """KID over features: ``update(features, real=...)``, then ``compute() -> (mean, std)``.

    Args:
        subsets: number of random subsets.
        subset_size: samples per subset; both sets need at least this many.
        seed: seeds the subset draws, so the number is reproducible.
    """

    def __init__(self, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                 coef: float = 1.0, seed: int = 0) -> None:
        if subsets < 1 or subset_size < 2:
            raise AigcError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets}, "
                            f"{subset_size}")
        self.subsets, self.subset_size, self.degree, self.coef = subsets, subset_size, degree, coef
        self.seed = seed
        self.real, self.fake = FeatureBank(), FeatureBank()

    def reset(self, *, keep_real: bool = False) -> None:
        """Forget the generated set (and the real set unless ``keep_real``)."""
        self.fake.reset()
        if not keep_real:
            self.real.reset()

    def update(self, features: torch.Tensor, *, real: bool) -> None:
        (self.real if real else self.fake).update(features)

    def compute(self) -> tuple[float, float]:
        real, fake = self.real.tensor(), self.fake.tensor()
        for name, feats in (("real", real), ("generated", fake)):
            if feats.shape[0] < self.subset_size:
                raise AigcError(f"KID with subset_size={self.subset_size} needs at least that "
                                f"many {name} samples, got {feats.shape[0]}")
        if real.shape[1] != fake.shape[1]:
            raise AigcError(f"real features have {real.shape[1]} dimensions, generated "
                            f"{fake.shape[1]}")
        gen = torch.Generator().manual_seed(self.seed)
        scores = []
        for _ in range(self.subsets):
            r = real[torch.randperm(real.shape[0], generator=gen)[: self.subset_size]]
            f = fake[torch.randperm(fake.shape[0], generator=gen)[: self.subset_size]]
            scores.append(mmd2_unbiased(r, f, self.degree, self.coef))
        values = torch.tensor(scores, dtype=torch.float64)
        return float(values.mean()), float(values.std(correction=0))
