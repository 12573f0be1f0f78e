"""Image metrics that need no feature statistics: reconstruction quality (PSNR, SSIM, from
torchmetrics, not re-derived) and conditional accuracy (does asking for a "7" give a 7).

FID, KID, IS and precision/recall live in ``fid.py``, ``kid.py``, ``inception_score.py`` and
``manifold.py``; the feature networks they share in ``features.py``."""

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
        # sync_on_compute=False: under torchrun aigc shares out the work itself (rank 0 alone
        # measures); torchmetrics' own gather would wait for ranks that are not measuring.
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3),
                                         sync_on_compute=False)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False)
        # torchmetrics keeps float32 states by default; float64 makes the sums batch-independent.
        self.psnr.set_dtype(torch.float64)
        self.ssim.set_dtype(torch.float64)

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


class ConditionalAccuracy:
    """Share of class-conditional samples that the dataset's classifier assigns to the class
    they were asked for. ``update(logits (N, K), requested (N,))``; per-class accuracy too."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.correct = torch.zeros(self.num_classes, dtype=torch.float64)
        self.total = torch.zeros(self.num_classes, dtype=torch.float64)

    def update(self, logits: torch.Tensor, requested: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise AigcError(f"logits must be (N, {self.num_classes}), got {tuple(logits.shape)}")
        if requested.shape != logits.shape[:1]:
            raise AigcError(f"{logits.shape[0]} logits but {tuple(requested.shape)} labels")
        if not torch.isfinite(logits).all():
            raise AigcError("logits contain NaN or infinite values")
        if requested.numel() and not (0 <= int(requested.min()) and
                                      int(requested.max()) < self.num_classes):
            raise AigcError(f"requested labels must lie in [0, {self.num_classes - 1}]")
        hit = (logits.argmax(1).cpu() == requested.cpu()).double()
        self.correct += torch.zeros_like(self.correct).index_add_(0, requested.cpu(), hit)
        self.total += torch.bincount(requested.cpu(), minlength=self.num_classes).double()

    def compute(self) -> dict[str, float | list[float]]:
        if self.total.sum() == 0:
            raise AigcError("conditional accuracy computed before any update")
        per_class = torch.where(self.total > 0, self.correct / self.total.clamp(min=1),
                                torch.full_like(self.total, float("nan")))
        return {"accuracy": float(self.correct.sum() / self.total.sum()),
                "per_class": [round(float(v), 4) for v in per_class]}
