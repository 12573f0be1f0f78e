"""``aigc improve MODEL --feedback DATASET``: learn a candidate version from preferences."""

from __future__ import annotations

import argparse

from aigc.errors import AigcError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("improve", help="learn a candidate version of a model from a feedback "
                       "dataset (DPO / Diffusion-DPO)",
                       description="Start from MODEL (NAME, NAME@production, NAME@vK or "
                       "starter:NAME), learn from the training pairs of a dataset written by "
                       "`aigc feedback export` (diffusion: Diffusion-DPO; gpt: DPO; vae: "
                       "reward-weighted ELBO; gan: refused), and register the result as "
                       "NAME@candidate. Promote it with `aigc models promote NAME`. MODEL "
                       "smollm2: DPO on a LoRA adapter of SmolLM2 (chat items), written to "
                       "--out.")
    p.add_argument("model")
    p.add_argument("--feedback", required=True,
                   help="a dataset folder, or an export folder (its latest dataset)")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-5; 1e-4 for a vae)")
    p.add_argument("--beta", type=float, default=None,
                   help="DPO strength (default: the method's, see aigc.loop)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of pair order and noise (default 0)")
    p.add_argument("--name", help="register under this name (default: the base's name)")
    p.add_argument("--allow-other-model", action="store_true",
                   help="use a dataset exported for another model name")
    p.add_argument("--out", help="smollm2: the folder for the new LoRA adapter (required)")
    p.add_argument("--adapter", help="smollm2: start from this LoRA adapter (default: a new one)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aigc.loop.improve import ImproveSettings, improve

    if not 1 <= args.steps <= 100_000:
        raise AigcError(f"--steps must be between 1 and 100000, got {args.steps}")
    if args.lr is not None and not 0 < args.lr <= 1:
        raise AigcError(f"--lr must be in (0, 1], got {args.lr}")
    if args.beta is not None and args.beta <= 0:
        raise AigcError(f"--beta must be > 0, got {args.beta}")
    if not 1 <= args.batch_size <= 4096:
        raise AigcError(f"--batch-size must be between 1 and 4096, got {args.batch_size}")
    if args.model == "smollm2":
        from aigc.loop.improve import improve_smollm2

        if not args.out:
            raise AigcError("smollm2 is improved as a LoRA adapter: give --out FOLDER")
        from aigc.cli._common import check_out_folder

        check_out_folder(args.out)
        rec = improve_smollm2(args.feedback, args.out, ImproveSettings(
            steps=args.steps, lr=args.lr, beta=args.beta, batch_size=args.batch_size,
            seed=args.seed), adapter=args.adapter, progress=not args.no_progress)
        print(f"LoRA adapter written to {args.out} ({rec['method']}, {rec['pairs']} pairs): "
              f"reward accuracy {rec['accuracy']:.2f}; use it with aigc chat --adapter "
              f"{args.out}")
        return 0
    if args.out or args.adapter:
        raise AigcError("--out and --adapter are for smollm2; other models are registered as "
                        "NAME@candidate")
    version, rec = improve(args.model, args.feedback, ImproveSettings(
        steps=args.steps, lr=args.lr, beta=args.beta, batch_size=args.batch_size,
        seed=args.seed), name=args.name, allow_other_model=args.allow_other_model,
        progress=not args.no_progress)
    print(f"{version.ref} registered as candidate ({rec['method']}, {rec['pairs']} pairs, "
          f"{rec['steps']} steps): reward accuracy {rec['accuracy']:.2f}, mean margin "
          f"{rec['mean_margin']:.4f}. Next: aigc models promote {version.name}")
    return 0
