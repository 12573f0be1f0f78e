"""``aigc tune FAMILY --config FILE --space FILE --trials N``: hyper-parameter search (Optuna).

Thin: parse, check, call :func:`aigc.tune.run_study`, print where the report and the best
recipe went.
"""

from __future__ import annotations

import argparse

from aigc.models import FAMILIES


def register(sub: argparse._SubParsersAction) -> None:
    from aigc.tune import DEFAULT_STORAGE, PRUNERS

    p = sub.add_parser(
        "tune", help="hyper-parameter search over a family's training (Optuna TPE + pruning)",
        description="Search a family's model and training configs with Optuna: TPE sampling, "
        "trials pruned from their validation losses, the study kept in an SQLAlchemy storage "
        "(SQLite by default; a PostgreSQL URL lets several processes or machines share one "
        "study). Writes a report (history, importances) and best-config.json, a ready "
        "`aigc train FAMILY --config` file. The search space is a YAML/JSON mapping such as "
        "configs/tune-gpt-space.yaml; see docs/scale-out.md.")
    p.add_argument("family", choices=sorted(FAMILIES), metavar="FAMILY",
                   help=f"model family: {', '.join(sorted(FAMILIES))}")
    p.add_argument("--config", help="base recipe (the JSON `aigc train --config` takes); the "
                   "searched fields override it")
    p.add_argument("--space", required=True, help="search space file (.yaml/.yml or .json)")
    p.add_argument("--data", help="dataset (default: the recipe's 'data')")
    p.add_argument("--trials", type=int, default=20, help="trials this process runs (default 20)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"study storage URL (default {DEFAULT_STORAGE}; e.g. "
                   "postgresql+psycopg://user@host/db)")
    p.add_argument("--study", help="study name (default FAMILY-DATA); processes that name the "
                   "same study in the same storage share it")
    p.add_argument("--out", help="trial runs, report.html and best-config.json "
                   "(default runs/tune/STUDY)")
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="median (default), hyperband, or none")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed (default 0; give each "
                   "process that shares a study its own)")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="start no trial after this many seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aigc.config import load_config_file
    from aigc.errors import ConfigError
    from aigc.models import family_module
    from aigc.tune import load_space, run_study

    base = load_config_file(args.config) if args.config else {}
    if base.get("family", args.family) != args.family:
        raise ConfigError(f"{args.config} is a config for {base['family']!r}, not {args.family!r}")
    if args.data:
        base["data"] = args.data
    if args.timeout_s is not None and args.timeout_s <= 0:
        raise ConfigError(f"--timeout-s must be > 0, got {args.timeout_s}")
    params = load_space(args.space, family_module(args.family).CONFIG_CLASS)
    result = run_study(args.family, base, params, trials=args.trials, storage=args.storage,
                       study_name=args.study, out=args.out, pruner=args.pruner, seed=args.seed,
                       timeout_s=args.timeout_s)
    print(f"study {result.study_name} ({result.storage}): {result.complete} complete, "
          f"{result.pruned} pruned, {result.failed} failed in all; this process ran "
          f"{result.trials} trial(s) in {result.seconds:.0f}s")
    if result.best_value is not None:
        print(f"best validation loss {result.best_value:.5g} with "
              + ", ".join(f"{k}={v}" for k, v in result.best_params.items()))
        print(f"best config: {result.best_config} (aigc train {args.family} --config "
              f"{result.best_config})")
    print(f"report: {result.report}")
    return 0
