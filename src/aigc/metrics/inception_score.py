"""The Inception Score formula (Salimans et al., 2016) on any classifier's logits.

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x)   (within each split)

With aigc's per-dataset classifier this is an "IS-style" score: high when samples are confidently
classified and spread over the classes; its maximum is the number of classes. The logits are cut
into ``splits`` consecutive chunks (after a seeded shuffle, the same as torchmetrics'
InceptionScore under ``torch.manual_seed(seed)``); mean and sample std (``1/(S-1)``) over splits.
"""

from __future__ import annotations

import torch

from aigc.errors import AigcError
from aigc.metrics.features import check_features


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int | None = 0
                    ) -> tuple[float, float]:
    """``(mean, std)`` of the IS over ``splits`` chunks of ``logits (N, K)``."""
    logits = check_features(logits, "logits")
    if logits.shape[0] < 2 * splits:
        raise AigcError(f"IS with {splits} splits needs at least {2 * splits} samples, "
                        f"got {logits.shape[0]}")
    if seed is not None:
        logits = logits[torch.randperm(logits.shape[0], generator=torch.Generator().manual_seed(seed))]
    scores = []
    for chunk in logits.chunk(splits, dim=0):
        log_p = chunk.log_softmax(dim=1)  # log p(y|x), (n, K)
        log_marginal = log_p.exp().mean(0, keepdim=True).log()  # log p(y), (1, K)
        kl = (log_p.exp() * (log_p - log_marginal)).sum(1)  # (n,)
        scores.append(kl.mean().exp())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std()) if splits > 1 else 0.0


class InceptionScore:
    """Accumulate classifier logits of generated images; ``compute() -> (mean, std)``."""

    def __init__(self, splits: int = 10, seed: int | None = 0) -> None:
        self.splits, self.seed = splits, seed
        self.reset()

    def reset(self) -> None:
        self.logits: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor) -> None:
        self.logits.append(check_features(logits, "logits"))

    def compute(self) -> tuple[float, float]:
        if not self.logits:
            raise AigcError("IS computed before any update")
        return inception_score(torch.cat(self.logits), self.splits, self.seed)
