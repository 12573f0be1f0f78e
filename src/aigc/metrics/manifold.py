"""k-NN manifold metrics between real and generated features.

* precision / recall (Kynkäänniemi et al., 2019): the real manifold is the union of balls around
  each real feature with radius = distance to its k-th nearest real neighbour. Precision = share of
  generated samples inside the real manifold (fidelity); recall = share of real samples inside the
  generated manifold (diversity).
* density / coverage (Naeem et al., 2020): density = (1 / kM) sum_j #{real balls containing
  generated j} (can exceed 1); coverage = share of real balls that contain at least one generated
  sample. Both use only the real balls, so they are robust to generated outliers.

"Inside" means distance <= radius. Distances are Euclidean, in float64, in chunks of rows.
"""

from __future__ import annotations

import torch

from aigc.errors import AigcError
from aigc.metrics.features import FeatureBank, check_features

_CHUNK = 2048


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(len(a), len(b))`` via ``|a|^2 + |b|^2 - 2 a.b`` (float64)."""
    sq = a.square().sum(1, keepdim=True) + b.square().sum(1) - 2.0 * a @ b.T
    return sq.clamp(min=0).sqrt()


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row: ``(N,)``."""
    out = []
    for start in range(0, x.shape[0], _CHUNK):
        d = _distances(x[start:start + _CHUNK], x)  # (chunk, N), includes self at ~0
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1 skips the point itself
    return torch.cat(out)


def _ball_counts(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor
                 ) -> torch.Tensor:
    """For each query, how many balls ``(centres, radii)`` contain it: ``(Q,)`` int64."""
    out = []
    for start in range(0, queries.shape[0], _CHUNK):
        d = _distances(queries[start:start + _CHUNK], centres)  # (chunk, C)
        out.append((d <= radii[None, :]).sum(1))
    return torch.cat(out)


def _covered(centres: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """For each ball, whether any query lies inside: ``(C,)`` bool."""
    out = []
    for start in range(0, centres.shape[0], _CHUNK):
        d = _distances(centres[start:start + _CHUNK], queries)  # (chunk, Q)
        out.append(d.min(1).values <= radii[start:start + _CHUNK])
    return torch.cat(out)


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5,
                                      real_radii: torch.Tensor | None = None) -> dict[str, float]:
    """All four manifold metrics for feature sets ``real (N, D)``, ``fake (M, D)``.
    ``real_radii``: ``knn_radii(real, k)`` when the caller already has them (one real set
    measured against several generated sets)."""
    real, fake = check_features(real, "real features"), check_features(fake, "generated features")
    for name, x in (("real", real), ("generated", fake)):
        if x.shape[0] <= k:
            raise AigcError(f"k-NN metrics with k={k} need more than {k} {name} samples, "
                            f"got {x.shape[0]}")
    if real.shape[1] != fake.shape[1]:
        raise AigcError(f"real features have {real.shape[1]} dimensions, generated {fake.shape[1]}")
    r_real = knn_radii(real, k) if real_radii is None else real_radii
    r_fake = knn_radii(fake, k)
    in_real = _ball_counts(fake, real, r_real)  # (M,) real balls around each generated sample
    return {
        "precision": float((in_real > 0).double().mean()),
        "recall": float((_ball_counts(real, fake, r_fake) > 0).double().mean()),
        "density": float(in_real.double().sum() / (k * fake.shape[0])),
        "coverage": float(_covered(real, r_real, fake).double().mean()),
    }


class PrecisionRecall:
    """Precision, recall, density and coverage; ``update(features, real=...)`` then ``compute``."""

    def __init__(self, k: int = 5) -> None:
        if k < 1:
            raise AigcError(f"k must be >= 1, got {k}")
        self.k = k
        self.real, self.fake = FeatureBank(), FeatureBank()

    def reset(self, *, keep_real: bool = False) -> None:
        """Forget the generated set (and the real set unless ``keep_real``)."""
        self.fake.reset()
        if not keep_real:
            self.real.reset()

    def update(self, features: torch.Tensor, *, real: bool) -> None:
        (self.real if real else self.fake).update(features)

    def compute(self) -> dict[str, float]:
        if not len(self.real) or not len(self.fake):
            raise AigcError("precision/recall need both real and generated features")
        return precision_recall_density_coverage(self.real.tensor(), self.fake.tensor(), self.k)
