"""Training steps with glibc's allocator as it comes against aigc.allocator.keep_freed_memory().

Each measurement is a fresh process (the allocator's settings cannot be undone in one), built
and trained the way ``aigc train`` runs each family on CPU (fused AdamW; the image families in
channels-last on the native kernels where this machine measured them faster), from the same
seed; rounds alternate the two settings:

  gpt               benchmarks/gpt_speed.py's model: 4 layers, width 128, batch 12 x 64 tokens
  diffusion         the MNIST diffusion UNet (DiffusionConfig defaults), batch 64 (the family's
                    default), 28x28 grey images
  autoencoder-kl    the emoji starter's autoencoder (channels 16, 32, 64), batch 16, 64x64 colour
  diffusion-sampling  not training: the same diffusion UNet drawing 32 images in 20 steps
                    (dpm-solver++), the "step" being one such call

Printed per workload: CPU and wall milliseconds a step (median over rounds), minor page faults
a step, the process's peak resident memory, and the ratio default / kept (> 1: keeping freed
memory is faster).

    OMP_NUM_THREADS=1 python benchmarks/allocator_check.py [--rounds 3] [--workloads gpt diffusion]

With --train, the same comparison as ``aigc train`` runs it end to end (batches, EMA, logging
included): ``aigc train FAMILY --data DATA --steps 40`` with ``AIGC_KEEP_FREED_MEMORY=0`` and
``1`` alternating, the time a step from log.csv between steps 10 and 40:

    OMP_NUM_THREADS=1 python benchmarks/allocator_check.py --train [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORKLOADS = ("gpt", "diffusion", "autoencoder-kl", "diffusion-sampling")


def _step_fn(workload: str):
    import torch

    torch.manual_seed(0)
    if workload == "gpt":
        from aigc.models.gpt import GPT, GPTConfig

        model = GPT(GPTConfig(vocab_size=90, context_length=64, layers=4, heads=4, width=128))
        batches = [{"tokens": torch.randint(0, 90, (12, 64))} for _ in range(4)]
        steps, warm = 40, 10
    elif workload == "diffusion":
        from aigc.models.diffusion import Diffusion, DiffusionConfig

        model = Diffusion(DiffusionConfig()).to(memory_format=torch.channels_last)
        batches = [{"image": torch.rand(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)}
                   for _ in range(2)]
        steps, warm = 6, 2
    elif workload == "diffusion-sampling":
        from aigc.models.diffusion import Diffusion, DiffusionConfig

        model = Diffusion(DiffusionConfig()).to(memory_format=torch.channels_last).eval()
        gen = torch.Generator()

        def draw():
            gen.manual_seed(0)
            model.sample(32, generator=gen, steps=20)
        return draw, 3, 1
    else:
        from aigc.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

        model = AutoencoderKL(AutoencoderKLConfig(image_size=64, image_channels=3,
                                                  channels=(16, 32, 64)))
        model = model.to(memory_format=torch.channels_last)
        batches = [{"image": torch.rand(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)}
                   for _ in range(2)]
        steps, warm = 10, 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    i = 0

    def step():
        nonlocal i
        opt.zero_grad(set_to_none=True)
        model.loss(batches[i % len(batches)]).backward()
        opt.step()
        i += 1
    return step, steps, warm


def child(workload: str, keep: bool) -> None:
    import resource

    import torch

    from aigc import allocator

    state = allocator.keep_freed_memory() if keep else "default"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    step, steps, warm = _step_fn(workload)
    for _ in range(warm):
        step()
    r0, c0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    c1, w1, r1 = time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"state": state, "cpu_ms": (c1 - c0) / steps * 1e3,
                      "wall_ms": (w1 - w0) / steps * 1e3,
                      "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
                      "sys_ms": (r1.ru_stime - r0.ru_stime) / steps * 1e3,
                      "peak_mib": r1.ru_maxrss / 1024}))


TRAIN_RUNS = {"gpt": "austen", "diffusion": "mnist", "autoencoder-kl": "emoji"}


def train_ms_per_step(family: str, data: str, keep: bool, out: Path) -> float:
    """Milliseconds a step of ``aigc train family --data data`` (steps 10 to 40, wall time)."""
    import shutil

    from channels_last_check import run

    shutil.rmtree(out, ignore_errors=True)
    done = run(family, data, 40, None, out, [], env={"AIGC_KEEP_FREED_MEMORY": str(int(keep))},
               first=10)
    return done["s_per_step"] * 1e3


def main_train(rounds: int) -> None:
    import tempfile

    print(f"aigc train, 40 steps, ms a step (wall) over steps 10-40; {rounds} rounds alternating")
    with tempfile.TemporaryDirectory() as tmp:
        for family, data in TRAIN_RUNS.items():
            ms: dict[bool, list[float]] = {False: [], True: []}
            for r in range(rounds):
                for keep in ((False, True) if r % 2 == 0 else (True, False)):
                    ms[keep].append(train_ms_per_step(family, data, keep, Path(tmp) / "run"))
            ratios = [a / b for a, b in zip(ms[False], ms[True], strict=True)]
            print(f"{family:16s} --data {data:7s} glibc {statistics.median(ms[False]):8.1f}  kept "
                  f"{statistics.median(ms[True]):8.1f}  default / kept x"
                  f"{statistics.median(ms[False]) / statistics.median(ms[True]):.2f} "
                  f"(rounds {min(ratios):.2f}-{max(ratios):.2f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--train", action="store_true",
                   help="compare end to end through `aigc train` instead (see above)")
    p.add_argument("--child", nargs=2, metavar=("WORKLOAD", "KEEP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "1")
        return

    import torch
    from _machine import machine_line

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(machine_line())
    if args.train:
        main_train(args.rounds)
        return
    print(f"{args.rounds} rounds, the two settings alternating, a fresh process each")
    print(f"{'workload':18s} {'setting':8s} {'CPU ms/step':>12s} {'wall ms/step':>13s} "
          f"{'faults/step':>12s} {'sys ms/step':>12s} {'peak MiB':>9s}")
    for workload in args.workloads:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.rounds):
            for keep in ((False, True) if r % 2 == 0 else (True, False)):
                out = subprocess.run([sys.executable, __file__, "--child", workload, str(int(keep))],
                                     capture_output=True, text=True, check=True)
                runs[keep].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {keep: {k: statistics.median(r[k] for r in rs)
                      for k in ("cpu_ms", "wall_ms", "faults", "sys_ms", "peak_mib")}
               for keep, rs in runs.items()}
        for keep in (False, True):
            m = med[keep]
            name = runs[keep][0]["state"] if keep else "default"
            print(f"{workload:18s} {'kept' if keep else 'glibc':8s} {m['cpu_ms']:12.2f} "
                  f"{m['wall_ms']:13.2f} {m['faults']:12.0f} {m['sys_ms']:12.2f} {m['peak_mib']:9.0f}"
                  + (f"   (keep_freed_memory: {name})" if keep else ""))
        ratios = [a["cpu_ms"] / b["cpu_ms"] for a, b in zip(runs[False], runs[True], strict=True)]
        print(f"{workload:18s} default / kept by CPU time: x{med[False]['cpu_ms'] / med[True]['cpu_ms']:.2f} "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); by wall time: "
              f"x{med[False]['wall_ms'] / med[True]['wall_ms']:.2f}")


if __name__ == "__main__":
    main()
