"""Export a finished run as a small starter model: EMA weights only, optionally stored as fp16.

    python scripts/export_starter.py runs/diffusion-mnist src/aigc/assets/starters/diffusion-mnist.safetensors --fp16

The file is an ordinary aigc model file (``aigc sample FILE`` and ``model_from_checkpoint`` read it);
fp16 storage halves the size, and the weights are cast back to fp32 when loaded.
"""

from __future__ import annotations

import argparse

from aigc.checkpoints import file_sha256, load_checkpoint, save_model_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--fp16", action="store_true", help="store floating-point weights as fp16")
    ap.add_argument("--recipe", help="the config file the run was trained with (recorded)")
    args = ap.parse_args()
    ckpt = load_checkpoint(args.run)
    weights = ckpt.ema_weights or ckpt.weights
    if args.fp16:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    meta = {**ckpt.meta, "exported_from": str(ckpt.path), "source_sha256": file_sha256(ckpt.path),
            "weights": "ema" if ckpt.ema_weights else "raw",
            "storage": "fp16" if args.fp16 else "fp32"}
    if args.recipe:
        meta["recipe"] = args.recipe
    out = save_model_file(args.out, family=ckpt.family, model_config=ckpt.model_config,
                          weights=weights, step=ckpt.step, train_config=ckpt.train_config, meta=meta)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, step {ckpt.step}, sha256 {file_sha256(out)}")


if __name__ == "__main__":
    main()
