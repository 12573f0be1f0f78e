"""Classifier agreement of a class- or text-conditional image model (GAN or diffusion).

For every class, sample N images conditioned on it (and, for text-conditional diffusion models, on
prompt sets: training-style captions, English paraphrases never seen verbatim in training, and
Chinese prompts), classify them with the provisional classifier of benchmarks/_classifier.py, and
report how often the classifier agrees with the class asked for. Writes a JSON metric card.

    python benchmarks/image_agreement.py starter:diffusion-mnist --n-per-class 50 --out out/agreement.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _classifier import load_classifier, predict  # noqa: E402

_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_ZH = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]

# Paraphrases per class: none of these strings is in the training caption bank (checked below).
PARAPHRASES = {
    "mnist": [[f"a {w} written with a pen", f"the numeral {i} drawn by hand",
               f"a hand-drawn number {w}"] for i, w in enumerate(_DIGITS)],
    "fashion-mnist": [
        ["a short-sleeved cotton tee", "a casual top with short sleeves"],
        ["a pair of long pants", "jeans for men"],
        ["a warm knitted jumper", "a long-sleeved woolly sweater"],
        ["a one-piece gown for women", "a summer dress"],
        ["a warm winter jacket", "an overcoat with buttons and long sleeves"],
        ["open-toed summer shoes", "flip-flops for the beach"],
        ["a collared button-down shirt", "a formal shirt with buttons"],
        ["athletic shoes for running", "canvas trainers"],
        ["a leather handbag", "a tote bag with handles"],
        ["boots that cover the ankle", "short leather boots"],
    ],
}
ZH_PARAPHRASES = {
    "mnist": [[f"用笔写的数字{z}", f"阿拉伯数字{i}"] for i, z in enumerate(_ZH)],
    "fashion-mnist": [
        ["一件短袖T恤衫"], ["一条长裤"], ["一件针织毛衣"], ["一条夏天的连衣裙"], ["一件冬天的外套"],
        ["一双夏天的凉鞋"], ["一件有纽扣的衬衫"], ["一双跑步的运动鞋"], ["一个皮革手提包"],
        ["一双盖住脚踝的靴子"],
    ],
}


def _prompt_sets(data: str, class_names: list[str]) -> dict[str, list[list[str]]]:
    from aigc.data.captions import caption_bank

    bank = caption_bank(data, class_names)
    seen = {c for c, _ in bank}
    en_train = [[c for c, lab in bank if lab == k and c.isascii()][:2] for k in range(len(class_names))]
    zh_train = [[c for c, lab in bank if lab == k and not c.isascii()][:2] for k in range(len(class_names))]
    for group in (PARAPHRASES[data], ZH_PARAPHRASES[data]):
        for prompts in group:
            for p in prompts:
                assert p not in seen, f"paraphrase {p!r} is a training caption"
    return {"en_training_captions": en_train, "en_paraphrases": PARAPHRASES[data],
            "zh_training_captions": zh_train, "zh_paraphrases": ZH_PARAPHRASES[data]}


def main() -> None:
    from aigc.models import model_from_checkpoint
    from aigc.registry import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--n-per-class", type=int, default=50)
    ap.add_argument("--n-per-prompt", type=int, default=20)
    ap.add_argument("--sampler", default="dpm-solver++")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-prompts", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, ckpt = model_from_checkpoint(resolve_model(args.checkpoint))
    data, names = ckpt.meta["data"], ckpt.meta["class_names"]
    classifier, card = load_classifier(data)
    start = time.perf_counter()

    def draw(n: int, seed: int, labels=None, text=None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if ckpt.family == "gan":
            return model.sample(n, generator=gen, labels=labels)
        return model.sample(n, generator=gen, labels=labels, text=text, sampler=args.sampler,
                            steps=args.steps, guidance=args.guidance)

    per_class = {}
    hits = total = 0
    for k, name in enumerate(names):
        images = draw(args.n_per_class, args.seed + k, labels=torch.full((args.n_per_class,), k))
        agree = int((predict(classifier, images) == k).sum())
        per_class[name] = agree / args.n_per_class
        hits, total = hits + agree, total + args.n_per_class
    result = {"class_agreement": hits / total, "class_agreement_per_class": per_class}
    print(f"class-conditioned agreement: {hits / total:.3f} ({total} images)")
    if ckpt.family == "diffusion" and model.cfg.text_conditioning and not args.no_prompts:
        for set_name, prompts in _prompt_sets(data, names).items():
            hits = total = 0
            for k, group in enumerate(prompts):
                for j, prompt in enumerate(group):
                    text = model.embed_prompts([prompt]).repeat(args.n_per_prompt, 1)
                    images = draw(args.n_per_prompt, args.seed + 100 * k + j, text=text)
                    hits += int((predict(classifier, images) == k).sum())
                    total += args.n_per_prompt
            result[f"prompt_agreement_{set_name}"] = hits / total
            result[f"prompts_{set_name}"] = prompts
            print(f"prompt agreement, {set_name}: {hits / total:.3f} ({total} images)")
    result["protocol"] = {
        "checkpoint": str(ckpt.path), "model_sha256": ckpt.sha256, "family": ckpt.family,
        "step": ckpt.step, "ema": ckpt.ema_weights is not None, "data": data,
        "n_per_class": args.n_per_class, "n_per_prompt": args.n_per_prompt, "seed": args.seed,
        "sampler": args.sampler if ckpt.family == "diffusion" else None,
        "steps": args.steps if ckpt.family == "diffusion" else None,
        "guidance": args.guidance if ckpt.family == "diffusion" else None,
        "classifier": {**card, "source": "benchmarks/_classifier.py (provisional)"},
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
        print(f"card: {args.out}")


if __name__ == "__main__":
    main()
