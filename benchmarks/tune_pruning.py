"""aigc tune with the median pruner against the same search without pruning.

Both searches run the same number of trials of the same study definition (the base recipe
configs/tune-gpt-tiny.json and the space configs/tune-gpt-space.yaml by default, TPE seed 0) in
one process each, one after the other, each in its own SQLite file. Reported per search: trials
finished (complete + pruned) per hour of wall time, how many were pruned, the best validation
loss, and the training steps spent. The samplers see different histories once a trial is pruned
(a pruned trial counts with its last reported loss), so the two searches may propose different
trials after the first ten (TPE's random start-up); the report lists every trial of both.

    python benchmarks/tune_pruning.py --trials 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPU(s)"


def main() -> None:
    import optuna
    import torch

    from aigc.config import load_config_file
    from aigc.models import family_module
    from aigc.tune import load_space, run_study

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tune-gpt-tiny.json"))
    p.add_argument("--space", default=str(ROOT / "configs" / "tune-gpt-space.yaml"))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args()
    torch.set_num_threads(1)
    base = load_config_file(args.config)
    family = base["family"]
    space = load_space(args.space, family_module(family).CONFIG_CLASS)
    lines = [machine_line(), f"command: {' '.join(sys.argv)}",
             f"base {args.config}: {json.dumps(base)}", f"space {args.space}: "
             + ", ".join(p.name for p in space), f"before: {_load()}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in ("median", "none"):
            trial_lines: list[str] = []
            t0 = time.perf_counter()
            result = run_study(family, base, space, trials=args.trials,
                               storage=f"sqlite:///{tmp}/{pruner}.db", study_name=pruner,
                               out=Path(tmp) / pruner, pruner=pruner, seed=0,
                               log=trial_lines.append)
            wall = time.perf_counter() - t0
            study = optuna.load_study(study_name=pruner, storage=f"sqlite:///{tmp}/{pruner}.db")
            steps = sum(t.user_attrs.get("steps", 0) for t in study.trials)
            finished = result.complete + result.pruned
            rows.append((pruner, wall, finished, result.complete, result.pruned, result.failed,
                         steps, result.best_value))
            lines.append(f"after pruner={pruner}: {_load()}")
            lines += [f"  {line}" for line in trial_lines]
    lines.append(f"{'pruner':>7} {'wall s':>7} {'finished':>8} {'complete':>8} {'pruned':>6} "
                 f"{'failed':>6} {'steps':>6} {'trials/hour':>11} {'best val loss':>13}")
    for pruner, wall, finished, complete, pruned, failed, steps, best in rows:
        lines.append(f"{pruner:>7} {wall:>7.0f} {finished:>8} {complete:>8} {pruned:>6} "
                     f"{failed:>6} {steps:>6} {finished / wall * 3600:>11.0f} {best:>13.5f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
