"""Fréchet distance between Gaussians fitted to two feature sets (FID; Heusel et al., 2017).

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})

Running statistics are kept in float64 and merged batch by batch with Chan et al.'s parallel
update of the mean and the centred scatter matrix, so the result does not depend on the batch
size. ``Tr (S_r S_g)^{1/2}`` is computed as ``Tr (S_r^{1/2} S_g S_r^{1/2})^{1/2}``, a symmetric
PSD matrix, with ``eigvalsh`` (stable, real). Called FID whatever the extractor: the metric card
names the extractor, and numbers from different extractors are never compared.
"""

from __future__ import annotations

import torch

from aigc.errors import AigcError
from aigc.metrics.features import check_features


class GaussianStatistics:
    """Running mean and covariance of feature vectors in float64 (Chan's parallel update)."""

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None  # (D,)
        self.scatter: torch.Tensor | None = None  # (D, D): sum of (x - mean)(x - mean)^T

    def update(self, features: torch.Tensor) -> None:
        x = check_features(features)
        if self.dim is not None and x.shape[1] != self.dim:
            raise AigcError(f"features have {x.shape[1]} dimensions, expected {self.dim}")
        self.dim = x.shape[1]
        if x.shape[0] == 0:
            return
        m = x.shape[0]
        batch_mean = x.mean(0)
        centred = x - batch_mean
        batch_scatter = centred.T @ centred
        if self.n == 0:
            self.n, self.mean, self.scatter = m, batch_mean, batch_scatter
            return
        delta = batch_mean - self.mean
        total = self.n + m
        self.scatter = self.scatter + batch_scatter + torch.outer(delta, delta) * (self.n * m / total)
        self.mean = self.mean + delta * (m / total)
        self.n = total

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (D,), covariance (D, D))`` with the unbiased ``1/(n-1)`` covariance."""
        if self.n < 2:
            raise AigcError(f"a covariance needs at least 2 samples, got {self.n}")
        return self.mean.clone(), self.scatter / (self.n - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(matrix)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                     sigma2: torch.Tensor) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise AigcError(f"statistics of different dimensions: {tuple(mu1.shape)} vs "
                        f"{tuple(mu2.shape)}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * eig.sqrt().sum()
    return float(value)


class FrechetDistance:
    """FID over features: ``update(features, real=...)`` for both sets, then ``compute()``.

    Example:
        >>> fid = FrechetDistance()
        >>> fid.update(extractor.extract(real)["features"], real=True)
        >>> fid.update(extractor.extract(fake)["features"], real=False)
        >>> fid.compute()
    """

    def __init__(self) -> None:
        self.real = GaussianStatistics()
        self.fake = GaussianStatistics()

    def reset(self, *, keep_real: bool = False) -> None:
        """Forget the generated set (and the real set unless ``keep_real``)."""
        self.fake.reset()
        if not keep_real:
            self.real.reset()

    def update(self, features: torch.Tensor, *, real: bool) -> None:
        (self.real if real else self.fake).update(features)

    def compute(self) -> float:
        for name, stats in (("real", self.real), ("generated", self.fake)):
            if stats.n < 2:
                raise AigcError(f"FID needs at least 2 {name} samples, got {stats.n}")
        if self.real.dim != self.fake.dim:
            raise AigcError(f"real features have {self.real.dim} dimensions, generated "
                            f"{self.fake.dim}: were they made by the same extractor?")
        return frechet_distance(*self.real.compute(), *self.fake.compute())
