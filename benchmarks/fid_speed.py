"""FID statistics over 10,000 images: aigc vs torchmetrics' FrechetInceptionDistance, with the
same feature extractor (aigc's shipped MNIST classifier), in the same process.

    python benchmarks/fid_speed.py [--n 10000] [--batch-size 500] [--repeats 3]

Prints the wall time of each (feature extraction + running statistics + the distance), the
ratio torchmetrics / aigc, and both FID values (they should agree to ~1e-6 relative).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from aigc.data.images import load_images
from aigc.metrics.features import load_extractor
from aigc.metrics.fid import FrechetDistance


class FeaturesOnly(nn.Module):
    """torchmetrics' interface: images -> (B, D) features."""

    def __init__(self, network: nn.Module, dim: int):
        super().__init__()
        self.network, self.num_features = network, dim

    def forward(self, x):
        return self.network.features_and_logits(x)[0]


def run_aigc(extractor, real, fake, batch_size):
    fid = FrechetDistance()
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch_size):
            fid.update(extractor.extract(images[start:start + batch_size])["features"],
                       real=is_real)
    return fid.compute()


def run_torchmetrics(module, real, fake, batch_size):
    fid = FrechetInceptionDistance(feature=module, normalize=True)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for start in range(0, len(images), batch_size):
                fid.update(images[start:start + batch_size], real=is_real)
        return float(fid.compute())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    extractor = load_extractor("mnist")
    module = FeaturesOnly(extractor.network, extractor.num_features).eval()
    real = load_images("mnist", "test").get_batch(torch.arange(args.n))["image"]
    fake = load_images("mnist", "train").get_batch(torch.arange(args.n))["image"]
    print(f"n={args.n} real (test) vs n={args.n} train images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, extractor {extractor.name}")
    times = {"aigc": [], "torchmetrics": []}
    values = {}
    for _ in range(args.repeats):
        for name, fn, arg in (("aigc", run_aigc, extractor),
                              ("torchmetrics", run_torchmetrics, module)):
            t0 = time.perf_counter()
            values[name] = fn(arg, real, fake, args.batch_size)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    for name in times:
        print(f"{name:>13}: {best[name]:.2f} s (best of {args.repeats}), FID {values[name]:.6f}")
    print(f"ratio torchmetrics / aigc: {best['torchmetrics'] / best['aigc']:.2f}x "
          f"(>1 means aigc is faster)")
    rel = abs(values["aigc"] - values["torchmetrics"]) / abs(values["torchmetrics"])
    print(f"relative difference of the FID values: {rel:.2e}")


if __name__ == "__main__":
    main()
