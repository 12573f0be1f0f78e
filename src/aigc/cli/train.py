"""``aigc train FAMILY --data NAME``: train any model family with the shared trainer."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from aigc.cli._common import add_config_flags, check_out_folder, config_flags
from aigc.config import TrainConfig, config_from_dict, config_to_dict, load_config_file
from aigc.errors import ConfigError
from aigc.models import FAMILIES, family_module


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (vae, ...) on a dataset",
        description="Train a model family on a named dataset. Every field of the family's config "
        "and of the training config is a flag; a JSON --config file sets many at once "
        '({"model": {...}, "train": {...}, "data": "mnist"}); flags win over the file.',
    )
    families = p.add_subparsers(dest="family", metavar="FAMILY", required=True)
    for family in FAMILIES:
        module = family_module(family)
        fp = families.add_parser(family, help=(module.__doc__ or "").strip().splitlines()[0])
        fp.add_argument("--data", help="dataset name (see `aigc data list`)")
        fp.add_argument("--out", help="run folder (default: runs/FAMILY-DATA)")
        fp.add_argument("--config", help="JSON config file with 'model', 'train' and 'data'")
        fp.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint")
        fp.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_config_flags(fp, module.CONFIG_CLASS, f"{family} model config",
                         defaults=getattr(module, "MODEL_DEFAULTS", {}),
                         from_data=getattr(module, "MODEL_FROM_DATA", {}))
        add_config_flags(fp, TrainConfig, "training config",
                         defaults=getattr(module, "TRAIN_DEFAULTS", {}))
        fp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = family_module(args.family)
    file: dict[str, Any] = load_config_file(args.config) if args.config else {}
    if file.get("family", args.family) != args.family:
        raise ConfigError(f"{args.config} is a config for {file['family']!r}, not {args.family!r}")
    data = args.data or file.get("data")
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out, the run folder to continue")
    if not data and not args.resume:
        raise ConfigError("--data is required (e.g. --data mnist); see `aigc data list`")
    out = Path(args.out or f"runs/{args.family}-{data.replace(':', '-').replace('/', '_')}")
    check_out_folder(out)  # before the data loads: a bad --out costs nothing and leaves nothing
    model_overrides = {**file.get("model", {}), **config_flags(args, module.CONFIG_CLASS)}
    train_overrides = {**file.get("train", {}), **config_flags(args, TrainConfig)}
    if args.resume:
        # The run's own configs win; only the step budget may be extended.
        from aigc.checkpoints import latest_checkpoint_dir, load_checkpoint

        folder = latest_checkpoint_dir(out)
        if folder is None:
            raise ConfigError(f"--resume: {out} has no checkpoint to resume from")
        ckpt = load_checkpoint(folder)
        def differs(given: dict[str, Any], stored: dict[str, Any] | None) -> set[str]:
            # A recipe file passed again with --resume is fine: only changed values count.
            stored = stored or {}
            return {k for k, v in given.items()
                    if json.dumps(v, sort_keys=True) != json.dumps(stored.get(k), sort_keys=True)}

        extra = differs(model_overrides, ckpt.model_config) | (
            differs(train_overrides, ckpt.train_config) - {"steps", "time_limit_s"})
        if extra:
            raise ConfigError(
                f"--resume takes the configs stored in {folder}; only --steps and --time-limit-s "
                f"may change, not {', '.join(sorted(extra))}"
            )
        model_overrides = ckpt.model_config
        train_overrides = {**ckpt.train_config, **train_overrides}
        data = ckpt.meta.get("data") or data
        if not data:
            raise ConfigError(f"{folder} does not record its dataset; pass --data")
    train_data, val_data, meta, model_defaults = module.training_data(data)
    model_cfg = config_from_dict(
        module.CONFIG_CLASS, {**model_defaults, **model_overrides}, where="model config"
    )
    if hasattr(module, "bind_data"):  # data that depends on the model config (a tokenizer)
        model_cfg, train_data, val_data, meta = module.bind_data(model_cfg, train_data, val_data, meta)
    train_cfg = config_from_dict(
        TrainConfig, {**getattr(module, "TRAIN_DEFAULTS", {}), **train_overrides},
        where="training config",
    )
    from aigc.models import count_parameters, init_model

    # The initial weights come from the run's seed: the same config and --seed give the same
    # model (the trainer seeds the data order and dropout from it as well).
    model = init_model(module.MODEL_CLASS, model_cfg, seed=train_cfg.seed)
    if hasattr(module, "after_init") and not args.resume:  # pretrained parts (a frozen stage)
        module.after_init(model)
    from aigc.train import Trainer

    print(f"{args.family}: {count_parameters(model) / 1e6:.2f}M parameters; data {data}: "
          f"{len(train_data)} train, {len(val_data) if val_data is not None else 0} val; run {out}")
    out.mkdir(parents=True, exist_ok=True)
    from aigc.distributed import is_main

    if is_main():  # under torchrun rank 0 writes the run's files
        (out / "run.json").write_text(json.dumps({
            "family": args.family, "data": data, "model": config_to_dict(model_cfg),
            "train": config_to_dict(train_cfg), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=2))
    trainer = Trainer(
        model, family=args.family, model_config=config_to_dict(model_cfg),
        train_data=train_data, val_data=val_data, cfg=train_cfg, run_dir=out,
        meta={**meta, "data": data}, preview=getattr(module, "preview", None),
        progress=not args.no_progress,
    )
    result = trainer.fit(resume=args.resume)
    best = f", best val loss {result.best_val_loss:.4g}" if result.best_val_loss is not None else ""
    print(f"{result.stopped} at step {result.step} in {result.seconds:.0f}s{best}; "
          f"checkpoint {result.checkpoint}")
    return 0
