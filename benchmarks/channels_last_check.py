"""Channels-last against the default memory format, as ``aigc train`` runs each image family.

For every convolutional family this runs ``aigc train FAMILY --data DATA`` with the family's
own defaults (model size, batch size, fused AdamW) twice per round, ``--channels-last false``
and ``true`` alternately, and reads each run's ``log.csv``: seconds per training step (wall
time between the logged losses of step 5 and the last step, so start-up and the final
validation are left out) and the training loss at every step. Both runs of a round start from
the same weights and see the same batches, so their loss curves differ only by rounding.

    OMP_NUM_THREADS=1 python benchmarks/channels_last_check.py [--rounds 2] [--families vae gan]
    OMP_NUM_THREADS=1 python benchmarks/channels_last_check.py --families latent-diffusion \
        --autoencoder runs/ae-emoji     # the starter's recipe (configs/latent-diffusion-emoji-starter.json)

Printed per family: the median seconds per step of each format over the rounds, their ratio
(> 1: channels-last faster), the largest loss difference between the two curves of round 1
and both final losses. Families where channels-last is faster and the curves agree are the
ones whose TRAIN_DEFAULTS turn it on (issue #17: the default recipes train the fastest way
that keeps quality).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# family: (dataset, steps per run, extra arguments of `aigc train`)
FAMILIES = {"vae": ("mnist", 60, []), "gan": ("mnist", 40, []), "diffusion": ("mnist", 30, []),
            "autoencoder-kl": ("emoji", 30, []),
            "latent-diffusion": ("emoji", 30,
                                 ["--config", "configs/latent-diffusion-emoji-starter.json"])}
DEFAULT_FAMILIES = ["vae", "gan", "diffusion", "autoencoder-kl"]  # latent diffusion needs --autoencoder
FIRST = 5  # steps before the timed window (warm-up: first-touch memory, oneDNN primitive cache)


def run(family: str, data: str, steps: int, channels_last: bool | None, out: Path, extra: list[str],
        *, env: dict[str, str] | None = None, first: int = FIRST) -> dict:
    """``aigc train family`` for ``steps`` steps into ``out`` (``channels_last`` None: the family's
    default; ``env``: added to the environment): wall seconds a step between steps ``first`` and
    the last, from log.csv, and the training losses."""
    aigc = Path(sys.executable).with_name("aigc")
    cmd = [str(aigc), "train", family, *extra, "--data", data, "--steps", str(steps), "--out", str(out),
           "--no-progress", "--eval-every", "0", "--sample-every", "0", "--log-every", "1",
           "--ckpt-every", str(steps)]
    if channels_last is not None:
        cmd += ["--channels-last", "true" if channels_last else "false"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    times, losses = {}, {}
    with open(out / "log.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["key"].startswith("train/loss"):
                step = int(row["step"])
                times[step] = float(row["wall_s"])
                losses[step] = losses.get(step, 0.0) + float(row["value"])
    return {"s_per_step": (times[steps] - times[first]) / (steps - first),
            "losses": [losses[s] for s in sorted(losses)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--families", nargs="+", default=DEFAULT_FAMILIES, choices=list(FAMILIES))
    p.add_argument("--autoencoder", help="a trained autoencoder-kl run (for latent-diffusion)")
    args = p.parse_args()
    if "latent-diffusion" in args.families and not args.autoencoder:
        p.error("latent-diffusion needs --autoencoder RUN (a trained autoencoder-kl run)")
    from _machine import machine_line

    print(machine_line())
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"{args.rounds} rounds, formats alternating; wall time per step after step {FIRST}")
    print(f"\n{'family':<16}{'data':<8}{'steps':>6}{'default s/step':>16}{'channels-last':>15}"
          f"{'ratio':>8}{'max |d loss|':>14}{'final loss (default / cl)':>28}")
    for family in args.families:
        data, steps, extra = FAMILIES[family]
        if family == "latent-diffusion":
            extra = [*extra, "--autoencoder", args.autoencoder]
        results = {False: [], True: []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for cl in (False, True):
                    results[cl].append(run(family, data, steps, cl, Path(tmp) / f"{r}-{cl}", extra))
        base = statistics.median(x["s_per_step"] for x in results[False])
        fast = statistics.median(x["s_per_step"] for x in results[True])
        a, b = results[False][0]["losses"], results[True][0]["losses"]
        diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
        print(f"{family:<16}{data:<8}{steps:>6}{base:16.3f}{fast:15.3f}{base / fast:8.2f}"
              f"{diff:14.2e}{a[-1]:14.4f} / {b[-1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
