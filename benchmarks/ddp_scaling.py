"""DDP on CPU: `aigc train` as 2 torchrun processes (gloo) against 1 process, same global batch.

Both runs train the same GPT on the same data with the same global batch and seed, one thread
per process, through the real command (`python -m aigc train ...` and
`python -m torch.distributed.run --nproc-per-node 2 -m aigc train ...`). From each run's
log.csv (wall seconds since the trainer started, so data loading is not counted):

* throughput: training steps per second over the whole run (validation included);
* scaling efficiency: (steps/s with 2 processes) / (2 x steps/s with 1 process);
* time to the same validation loss: the wall time at which each run first logs a validation loss
  at or below the target (default: the 1-process run's final validation loss, which the 2-process
  run reproduces up to float rounding, see tests/test_distributed.py).

The machine's load average is printed before and after: on a shared 2-core machine other work
takes cores away from the second process, and the figures are only as good as that line.

    python benchmarks/ddp_scaling.py                       # defaults below
    python benchmarks/ddp_scaling.py --steps 400 --batch-size 64 --out benchmarks/results/x.txt
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPU(s)"


def _train(nproc: int, out: Path, args: argparse.Namespace) -> tuple[float, dict]:
    cmd = ["train", "gpt", "--data", args.data, "--out", str(out), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--context-length", "64", "--width", "64",
           "--layers", "2", "--heads", "2", "--eval-every", str(args.eval_every),
           "--eval-batches", "8", "--log-every", "10", "--sample-every", "0", "--ckpt-every",
           "0", "--warmup-steps", "20", "--lr", "0.003", "--device", "cpu", "--no-progress"]
    if nproc == 1:
        full = [sys.executable, "-m", "aigc", *cmd]
    else:
        full = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(nproc), "-m", "aigc", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    subprocess.run(full, check=True, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    log: dict = {"train": {}, "val": {}}
    with open(out / "log.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["key"] in ("train/loss", "val/loss"):
                log[row["key"][:-5]][int(row["step"])] = (float(row["wall_s"]), float(row["value"]))
    return total, log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="austen")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target", type=float, help="validation loss to reach (default: the "
                   "1-process run's final validation loss)")
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args()
    lines = [machine_line(), f"command: {' '.join(sys.argv)}",
             f"gpt 2 layers x width 64, context 64, {args.data}, global batch {args.batch_size}, "
             f"{args.steps} steps, 1 thread per process, gloo", f"before: {_load()}"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            total, log = _train(nproc, Path(tmp) / f"n{nproc}", args)
            runs[nproc] = (total, log)
            lines.append(f"after {nproc} process(es): {_load()}")
    target = args.target if args.target is not None else runs[1][1]["val"][args.steps][1]
    lines.append(f"target validation loss: {target:.5f}")
    lines.append(f"{'processes':>9} {'process wall s':>14} {'train wall s':>12} {'steps/s':>8} "
                 f"{'final val':>10} {'s to target':>11}")
    rate = {}
    for nproc, (total, log) in runs.items():
        wall = max(w for w, _ in log["val"].values())
        rate[nproc] = args.steps / wall
        reached = [w for s, (w, v) in sorted(log["val"].items()) if v <= target + 1e-9]
        to_target = f"{reached[0]:.1f}" if reached else "never"
        lines.append(f"{nproc:>9} {total:>14.1f} {wall:>12.1f} {rate[nproc]:>8.2f} "
                     f"{log['val'][args.steps][1]:>10.5f} {to_target:>11}")
    lines.append(f"speed-up 2 vs 1 process: {rate[2] / rate[1]:.2f}x; scaling efficiency "
                 f"{rate[2] / (2 * rate[1]):.0%}")
    same = all(abs(runs[1][1]["val"][s][1] - runs[2][1]["val"][s][1]) <= 1e-4 * abs(v)
               for s, (_, v) in runs[1][1]["val"].items())
    lines.append(f"validation losses equal to rel 1e-4 at every evaluation: {same}")
    lines.append("raw validation log (step: 1-process wall s, loss | 2-process wall s, loss):")
    for s in sorted(runs[1][1]["val"]):
        (w1, v1), (w2, v2) = runs[1][1]["val"][s], runs[2][1]["val"][s]
        lines.append(f"  {s:>5}: {w1:8.2f} {v1:.6f} | {w2:8.2f} {v2:.6f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
