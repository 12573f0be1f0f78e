"""PSNR/SSIM against torchmetrics' functional forms, batch independence, conditional accuracy."""

import pytest
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from aigc.errors import AigcError
from aigc.metrics.image import ConditionalAccuracy, ReconstructionMetrics


def _pair():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(12, 1, 16, 16, generator=g)
    preds = (target + 0.1 * torch.randn(12, 1, 16, 16, generator=g)).clamp(0, 1)
    return preds, target


def test_psnr_ssim_equal_torchmetrics_in_any_batching():
    preds, target = _pair()
    psnr_per_image = torch.stack([peak_signal_noise_ratio(p[None].double(), t[None].double(),
                                                          data_range=1.0)
                                  for p, t in zip(preds, target, strict=True)])
    want_ssim = float(structural_similarity_index_measure(preds.double(), target.double(),
                                                          data_range=1.0))
    results = []
    for batch in (1, 5, 12):
        m = ReconstructionMetrics()
        for i in range(0, 12, batch):
            m.update(preds[i:i + batch], target[i:i + batch])
        results.append(m.compute())
    for r in results:
        assert r["psnr_db"] == pytest.approx(float(psnr_per_image.mean()), rel=1e-12)
        assert r["ssim"] == pytest.approx(want_ssim, rel=1e-12)
    assert (results[0]["psnr_db"], results[0]["ssim"]) == pytest.approx(PINNED, rel=1e-7)


PINNED = (20.624562248496662, 0.94464397783008)


def test_reconstruction_metrics_reject_mismatched_shapes():
    m = ReconstructionMetrics()
    with pytest.raises(AigcError, match="shapes differ"):
        m.update(torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8))


def test_conditional_accuracy():
    acc = ConditionalAccuracy(num_classes=3)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    acc.update(logits[:2], torch.tensor([0, 1]))
    acc.update(logits[2:], torch.tensor([1, 2]))
    out = acc.compute()
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["per_class"] == [1.0, 0.5, 1.0]
    with pytest.raises(AigcError, match=r"\[0, 2\]"):
        acc.update(logits[:1], torch.tensor([3]))
    with pytest.raises(AigcError, match=r"\(N, 3\)"):
        acc.update(torch.zeros(2, 4), torch.tensor([0, 1]))
