"""Reconstruction PSNR of an ``autoencoder-kl`` checkpoint on an image split (default: emoji
test), and its encode+decode speed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/autoencoder_kl_psnr.py RUN [--data emoji]

PSNR is per image, ``10 log10(1 / MSE)`` on [0, 1] pixels at the posterior mean, averaged over
the split; the identity ceiling is infinite, and a decoder that outputs each image's mean colour
is printed beside it as a floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_line  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="emoji")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    from aigc.data.images import load_images
    from aigc.models import model_from_checkpoint
    from aigc.models.autoencoder_kl import psnr

    print(machine_line())
    model, ckpt = model_from_checkpoint(args.checkpoint)
    if ckpt.family != "autoencoder-kl":
        raise SystemExit(f"{args.checkpoint} is a {ckpt.family} checkpoint, not autoencoder-kl")
    data = load_images(args.data, args.split)
    values, floor = [], []
    start = time.perf_counter()
    for i in range(0, len(data), args.batch_size):
        x = data.get_batch(torch.arange(i, min(i + args.batch_size, len(data))))["image"]
        values.append(psnr(model.reconstruct(x), x))
        floor.append(psnr(x.mean((2, 3), keepdim=True).expand_as(x), x))
    seconds = time.perf_counter() - start
    values, floor = torch.cat(values), torch.cat(floor)
    print(json.dumps({
        "checkpoint": str(ckpt.path), "step": ckpt.step, "data": args.data, "split": args.split,
        "n": len(values), "latent": [model.cfg.latent_channels, model.cfg.latent_size,
                                     model.cfg.latent_size],
        "psnr_db_mean": round(float(values.mean()), 3),
        "psnr_db_median": round(float(values.median()), 3),
        "mean_colour_floor_psnr_db": round(float(floor.mean()), 3),
        "reconstruct_images_per_s": round(len(values) / seconds, 1)}, indent=1))


if __name__ == "__main__":
    main()
