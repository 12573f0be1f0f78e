"""Image metrics. Reconstruction quality (PSNR, SSIM) comes from torchmetrics, not re-derived."""

from __future__ import annotations

import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from tqdm.auto import tqdm

from aigc.errors import AigcError


def check_images(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise AigcError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise AigcError(f"images must be (N, C, H, W), got shape {tuple(a.shape)}")


class ReconstructionMetrics:
    """PSNR (dB) and SSIM between reconstructions and originals, both in [0, 1].

    PSNR is averaged per image (``reduction="elementwise_mean"`` over per-image values), so the
    result does not depend on the batch size; SSIM uses torchmetrics' default 11x11 Gaussian window.
    """

    def __init__(self) -> None:
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    def reset(self) -> None:
        self.psnr.reset()
        self.ssim.reset()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        check_images(preds, target)
        preds, target = preds.double().cpu(), target.double().cpu()
        self.psnr.update(preds, target)
        self.ssim.update(preds, target)

    def compute(self) -> dict[str, float]:
        return {"psnr_db": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}


@torch.no_grad()
def reconstruction_quality(model, dataset, *, batch_size: int = 500, n: int | None = None,
                           progress: bool = True) -> dict[str, float]:
    """PSNR/SSIM of ``model.reconstruct`` over the first ``n`` images of a split."""
    total = len(dataset) if n is None else min(n, len(dataset))
    metric = ReconstructionMetrics()
    device = next(model.parameters()).device
    for start in tqdm(range(0, total, batch_size), desc="PSNR/SSIM", disable=not progress,
                      unit="batch"):
        x = dataset.get_batch(torch.arange(start, min(start + batch_size, total)))["image"]
        metric.update(model.reconstruct(x.to(device)).cpu(), x)
    return {**metric.compute(), "n": total}
