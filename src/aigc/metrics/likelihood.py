"""Likelihood-based metrics for models that define a bound on log p(x).

Protocol for the VAE's test negative ELBO (the standard "dynamically binarised MNIST" one): every
test image is binarised once as ``x ~ Bernoulli(pixel intensity)`` with a fixed seed, and the
-ELBO is estimated with one posterior sample per image, in nats, averaged over the split.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from aigc.errors import AigcError


class MeanMetric:
    """Running mean of per-example values, in float64 (independent of batch size)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = 0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().to(torch.float64).flatten()
        if not torch.isfinite(values).all():
            raise AigcError("non-finite values passed to a metric")
        self.total += values.sum().cpu()
        self.count += values.numel()

    def compute(self) -> float:
        if self.count == 0:
            raise AigcError("metric computed before any update")
        return float(self.total / self.count)


@torch.no_grad()
def vae_negative_elbo(model, dataset, *, seed: int = 0, batch_size: int = 500,
                      n: int | None = None, progress: bool = True) -> dict[str, float]:
    """Test -ELBO, reconstruction term and KL in nats per image (see module protocol).

    Args:
        model: an :class:`aigc.models.vae.VAE` with the Bernoulli likelihood.
        dataset: an image split (``get_batch``).
        seed: fixes the binarisation and the posterior samples.
        n: evaluate the first ``n`` images (default all).
    """
    if model.cfg.likelihood != "bernoulli":
        raise AigcError("the nats protocol needs a VAE with likelihood='bernoulli'")
    total = len(dataset) if n is None else min(n, len(dataset))
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    nelbo, rec, kl = MeanMetric(), MeanMetric(), MeanMetric()
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for start in tqdm(range(0, total, batch_size), desc="-ELBO", disable=not progress,
                          unit="batch"):
            x = dataset.get_batch(torch.arange(start, min(start + batch_size, total)))["image"]
            x = torch.bernoulli(x, generator=gen).to(device)
            a, b, c = model.negative_elbo(x)
            nelbo.update(a)
            rec.update(b)
            kl.update(c)
    return {"negative_elbo_nats": nelbo.compute(), "reconstruction_nats": rec.compute(),
            "kl_nats": kl.compute(), "n": total}
