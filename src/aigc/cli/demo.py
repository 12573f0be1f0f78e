"""``aigc demo``: the main job end to end — data -> train -> sample -> evaluate — in a few minutes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small VAE on MNIST, then sample, reconstruct and "
                       "evaluate it; everything lands in out/demo",
                       description="The whole chain on one small model: MNIST -> VAE training "
                       "(sized to the time budget) -> samples, reconstructions, interpolations -> "
                       "test negative ELBO, PSNR and SSIM. A finished run is reused unless "
                       "--retrain is given.")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget (default 4)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--retrain", action="store_true", help="train again even if a run exists")
    p.set_defaults(func=run)


def _measure_rate(train, steps: int = 15) -> float:
    """Training steps per second of the demo VAE on this machine (a throwaway model)."""
    from aigc.models.vae import VAE, VAEConfig

    model = VAE(VAEConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = train.get_batch(torch.arange(128))
    start = None
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    from aigc.checkpoints import latest_checkpoint_dir
    from aigc.cli import main as aigc

    out = Path(args.out)
    run_dir = out / "run"
    done = latest_checkpoint_dir(run_dir) is not None and (out / "metrics.json").exists()
    if args.retrain and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
        done = False
    if not done:
        if latest_checkpoint_dir(run_dir) is not None:  # an interrupted demo: continue it
            code = aigc(["train", "vae", "--out", str(run_dir), "--resume"])
        else:
            from aigc.data.images import load_images

            rate = _measure_rate(load_images("mnist", "train"))
            steps = max(200, int(rate * args.minutes * 60 * 0.85))
            print(f"demo: {rate:.1f} steps/s here -> {steps} steps of batch 128 "
                  f"(~{steps * 128 / 55000:.1f} epochs) in ~{args.minutes:g} min")
            code = aigc([
                "train", "vae", "--data", "mnist", "--out", str(run_dir), "--steps", str(steps),
                "--eval-every", str(max(100, steps // 10)), "--sample-every",
                str(max(100, steps // 5)), "--ckpt-every", str(max(100, steps // 5)),
                "--time-limit-s", str(args.minutes * 60 * 1.5),
            ])
        if code:
            return code
    steps = [
        ["sample", str(run_dir), "--n", "64", "--out", str(out / "samples.png")],
        ["reconstruct", str(run_dir), "--data", "mnist", "--n", "32",
         "--out", str(out / "reconstructions.png")],
        ["eval", str(run_dir), "--data", "mnist", "--out", str(out / "metrics.json")],
    ]
    for argv in steps:
        code = aigc(argv)
        if code:
            return code
    _interpolations(run_dir, out / "interpolations.png")
    metrics = json.loads((out / "metrics.json").read_text())["values"]
    print("\naigc demo finished. Look at:")
    print(f"  {out / 'samples.png'}          64 samples from the prior")
    print(f"  {out / 'reconstructions.png'}  test images (odd rows) and reconstructions")
    print(f"  {out / 'interpolations.png'}   latent walks between pairs of test images")
    print(f"  {run_dir / 'samples'}/           sample grids during training")
    print(f"  {out / 'metrics.json'}         test -ELBO {metrics['negative_elbo_nats']:.1f} nats, "
          f"PSNR {metrics['psnr_db']:.1f} dB, SSIM {metrics['ssim']:.3f}")
    print(f"  tensorboard --logdir {run_dir / 'tb'}")
    return 0


def _interpolations(run_dir: Path, path: Path) -> None:
    """Eight rows, each a straight line in latent space between two test images."""
    from aigc.cli.sample import provenance
    from aigc.data.images import load_images
    from aigc.media import save_grid
    from aigc.models import model_from_checkpoint

    model, ckpt = model_from_checkpoint(run_dir)
    test = load_images("mnist", "test")
    x = test.get_batch(torch.arange(16))["image"]
    rows = [model.interpolate(x[2 * i], x[2 * i + 1], steps=10) for i in range(8)]
    save_grid(path, torch.cat(rows), nrow=10, record=provenance(ckpt, kind="interpolation"))
