"""``aigc eval CHECKPOINT --data NAME``: measure a model on a held-out split; JSON with protocol."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aigc.errors import AigcError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a trained model on held-out data",
                       description="Evaluate a checkpoint. For a VAE: test negative ELBO in nats "
                       "(dynamically binarised, fixed seed) and reconstruction PSNR/SSIM "
                       "(torchmetrics). Writes the values with their protocol as JSON.")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="dataset (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--n", type=int, help="evaluate the first N images (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", help="JSON path (default: print only)")
    p.set_defaults(func=run)


def evaluate_checkpoint(path, *, data: str | None = None, split: str = "test", n: int | None = None,
                        seed: int = 0, use_ema: bool = True, progress: bool = True) -> dict:
    from aigc.checkpoints import library_versions
    from aigc.data.images import load_images
    from aigc.metrics.image import reconstruction_quality
    from aigc.metrics.likelihood import vae_negative_elbo
    from aigc.models import model_from_checkpoint

    if n is not None and n < 1:
        raise AigcError(f"--n must be >= 1, got {n}")
    model, ckpt = model_from_checkpoint(path, use_ema=use_ema)
    data = data or ckpt.meta.get("data")
    if not data:
        raise AigcError(f"{ckpt.path} does not record its dataset; pass --data")
    if ckpt.family != "vae":
        raise AigcError(f"aigc eval does not yet know the {ckpt.family!r} family")
    ds = load_images(data, split)
    if (ds.channels, ds.image_size) != (model.cfg.image_channels, model.cfg.image_size):
        raise AigcError(f"{data} images are {ds.channels}x{ds.image_size}x{ds.image_size}; the "
                        f"model expects {model.cfg.image_channels}x{model.cfg.image_size}x"
                        f"{model.cfg.image_size}")
    values = {}
    if model.cfg.likelihood == "bernoulli":
        values.update(vae_negative_elbo(model, ds, seed=seed, n=n, progress=progress))
    values.update({k: v for k, v in reconstruction_quality(model, ds, n=n, progress=progress)
                   .items() if k != "n"})
    return {
        "values": values,
        "protocol": {
            "checkpoint": str(ckpt.path), "checkpoint_sha256": ckpt.sha256, "family": ckpt.family,
            "step": ckpt.step, "data": data, "split": split, "n": values.get("n", n or len(ds)),
            "seed": seed, "ema": bool(use_ema and ckpt.ema_weights is not None),
            "negative_elbo": "dynamic binarisation x~Bernoulli(pixel), 1 posterior sample, nats/image",
            "psnr_ssim": "torchmetrics PSNR (per-image mean, data_range 1) and SSIM (11x11 gaussian)",
            "versions": library_versions(),
        },
    }


def run(args: argparse.Namespace) -> int:
    report = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, n=args.n,
                                 seed=args.seed, use_ema=not args.raw)
    for key, value in report["values"].items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"metrics and protocol: {out}")
    return 0
