"""The text-align noise sweep: prompt agreement on a development set of paraphrases at each noise.

`aigc finetune text-align` fits a diffusion model's text projection so that each training
caption's MiniLM embedding, plus Gaussian noise of a given level, maps to its class's condition
vector. This benchmark re-fits it from the shipped starter at each noise level (0.25, 0.5, 0.75,
1.0 by default) with the command's other defaults (3,000 steps, seed 0) and measures the agreement
docs/images.md reports: images sampled from each prompt (DPM-Solver++ 10 steps, guidance 6),
classified by benchmarks/_classifier.py, counted when the class is the one the prompt names.

The prompts are the development set in benchmarks/data/text_align_dev_prompts.json, not the
held-out paraphrases of benchmarks/image_agreement.py: choosing the noise on the prompts that
report the result would flatter it. The script refuses a development prompt that is a training
caption or a held-out paraphrase.

By default the text projection is re-initialised (seeded) before each fit, so every noise level
starts from the same unaligned projection; ``--init shipped`` starts from the starter's own
(already aligned at 0.5) projection instead. The UNet is the starter's in both cases, so for
diffusion-mnist (whose UNet was later fine-tuned on the aligned conditions) the sweep is not the
run that first chose the noise; docs/images.md says so.

    python benchmarks/text_align_noise.py starter:diffusion-mnist --threads 1 \\
        --out benchmarks/results/text_align_noise-diffusion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, machine_line  # noqa: E402

DEV_PROMPTS = Path(__file__).resolve().parent / "data" / "text_align_dev_prompts.json"
LANGUAGES = ("en", "zh")


def dev_prompts(data: str, class_names: list[str]) -> dict[str, list[list[str]]]:
    """``{"en": [[prompt, ...] per class], "zh": [...]}`` of the development set for ``data``.

    Raises ``ValueError`` if the set has no entry for ``data``, has the wrong number of classes,
    or holds a training caption or one of image_agreement.py's held-out paraphrases.
    """
    from image_agreement import PARAPHRASES, ZH_PARAPHRASES

    from aigc.data.captions import caption_bank

    table = json.loads(DEV_PROMPTS.read_text(encoding="utf-8"))
    if data not in table:
        known = sorted(k for k in table if k != "about")
        raise ValueError(f"no development prompts for data={data!r}; {DEV_PROMPTS} has {known}")
    sets = table[data]
    held_out = {p for group in (PARAPHRASES.get(data, []), ZH_PARAPHRASES.get(data, []))
                for prompts in group for p in prompts}
    training = {c for c, _ in caption_bank(data, class_names)}
    for lang in LANGUAGES:
        if len(sets[lang]) != len(class_names):
            raise ValueError(f"{DEV_PROMPTS}: {data}/{lang} has {len(sets[lang])} classes, the "
                             f"model has {len(class_names)}")
        for prompts in sets[lang]:
            for p in prompts:
                if p in training:
                    raise ValueError(f"development prompt {p!r} is a training caption")
                if p in held_out:
                    raise ValueError(f"development prompt {p!r} is a held-out paraphrase of "
                                     "benchmarks/image_agreement.py")
    return {lang: sets[lang] for lang in LANGUAGES}


def reset_text_projection(model, seed: int) -> None:
    """Re-draw the text projection's weights with torch's default init, seeded."""
    torch.manual_seed(seed)
    for layer in model.unet.text_proj:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


@torch.no_grad()
def prompt_agreement(model, classifier, prompts: dict[str, list[list[str]]], *, n_per_prompt: int,
                     seed: int, sampler: str, steps: int, guidance: float) -> dict:
    """Share of images, per language and overall, that the classifier puts in the prompt's class.

    Prompt j of class k is sampled with seed ``seed + 100 * k + j`` (as image_agreement.py does),
    so every noise level draws the same initial noise for the same prompt."""
    from _classifier import predict

    out, hits_all, total_all = {}, 0, 0
    for lang, groups in prompts.items():
        hits = total = 0
        for k, group in enumerate(groups):
            for j, prompt in enumerate(group):
                text = model.embed_prompts([prompt]).repeat(n_per_prompt, 1)
                gen = torch.Generator().manual_seed(seed + 100 * k + j)
                images = model.sample(n_per_prompt, generator=gen, text=text, sampler=sampler,
                                      steps=steps, guidance=guidance)
                hits += int((predict(classifier, images) == k).sum())
                total += n_per_prompt
        out[f"agreement_{lang}"] = hits / total
        out[f"images_{lang}"] = total
        hits_all, total_all = hits_all + hits, total_all + total
    out["agreement"] = hits_all / total_all
    return out


def main(argv: list[str] | None = None) -> None:
    from _classifier import load_classifier

    from aigc.models import model_from_checkpoint
    from aigc.models.diffusion import align_text, caption_embeddings
    from aigc.registry import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a text-conditional diffusion model, e.g. "
                    "starter:diffusion-mnist")
    ap.add_argument("--noises", default="0.25,0.5,0.75,1.0")
    ap.add_argument("--align-steps", type=int, default=3000)
    ap.add_argument("--align-seed", type=int, default=0)
    ap.add_argument("--init", choices=["reset", "shipped"], default="reset",
                    help="text projection each fit starts from (default reset: seeded re-init)")
    ap.add_argument("--n-per-prompt", type=int, default=20)
    ap.add_argument("--sampler", default="dpm-solver++")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON raw output (default: print only)")
    args = ap.parse_args(argv)
    noises = [float(x) for x in args.noises.split(",")]
    if any(x < 0 for x in noises) or args.n_per_prompt < 1:
        raise ValueError(f"--noises must be >= 0 and --n-per-prompt >= 1, got {args.noises!r} "
                         f"and {args.n_per_prompt}")
    torch.set_num_threads(args.threads)
    print(machine_line())
    model, ckpt = model_from_checkpoint(resolve_model(args.checkpoint))
    model.eval()
    if ckpt.family != "diffusion" or not model.cfg.text_conditioning:
        raise ValueError(f"{args.checkpoint} is not a text-conditional diffusion model")
    data, names = ckpt.meta["data"], list(ckpt.meta["class_names"])
    prompts = dev_prompts(data, names)
    classifier, classifier_card = load_classifier(data)
    embeddings, labels, _ = caption_embeddings(data, names, "minilm-zh-gloss")
    shipped = {k: v.clone() for k, v in model.unet.text_proj.state_dict().items()}
    rows = []
    for noise in noises:
        start = time.perf_counter()
        if args.init == "reset":
            reset_text_projection(model, args.align_seed)
        else:
            model.unet.text_proj.load_state_dict(shipped)
        record = align_text(model, embeddings, labels, steps=args.align_steps, noise=noise,
                            seed=args.align_seed, progress=False)
        model.eval()
        fit_s = time.perf_counter() - start
        agreement = prompt_agreement(model, classifier, prompts, n_per_prompt=args.n_per_prompt,
                                     seed=args.seed, sampler=args.sampler, steps=args.steps,
                                     guidance=args.guidance)
        row = {"noise": noise, **agreement, "align": record, "align_seconds": round(fit_s, 1),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"noise {noise:<5} agreement {row['agreement']:.3f} (en {row['agreement_en']:.3f}, "
              f"zh {row['agreement_zh']:.3f}; {row['images_en'] + row['images_zh']} images), "
              f"training captions to own class {record['nearest_class_accuracy_after']:.3f}, "
              f"{row['seconds']:.0f} s", flush=True)
    best = max(rows, key=lambda r: r["agreement"])
    print(f"best noise on this development set: {best['noise']} ({best['agreement']:.3f})")
    result = {
        "benchmark": "text_align_noise", "machine": machine(), "command": " ".join(sys.argv),
        "checkpoint": str(ckpt.path), "model_sha256": ckpt.sha256, "data": data,
        "init": args.init, "align_steps": args.align_steps, "align_seed": args.align_seed,
        "n_per_prompt": args.n_per_prompt, "seed": args.seed, "sampler": args.sampler,
        "steps": args.steps, "guidance": args.guidance, "prompts": prompts,
        "prompts_file": "benchmarks/data/text_align_dev_prompts.json",
        "classifier": {**classifier_card, "source": "benchmarks/_classifier.py"},
        "rows": rows, "best_noise": best["noise"],
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                  encoding="utf-8")
        print(f"raw output: {args.out}")


if __name__ == "__main__":
    main()
