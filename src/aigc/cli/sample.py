"""``aigc sample`` (draw from a model) and ``aigc reconstruct`` (encode and decode real images)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from aigc.errors import AigcError

MAX_N = 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from a trained model into a PNG grid",
                       description="Draw N samples from a checkpoint (a run folder, a checkpoint "
                       "folder or a model.safetensors). The PNG embeds its provenance record; "
                       "`aigc info FILE.png` prints it.")
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=64, help=f"number of samples, 1..{MAX_N} (default 64)")
    p.add_argument("--out", default="out/samples.png", help="PNG path (default out/samples.png)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the prior noise, 0..2 (default 1)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.set_defaults(func=run_sample)

    r = sub.add_parser("reconstruct", help="encode and decode real images (VAE)")
    r.add_argument("checkpoint")
    r.add_argument("--data", required=True, help="dataset (e.g. mnist)")
    r.add_argument("--split", default="test", choices=["train", "val", "test"])
    r.add_argument("--n", type=int, default=32, help="images, 1..512 (default 32)")
    r.add_argument("--out", default="out/reconstructions.png")
    r.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    r.set_defaults(func=run_reconstruct)


def provenance(ckpt, **extra) -> dict:
    from aigc.checkpoints import library_versions

    return {"model_sha256": ckpt.sha256, "family": ckpt.family, "step": ckpt.step,
            "data": ckpt.meta.get("data"), "versions": library_versions(), **extra}


def run_sample(args: argparse.Namespace) -> int:
    from aigc.media import save_grid
    from aigc.models import model_from_checkpoint

    if not 1 <= args.n <= MAX_N:
        raise AigcError(f"--n must be between 1 and {MAX_N}, got {args.n}")
    if not 0 <= args.temperature <= 2:
        raise AigcError(f"--temperature must be between 0 and 2, got {args.temperature}")
    model, ckpt = model_from_checkpoint(args.checkpoint, use_ema=not args.raw)
    if not hasattr(model, "sample"):
        raise AigcError(f"{ckpt.path}: a {ckpt.family!r} model does not sample images")
    gen = torch.Generator().manual_seed(args.seed)
    images = model.sample(args.n, generator=gen, temperature=args.temperature)
    record = provenance(ckpt, kind="sample", seed=args.seed, n=args.n,
                        temperature=args.temperature, ema=not args.raw)
    out = save_grid(Path(args.out), images, record=record)
    print(f"{args.n} samples: {out}")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    from aigc.data.images import load_images
    from aigc.media import save_grid
    from aigc.models import model_from_checkpoint

    if not 1 <= args.n <= 512:
        raise AigcError(f"--n must be between 1 and 512, got {args.n}")
    model, ckpt = model_from_checkpoint(args.checkpoint, use_ema=not args.raw)
    if not hasattr(model, "reconstruct"):
        raise AigcError(f"{ckpt.path}: a {ckpt.family!r} model cannot reconstruct images")
    data = load_images(args.data, args.split)
    if (data.channels, data.image_size) != (model.cfg.image_channels, model.cfg.image_size):
        raise AigcError(
            f"{args.data} images are {data.channels}x{data.image_size}x{data.image_size} but the "
            f"model expects {model.cfg.image_channels}x{model.cfg.image_size}x{model.cfg.image_size}"
        )
    x = data.get_batch(torch.arange(min(args.n, len(data))))["image"]
    recon = model.reconstruct(x)
    # Rows alternate: originals, then their reconstructions underneath.
    nrow = 8
    rows = []
    for start in range(0, len(x), nrow):
        rows += [x[start : start + nrow], recon[start : start + nrow]]
    out = save_grid(Path(args.out), torch.cat(rows), nrow=nrow,
                    record=provenance(ckpt, kind="reconstruction", split=args.split, n=len(x)))
    print(f"{len(x)} originals (odd rows) and reconstructions (even rows): {out}")
    return 0
