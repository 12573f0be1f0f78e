"""The emoji CLIP-style scorer on real held-out images: the ceiling for generated images.

Four evaluation sets, English and Chinese:

* ``seen-heldout``: images of training concepts with a *held-out* caption string (never a
  training caption of that concept), one seeded-random held-out caption per image;
* ``unseen``: images of ``test``-split concepts (never trained on), one seeded-random caption.

Per set and round (``--rounds``, each with its own seed): one image per concept, concepts
shuffled and cut into groups of 100 (leftovers dropped), so every group holds 100 distinct
concepts. Reported:

* scorer retrieval: recall@1 and @5 of each image's own caption among the group's 100 captions
  (chance: 1% and 5%);
* CLIPScore-like mean ``100 * max(cos, 0)`` of matching pairs and of mismatched pairs (caption
  of the next image in the group, another concept);
* Chinese text side, without images: recall@1/@5 of the right concept among the group's 100
  concepts (each represented by MiniLM's embedding of its English CLDR name) for the Chinese
  caption encoded by (a) the distilled student, (b) ``gloss_for_minilm`` + MiniLM (run-time
  glossing), (c) raw MiniLM on the Chinese string (no gloss, the floor); the same three feed the
  scorer's image retrieval with Chinese captions.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/emoji_scorer.py --rounds 3 \\
        --model src/aigc/assets/starters/clip-scorer-emoji.safetensors
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

from aigc.metrics.clip_score import CaptionRetrieval, ClipScore  # noqa: E402


def eval_pairs(records, *, held_out: bool, lang: str, seed: int, group: int = 100):
    """``[(record index, caption)]`` with one image per concept, in groups of ``group``
    (:func:`aigc.data.emoji.retrieval_pairs` with one language)."""
    from aigc.data.emoji import retrieval_pairs

    return [(i, caps[0]) for i, caps in retrieval_pairs(records, held_out=held_out, langs=(lang,),
                                                        seed=seed, group=group)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="src/aigc/assets/starters/clip-scorer-emoji.safetensors")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from aigc.checkpoints import file_sha256, resolve_checkpoint
    from aigc.data.emoji import load_emoji
    from aigc.models import model_from_checkpoint
    from aigc.models.clip_scorer import emoji_text_cache, minilm_cache
    from aigc.models.pretrained import embed_sentences, gloss_for_minilm

    print(machine_line())
    t0 = time.time()
    model, ckpt = model_from_checkpoint(args.model)
    cache = emoji_text_cache()
    splits = {"seen-heldout": (load_emoji("train"), True), "unseen": (load_emoji("test"), False)}
    results: dict = {}
    for set_name, (data, held_out) in splits.items():
        for lang in ("en", "zh"):
            methods = ["scorer"] if lang == "en" else ["distilled", "gloss", "raw-minilm"]
            retr = {m: CaptionRetrieval() for m in methods}
            concept_retr = {m: CaptionRetrieval() for m in methods if lang == "zh"}
            match, mismatch = ({m: ClipScore() for m in methods} for _ in range(2))
            for rnd in range(args.rounds):
                pairs = eval_pairs(data.records, held_out=held_out, lang=lang, seed=rnd)
                idx = torch.tensor([i for i, _ in pairs])
                captions = [c for _, c in pairs]
                with torch.no_grad():
                    img = model.encode_images(data.images[idx])
                for m in methods:
                    if m == "scorer":
                        sent = minilm_cache(captions, cache)
                    elif m == "distilled":
                        with torch.no_grad():
                            sent = model.zh.encode(captions)
                    elif m == "gloss":
                        sent = embed_sentences([gloss_for_minilm(c) for c in captions])
                    else:
                        sent = embed_sentences(captions)
                    with torch.no_grad():
                        txt = model.project_text(sent)
                    retr[m].update_embeddings(img, txt)
                    match[m].update_embeddings(img, txt)
                    mismatch[m].update_embeddings(img, txt.roll(1, dims=0))
                    if lang == "zh":
                        names = minilm_cache([data.records[i]["name_en"] for i, _ in pairs], cache)
                        concept_retr[m].update_embeddings(sent, names)
            for m in methods:
                row = {"retrieval_among_100": retr[m].compute(),
                       "clipscore_matching": match[m].compute(),
                       "clipscore_mismatched": mismatch[m].compute()}
                if lang == "zh":
                    row["text_only_concept_among_100"] = concept_retr[m].compute()
                results[f"{set_name}/{lang}/{m}"] = row
                r = row["retrieval_among_100"]
                extra = ""
                if lang == "zh":
                    c = row["text_only_concept_among_100"]
                    extra = f"; text-only concept top1 {c['top1']:.3f} top5 {c['top5']:.3f}"
                print(f"{set_name:13s} {lang} {m:10s} R@1 {r['top1']:.3f} R@5 {r['top5']:.3f} "
                      f"(n={r['queries']}) CLIPScore match {row['clipscore_matching']:.1f} "
                      f"mismatch {row['clipscore_mismatched']:.1f}{extra}")
    report = {
        "benchmark": "emoji_scorer", "command": " ".join(sys.argv), "machine": machine(),
        "model": str(args.model), "model_sha256": file_sha256(resolve_checkpoint(args.model)),
        "model_step": ckpt.step, "rounds": args.rounds, "group": 100,
        "chance": {"top1": 0.01, "top5": 0.05}, "seconds": round(time.time() - t0, 1),
        "results": results,
    }
    out = Path(args.out or f"benchmarks/results/emoji-scorer-{time.strftime('%Y%m%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
