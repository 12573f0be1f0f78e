"""Sample grids of the starter models for the README: one per class and one per prompt row.

    python scripts/starter_grids.py --out docs/images

Per starter: ``NAME-classes.png`` (one column per class, 8 rows) and, for text-conditional
diffusion models, ``NAME-prompts-en.png`` and ``NAME-prompts-zh.png`` (one row of 8 per prompt,
prompts listed in the PNG's record and printed here). Every PNG carries its provenance record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from aigc.checkpoints import library_versions
from aigc.media import save_grid
from aigc.models import model_from_checkpoint
from aigc.registry import STARTERS_DIR

PROMPTS = {
    "mnist": {
        "en": ["handwritten digit seven", "the number three written by hand",
               "a zero written with a pen", "a hand-drawn number eight"],
        "zh": ["手写数字七", "数字三", "用笔写的数字零", "阿拉伯数字8"],
    },
    "fashion-mnist": {
        "en": ["a photo of an ankle boot", "boots that cover the ankle", "a pair of trousers",
               "athletic shoes for running", "a leather handbag", "a summer dress"],
        "zh": ["一只短靴", "一双运动鞋", "一条裤子", "一个手提包", "一条连衣裙"],
    },
    # latent-diffusion-emoji: concepts of the training split, in words of our own choosing
    # (not necessarily a training caption); held-out captions and concepts are in the eval grid
    "emoji": {
        "en": ["a red heart", "a smiling face", "a cat face", "a yellow star", "a slice of pizza",
               "a green tree", "a blue car", "a flag with red and white stripes"],
        "zh": ["红色的心", "笑脸", "猫脸", "星星", "比萨饼", "树", "汽车", "旗帜"],
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--only", nargs="*", help="starter names (default: all)")
    ap.add_argument("--prompts-only", action="store_true", help="only the prompt grids")
    args = ap.parse_args()
    out = Path(args.out)
    for path in sorted(STARTERS_DIR.glob("*.safetensors")):
        if args.only and path.stem not in args.only:
            continue
        model, ckpt = model_from_checkpoint(path)
        if ckpt.family not in ("gan", "diffusion", "latent-diffusion"):
            continue  # the scorer and the music model draw no images
        data = ckpt.meta["data"]
        base = {"model_sha256": ckpt.sha256, "checkpoint": f"starter:{path.stem}",
                "family": ckpt.family, "versions": library_versions(), "seed": 0}
        diff = {"sampler": "dpm-solver++", "steps": args.steps, "guidance": args.guidance}
        if ckpt.family == "latent-diffusion":  # prompts only: one row of 8 seeds per prompt
            for lang, prompts in PROMPTS[data].items():
                gen = [torch.Generator().manual_seed(i) for i in range(8 * len(prompts))]
                images = model.sample(len(gen), generator=gen,
                                      prompt=[p for p in prompts for _ in range(8)], **diff)
                file = save_grid(out / f"{path.stem}-prompts-{lang}.png", images, nrow=8,
                                 record={**base, **diff, "kind": "grid", "rows": prompts,
                                         "seeds": "image i: manual_seed(i)"})
                print(file, "rows:", " | ".join(prompts))
            continue
        k = model.cfg.num_classes
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(k).repeat(8)  # row-major: 8 rows, one column per class
        if args.prompts_only:
            images = None
        elif ckpt.family == "gan":
            images = model.sample(len(labels), generator=gen, labels=labels)
            extra = {}
        else:
            images = model.sample(len(labels), generator=gen, labels=labels, **diff)
            extra = diff
        if not args.prompts_only:
            file = save_grid(out / f"{path.stem}-classes.png", images, nrow=k,
                             record={**base, **extra, "kind": "grid",
                                     "columns": ckpt.meta["class_names"]})
            print(file)
        if ckpt.family != "diffusion" or not model.cfg.text_conditioning:
            continue
        for lang, prompts in PROMPTS[data].items():
            gen = torch.Generator().manual_seed(0)
            rows = []
            for prompt in prompts:
                text = model.embed_prompts([prompt]).repeat(8, 1)
                rows.append(model.sample(8, generator=gen, text=text, **diff))
            file = save_grid(out / f"{path.stem}-prompts-{lang}.png", torch.cat(rows), nrow=8,
                             record={**base, **diff, "kind": "grid", "rows": prompts})
            print(file, "rows:", " | ".join(prompts))


if __name__ == "__main__":
    main()
