"""FID against the number of sampler steps, for DDPM, DDIM and DPM-Solver++(2M) on one model.

Every row samples the same ``--n`` images: the same initial noise (one seed), the same class
labels (cycling over the classes), the same guidance; only the sampler and its step count change.
FID is computed with the shipped classifier features of the model's dataset (see
``aigc.metrics.features``) against the statistics of the whole test split (10,000 images); the
row "real (train, n)" is the FID of ``--n`` real training images against the same reference, the
floor that sampling noise alone gives at this n. Rows are printed and written to ``--out`` as
they finish, cheapest first, so an interrupted run keeps what it measured.

    python benchmarks/diffusion_steps_fid.py starter:diffusion-mnist --n 128 --guidance 2 \\
        --out benchmarks/results/diffusion_steps_fid-mnist-n128-g2.json

Compare samplers at the same guidance: the ODE samplers (DDIM eta 0, DPM-Solver++) need some
guidance to match the stochastic ones on our starters (see the README's steps-against-FID tables).

Cost: one network evaluation per image per step with ``--guidance 1`` (two with guidance), so
the 1000-step DDPM row alone is ``1000 x n`` image evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="diffusion checkpoint, run folder or starter:NAME")
    ap.add_argument("--n", type=int, default=256, help="images per row (default 256)")
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="classifier-free guidance (default 1: the plain conditional model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rows", default="dpm-solver++:10,dpm-solver++:20,ddim:10,ddim:20,"
                    "dpm-solver++:50,ddim:50,ddpm:20,dpm-solver++:100,ddim:100,ddpm:100,ddpm:1000",
                    help="sampler:steps, comma separated, in the order they run; "
                    "ddim-eta1 is DDIM with eta=1 (stochastic)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="JSON file, rewritten after every row")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from aigc.data.images import load_images
    from aigc.metrics.features import load_extractor
    from aigc.metrics.fid import FrechetDistance
    from aigc.models import model_from_checkpoint
    from aigc.registry import resolve_model

    model, ckpt = model_from_checkpoint(resolve_model(args.checkpoint))
    if ckpt.family != "diffusion":
        raise SystemExit(f"{ckpt.path} is a {ckpt.family} model, not diffusion")
    data = ckpt.meta["data"]
    extractor = load_extractor(data)
    extractor.check_dataset(data)

    def feats(images: torch.Tensor) -> torch.Tensor:
        return extractor.extract(images)["features"]

    test = load_images(data, "test")
    reference = FrechetDistance()
    for start in range(0, len(test), 1000):
        idx = torch.arange(start, min(start + 1000, len(test)))
        reference.update(feats(test.get_batch(idx)["image"]), real=True)

    def fid_of(images: torch.Tensor) -> float:
        reference.reset(keep_real=True)
        reference.update(feats(images), real=False)
        return reference.compute()

    result = {
        "checkpoint": str(ckpt.path), "model_sha256": ckpt.sha256, "data": data,
        "extractor": extractor.describe(), "reference": f"{data} test split, {len(test)} images",
        "n": args.n, "guidance": args.guidance, "seed": args.seed,
        "labels": "cycling 0..K-1", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(),
        "load_average_at_start": os.getloadavg()[0], "rows": [],
    }

    def write() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))

    train = load_images(data, "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    floor = fid_of(train.get_batch(pick)["image"])
    result["rows"].append({"sampler": "real (train)", "steps": 0, "fid": round(floor, 4)})
    print(f"{'sampler':>14} {'steps':>5} {'FID':>9} {'seconds':>8}")
    print(f"{'real (train)':>14} {'-':>5} {floor:9.3f} {'-':>8}")
    write()

    labels = torch.arange(args.n) % max(1, model.cfg.num_classes)
    for spec in args.rows.split(","):
        sampler, steps = spec.split(":")
        name, eta = sampler, 0.0
        if sampler.startswith("ddim-eta"):
            sampler, eta = "ddim", float(sampler[len("ddim-eta"):])
        t0 = time.perf_counter()
        images = []
        # One generator for the whole row: every row starts from the same noise.
        gen = torch.Generator().manual_seed(args.seed)
        for start in range(0, args.n, args.batch):
            lab = labels[start:start + args.batch] if model.cfg.num_classes else None
            images.append(model.sample(len(labels[start:start + args.batch]), generator=gen,
                                       labels=lab, sampler=sampler, steps=int(steps),
                                       guidance=args.guidance, eta=eta))
        seconds = time.perf_counter() - t0
        fid = fid_of(torch.cat(images))
        result["rows"].append({"sampler": name, "steps": int(steps), "fid": round(fid, 4),
                               "seconds": round(seconds, 1)})
        print(f"{name:>14} {steps:>5} {fid:9.3f} {seconds:8.1f}", flush=True)
        write()
    ddpm = [r for r in result["rows"] if r["sampler"] == "ddpm" and r["steps"] == 1000]
    dpm = [r for r in result["rows"] if r["sampler"] == "dpm-solver++" and r["steps"] == 20]
    if ddpm and dpm:
        ratio = dpm[0]["fid"] / ddpm[0]["fid"]
        result["dpm20_over_ddpm1000"] = round(ratio, 4)
        print(f"DPM-Solver++ 20 steps / DDPM 1000 steps FID: {ratio:.3f} (target <= 1.10)")
        write()


if __name__ == "__main__":
    main()
