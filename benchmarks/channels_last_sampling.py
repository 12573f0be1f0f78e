"""Image sampling with the UNet in channels-last memory format against the default (NCHW).

The studio and `aigc sample` draw with the model as loaded (NCHW). This times 32 images of a
starter (20 steps, DPM-Solver++, one generator seed) both ways in alternating rounds (CPU
time, median) and counts the 8-bit pixel levels that differ, since a record's replay must
write the same bytes.

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

    def run(m):
        return m.sample(args.n, generator=torch.Generator().manual_seed(0), **kwargs)

    a, b = run(model), run(nhwc)
    levels = ((a * 255).round() != (b * 255).round()).sum().item()
    print(f"{args.model}: {args.n} images, {sorted(kwargs)}, {args.steps} steps where it takes "
          f"steps; pixel levels that differ: {levels} "
          f"of {a.numel()} (largest difference {(a - b).abs().max().item():.2e})")
    times = {0: [], 1: []}
    for _ in range(args.rounds):
        for i, m in enumerate((model, nhwc)):
            t0 = time.process_time()
            run(m)
            times[i].append(time.process_time() - t0)
    nchw, cl = (statistics.median(times[i]) for i in (0, 1))
    print(f"CPU s per {args.n} images: NCHW {nchw:.2f}, channels-last {cl:.2f}: x{nchw / cl:.2f} "
          f"({args.rounds} alternating rounds, median; threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
