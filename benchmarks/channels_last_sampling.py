"""Image sampling with the UNet in channels-last memory format against NCHW, and on aigc's
native UNet kernels against ATen's.

The studio and `aigc sample` draw diffusion models in channels-last (since 2026-11-30), and
there the 3x3 convolutions and GroupNorm + SiLU take aigc's native kernels where the machine
measured them faster (aigc.models.native, `aigc kernels`). This times 32 images of a starter
(20 steps, DPM-Solver++, one generator seed) three ways in alternating rounds (CPU time,
median): NCHW (ATen's kernels), channels-last on ATen's kernels, channels-last on the native
kernels; and counts the 8-bit pixel levels that differ from NCHW, since a record's replay must
write the same bytes (records carry memory_format, conv_route and groupnorm_route).

    OMP_NUM_THREADS=1 python benchmarks/channels_last_sampling.py [--model starter:diffusion-mnist]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="starter:diffusion-mnist")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    from _machine import machine_line

    from aigc.models import model_from_checkpoint
    from aigc.registry import resolve_model

    print(machine_line())
    model, _ = model_from_checkpoint(resolve_model(args.model))
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    import inspect

    accepts = inspect.signature(model.sample).parameters
    kwargs = {}
    if "labels" in accepts and getattr(model.cfg, "num_classes", 0):
        kwargs["labels"] = torch.arange(args.n) % model.cfg.num_classes
    if "steps" in accepts:
        kwargs["steps"] = args.steps
    if "prompt" in accepts and "labels" not in kwargs:
        kwargs["prompt"] = ["a red heart"] * args.n

    from aigc.models import native

    def run(m, kernels="torch"):
        with native.routes(conv=kernels, groupnorm=kernels):
            return m.sample(args.n, generator=torch.Generator().manual_seed(0), **kwargs)

    ways = {"NCHW": (model, "torch"), "channels-last, ATen kernels": (nhwc, "torch"),
            "channels-last, native kernels": (nhwc, "native")}
    images = {name: run(m, k) for name, (m, k) in ways.items()}
    a = images["NCHW"]
    for name, b in images.items():
        if name != "NCHW":
            levels = ((a * 255).round() != (b * 255).round()).sum().item()
            print(f"{args.model}: {args.n} images, {sorted(kwargs)}, {args.steps} steps where it "
                  f"takes steps; {name}: pixel levels that differ from NCHW: {levels} of "
                  f"{a.numel()} (largest difference {(a - b).abs().max().item():.2e})")
    times = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (m, k) in ways.items():
            t0 = time.process_time()
            run(m, k)
            times[name].append(time.process_time() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    nchw = med["NCHW"]
    print(f"CPU s per {args.n} images ({args.rounds} alternating rounds, median; threads "
          f"{torch.get_num_threads()}): " + ", ".join(
              f"{name} {t:.2f} (x{nchw / t:.2f})" for name, t in med.items()))
    print(f"the native kernels against ATen's, both channels-last: "
          f"x{med['channels-last, ATen kernels'] / med['channels-last, native kernels']:.2f}")

if __name__ == "__main__":
    main()
