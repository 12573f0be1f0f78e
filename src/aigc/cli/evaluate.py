"""``aigc eval``: measure a model and write a metric card (JSON + Markdown), optionally an HTML
report; ``aigc eval prepare-features``, ``aigc eval compare`` and ``aigc eval convert-inception``.

The first word after ``eval`` picks the action: one of the action names, or else a checkpoint (a
run folder, a checkpoint folder or a model.safetensors). Options follow it.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from aigc.cli._common import check_out_file, check_seed_flag
from aigc.errors import AigcError

ACTIONS = ("prepare-features", "compare", "convert-inception")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="measure a model (metric card + HTML report); compare cards",
        description="aigc eval CHECKPOINT [options]   measure a model\n"
        "aigc eval prepare-features --data NAME   train a dataset's feature classifier\n"
        "aigc eval compare A.json B.json   compare two metric cards (same protocol only)\n"
        "aigc eval convert-inception SRC.pth DST.safetensors   one-time Inception conversion",
        epilog=_measure_parser().format_help() + "\nRun `aigc eval ACTION --help` for an action.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="CHECKPOINT|ACTION")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _measure_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aigc eval CHECKPOINT", add_help=False,
        description="Image models: sample --n images (seeded) and measure FID, KID, IS-style "
        "score, precision/recall, density/coverage, conditional accuracy and memorisation against "
        "the first --n images of the reference split, beside real-vs-real baselines (train split "
        "vs the reference split at the same n). VAEs add test -ELBO and PSNR/SSIM. Text models "
        "(GPT, with the tokenizer saved in the checkpoint): perplexity on the reference split "
        "(sliding windows), --n continuations of held-out prompts scored against the true "
        "continuations (BLEU, chrF, ROUGE), distinct-n, self-BLEU, regulated-verse form rate for "
        "poems, beside the same for real train-split text. Writes a metric card (JSON + "
        "Markdown) with the full protocol. Latent-diffusion models (text to image, on emoji): "
        "--n prompts per set (held-out captions of seen concepts, unseen concepts) and route "
        "(English tokens, English sentence token, Chinese sentence token), scored by the emoji "
        "scorer (retrieval of the prompt among 100 captions, CLIPScore-like) beside the real "
        "images of the same captions, FID/KID on the scorer's image features, and a prompt grid "
        "PNG beside the card.")
    p.add_argument("--data", help="dataset (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="reference split (default test)")
    p.add_argument("--n", "--num-samples", dest="n", type=int,
                   help="real and generated samples (default 10000 for images, 200 continuations "
                   "for text, 300 prompts per set and route for latent diffusion: a multiple of "
                   "100); under torchrun write --num-samples: its parser reads --n as one of "
                   "its own options")
    p.add_argument("--seed", type=int, default=0, help="sampling and subset seed (default 0)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--features", help="extractor: a shipped dataset name, a .safetensors from "
                   "prepare-features, or inception:PATH (default: the dataset's own)")
    p.add_argument("--out", help="card path without suffix (default: RUN/eval/DATA-nN-seedS)")
    p.add_argument("--report", help="also write a self-contained HTML report here")
    p.add_argument("--batch-size", type=int,
                   help="default 500 (images per batch; 50 for latent diffusion)")
    p.add_argument("--seed-block", type=int, default=None,
                   help="images: samples per seeding block, the unit torchrun processes share out "
                   "(default 1000; the figures depend on it, not on the number of processes)")
    p.add_argument("--kid-subset-size", type=int, help="KID subset size (default min(1000, n // 2): "
                   "subsets of all n samples would be identical, std 0)")
    p.add_argument("--no-baseline", action="store_true", help="skip the real-vs-real baseline")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    t = p.add_argument_group("text models")
    t.add_argument("--language", choices=["en", "zh"],
                   help="tokenisation of BLEU/ROUGE/distinct-n (default: detected from the text)")
    t.add_argument("--stride", type=int, help="perplexity window step (default context // 2)")
    t.add_argument("--prompt-chars", type=int, default=200,
                   help="prompt length of prose pieces (default 200)")
    t.add_argument("--continuation-chars", type=int, default=200,
                   help="reference length of prose pieces and cap on continuations (default 200)")
    t.add_argument("--top-k", type=int, help="text sampling top-k (default 0: off)")
    t.add_argument("--top-p", type=float, help="text sampling top-p (default 1: off)")
    d = p.add_argument_group("latent-diffusion models (text to image on emoji)")
    d.add_argument("--scorer", help="the CLIP-style emoji scorer (default: the shipped "
                   "starter clip-scorer-emoji)")
    d.add_argument("--routes", help="comma-separated prompt routes (default: all of "
                   "en-tokens,en-sentence,zh-sentence)")
    g = p.add_argument_group("sampling options (passed to model.sample when given)")
    g.add_argument("--sampler")
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float)
    g.add_argument("--temperature", type=float)
    p.add_argument("-h", "--help", action="help", help="show this help")
    return p


def run(args: argparse.Namespace) -> int:
    if args.target in ACTIONS:
        return {"prepare-features": _run_prepare, "compare": _run_compare,
                "convert-inception": _run_convert}[args.target](args.rest)
    opts = _measure_parser().parse_args(args.rest)
    check_seed_flag(opts)
    for flag, path in (("--out", opts.out), ("--report", opts.report)):
        if path:
            check_out_file(path, flag)
    return _run_measure(args.target, opts)


# ------------------------------------------------------------------------ measure


def _effective_sampling(model, given: dict) -> dict:
    """The sampling keywords given, plus the defaults of ``model.sample`` for the rest."""
    params = inspect.signature(model.sample).parameters
    out = {}
    for name, prm in params.items():
        if name in ("self", "n", "generator", "labels", "text", "progress"):
            continue
        if name in given:
            out[name] = given[name]
        elif prm.default is not inspect.Parameter.empty:
            out[name] = prm.default
    return out


def evaluate_checkpoint(path, *, data: str | None = None, split: str = "test",
                        n: int | None = None, seed: int = 0, use_ema: bool = True,
                        features: str | None = None, sample_kwargs: dict | None = None,
                        batch_size: int = 500, kid_subset_size: int | None = None,
                        baseline: bool = True, device: str = "cpu", language: str | None = None,
                        text_options: dict | None = None, progress: bool = True,
                        seed_block: int | None = None, scorer: str | None = None,
                        routes: tuple[str, ...] | None = None):
    """Measure one checkpoint. Returns an :class:`ImageEvaluation` (images), a
    :class:`TextEvaluation` (text), a :class:`TextToImageEvaluation` (latent diffusion) or a
    :class:`MetricCard` (images without an extractor).

    ``n`` defaults to 10000 images or 200 text continuations; ``text_options`` holds
    :func:`aigc.evaluate.evaluate_language_model`'s ``stride``, ``prompt_chars``,
    ``continuation_chars``, ``top_k`` and ``top_p``."""
    from aigc.models import family_module, model_from_checkpoint, pick_device

    if n is not None and n < 2:
        raise AigcError(f"--n must be >= 2, got {n}")
    from aigc.distributed import context, device_for

    dev = str(device_for(context(), pick_device(device)))
    model, ckpt = model_from_checkpoint(path, use_ema=use_ema, map_location=dev)
    data = data or ckpt.meta.get("data")
    if not data:
        raise AigcError(f"{ckpt.path} does not record its dataset; pass --data")
    module = family_module(ckpt.family)
    ema = bool(use_ema and ckpt.ema_weights is not None)
    subject = {"checkpoint": str(ckpt.path), "checkpoint_sha256": ckpt.sha256,
               "family": ckpt.family, "step": ckpt.step, "trained_on": ckpt.meta.get("data")}
    if ckpt.family == "latent-diffusion":
        return _evaluate_text_to_image_checkpoint(
            model, ckpt, data=data, split=split, n=n, seed=seed, ema=ema,
            sample_kwargs=sample_kwargs or {}, batch_size=batch_size or 50,
            kid_subset_size=kid_subset_size, baseline=baseline, subject=subject,
            progress=progress, scorer=scorer, routes=routes, features=features,
            seed_block=seed_block, device=dev)
    if scorer is not None or routes is not None:
        raise AigcError(f"--scorer and --routes apply to latent-diffusion checkpoints; "
                        f"{ckpt.path} is a {ckpt.family!r} checkpoint")
    batch_size = batch_size or 500
    kind = getattr(module, "DATA_KIND", "images")
    if context().distributed and kind not in ("images", "text"):
        raise AigcError(f"aigc eval splits only image and text models across torchrun "
                        f"processes; run this {kind} model's evaluation as one process")
    if kind == "text":
        return _evaluate_text_checkpoint(model, ckpt, data=data, split=split, n=n or 200,
                                         seed=seed, ema=ema, sample_kwargs=sample_kwargs or {},
                                         text_options=text_options or {}, language=language,
                                         baseline=baseline, subject=subject, progress=progress)
    n = n or 10000
    if kind != "images":
        if kind == "music":
            raise AigcError(f"{ckpt.path} is a music model: measure it with `aigc music eval "
                            f"{path}` (held-out perplexity and pitch/rhythm statistics beside an "
                            "n-gram baseline and the held-out corpus)")
        raise AigcError(f"aigc eval does not measure {kind!r} models yet")
    return _evaluate_image_checkpoint(model, ckpt, data=data, split=split, n=n, seed=seed,
                                      ema=ema, features=features, sample_kwargs=sample_kwargs,
                                      batch_size=batch_size, kid_subset_size=kid_subset_size,
                                      baseline=baseline, subject=subject, device=dev,
                                      progress=progress, seed_block=seed_block)


def _evaluate_text_to_image_checkpoint(model, ckpt, *, data, split, n, seed, ema, sample_kwargs,
                                      batch_size, kid_subset_size, baseline, subject, progress,
                                      scorer, routes, features, seed_block, device):
    """A latent-diffusion model on emoji, measured with the CLIP-style emoji scorer."""
    from aigc.distributed import context
    from aigc.evaluate.text_to_image import DEFAULT_N, ROUTES, evaluate_text_to_image
    from aigc.models import model_from_checkpoint
    from aigc.registry import starter_path

    if data != "emoji":
        raise AigcError(f"latent-diffusion evaluation measures text to image on emoji (the "
                        f"scorer's dataset); {ckpt.path} gives data {data!r}")
    for flag, value in (("--features", features), ("--seed-block", seed_block)):
        if value is not None:
            raise AigcError(f"{flag} does not apply to latent-diffusion evaluation (its features "
                            "are the scorer's image tower; it runs as one process)")
    if split != "test":
        raise AigcError(f"--split does not apply to latent-diffusion evaluation (its sets are "
                        f"fixed: held-out captions of train concepts, test concepts), got {split}")
    if "temperature" in sample_kwargs:
        raise AigcError("--temperature does not apply to latent-diffusion models")
    if context().distributed:
        raise AigcError("latent-diffusion evaluation runs as one process, not under torchrun")
    scorer_path = scorer or str(starter_path("clip-scorer-emoji"))
    scorer_model, scorer_ckpt = model_from_checkpoint(scorer_path, map_location=device)
    if scorer_ckpt.family != "clip-scorer":
        raise AigcError(f"--scorer {scorer_path} is a {scorer_ckpt.family!r} checkpoint, not a "
                        "clip-scorer")
    subject = {**subject, "scorer": str(scorer_ckpt.path)}
    return evaluate_text_to_image(
        model, scorer_model, n=DEFAULT_N if n is None else n, seed=seed,
        sample_kwargs=sample_kwargs, routes=ROUTES if routes is None else routes,
        batch_size=batch_size, kid_subset_size=kid_subset_size, baseline=baseline,
        subject=subject, scorer_info={"sha256": scorer_ckpt.sha256, "step": scorer_ckpt.step},
        extra_protocol={"ema": ema}, progress=progress)


def _evaluate_text_checkpoint(model, ckpt, *, data, split, n, seed, ema, sample_kwargs,
                              text_options, language, baseline, subject, progress):
    """A GPT with its own tokenizer (from the checkpoint) on a text corpus."""
    from aigc.data.text import load_corpus
    from aigc.evaluate import evaluate_language_model, tokenizer_sha256
    from aigc.tokenizers import tokenizer_from_dict

    if "tokenizer" not in ckpt.meta:
        raise AigcError(f"{ckpt.path} has no tokenizer in its metadata: it was not trained on "
                        "a text corpus, so there is no text to measure it on")
    unknown = set(sample_kwargs) - {"temperature"}
    if unknown:
        raise AigcError(f"text models take --temperature, --top-k and --top-p, not "
                        f"{sorted('--' + k for k in unknown)}")
    tokenizer = tokenizer_from_dict(ckpt.meta["tokenizer"])
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise AigcError(f"{ckpt.path}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                        f"model only {model.cfg.vocab_size}")
    subject = {**subject, "tokenizer_sha256": tokenizer_sha256(tokenizer)}
    options = {k: v for k, v in text_options.items() if v is not None}
    return evaluate_language_model(
        model, tokenizer, load_corpus(data), n=n, seed=seed, split=split,
        temperature=sample_kwargs.get("temperature", 1.0), language=language,
        baseline=baseline, subject=subject, extra_protocol={"ema": ema}, progress=progress,
        **options)


def _evaluate_image_checkpoint(model, ckpt, *, data, split, n, seed, ema, features, sample_kwargs,
                               batch_size, kid_subset_size, baseline, subject, device, progress,
                               seed_block=None):
    from aigc.data.images import load_images
    from aigc.evaluate import evaluate_image_model
    from aigc.metrics.features import load_extractor

    cfg = model.cfg
    ref = load_images(data, split)
    if (ref.channels, ref.image_size) != (cfg.image_channels, cfg.image_size):
        raise AigcError(f"{data} images are {ref.channels}x{ref.image_size}x{ref.image_size}; "
                        f"the model makes {cfg.image_channels}x{cfg.image_size}x{cfg.image_size}")
    try:
        extractor = load_extractor(features or data, device=device)
    except AigcError:
        if features is not None:
            raise
        extractor = None  # e.g. a user's folder: no shipped extractor, measure what needs none
    if extractor is None:
        from aigc.distributed import is_main
        from aigc.metrics.card import MetricCard

        if not is_main():  # nothing here is split across processes: rank 0 measures
            return None

        card = MetricCard(kind="image", subject=subject, values={}, protocol={
            "data": data, "split": split, "n": min(n, len(ref)), "seed": seed, "ema": ema})
        _likelihood_and_reconstruction(model, ref, card, n=n, seed=seed, batch_size=batch_size,
                                       progress=progress)
        card.notes.append(
            f"No feature extractor for {data}: FID, KID, IS and precision/recall were not measured. "
            f"For labelled data, `aigc eval prepare-features --data {data}` trains one; pass it "
            "with --features.")
        return card
    sampling = _effective_sampling(model, sample_kwargs or {})
    extra = {"ema": ema, "sampler": sampling.get("sampler"), "steps": sampling.get("steps"),
             "guidance": sampling.get("guidance")}
    result = evaluate_image_model(
        model, data=data, extractor=extractor, n=n, seed=seed, reference_split=split,
        sample_kwargs=sample_kwargs, subject=subject, extra_protocol=extra,
        batch_size=batch_size, kid_subset_size=kid_subset_size, baseline=baseline,
        progress=progress, **({"seed_block": seed_block} if seed_block else {}))
    if result is None:  # not rank 0 under torchrun
        return None
    result.card.protocol["sampling"] = sampling
    _likelihood_and_reconstruction(model, ref, result.card, n=n, seed=seed,
                                   batch_size=batch_size, progress=progress)
    result.card.notes.append(
        f"Extractor {extractor.name} (sha256 {extractor.sha256[:12]}...): numbers measured with "
        "another extractor are not comparable.")
    return result


def _likelihood_and_reconstruction(model, ref, card, *, n, seed, batch_size, progress) -> None:
    """Add PSNR/SSIM of reconstructions and the VAE's test -ELBO to ``card`` when they apply."""
    if hasattr(model, "reconstruct"):
        from aigc.metrics.image import reconstruction_quality

        values = reconstruction_quality(model, ref, n=n, batch_size=batch_size, progress=progress)
        card.values.update({k: v for k, v in values.items() if k != "n"})
        card.protocol["psnr_ssim"] = ("torchmetrics PSNR (per-image mean, data_range 1) "
                                      "and SSIM (11x11 gaussian) of reconstructions")
    if getattr(model.cfg, "likelihood", None) == "bernoulli" and hasattr(model, "negative_elbo"):
        from aigc.metrics.likelihood import vae_negative_elbo

        values = vae_negative_elbo(model, ref, seed=seed, n=n, batch_size=batch_size,
                                   progress=progress)
        card.values.update({k: v for k, v in values.items() if k != "n"})
        card.protocol["negative_elbo"] = ("dynamic binarisation x~Bernoulli(pixel), "
                                          "1 posterior sample, nats/image")


def _default_out(ckpt_path: str, data: str, n: int, seed: int) -> Path:
    from aigc.checkpoints import resolve_checkpoint

    file = resolve_checkpoint(ckpt_path)
    run_dir = file.parent
    if file.parent.parent.name == "checkpoints":
        run_dir = file.parent.parent.parent
    return run_dir / "eval" / f"{data.replace(':', '_').replace('/', '_')}-n{n}-seed{seed}"


def _run_measure(checkpoint: str, opts: argparse.Namespace) -> int:
    from aigc.evaluate import ImageEvaluation, TextEvaluation, TextToImageEvaluation
    from aigc.metrics.card import MetricCard, format_value

    given = {k: getattr(opts, k) for k in ("sampler", "steps", "guidance", "temperature")
             if getattr(opts, k) is not None}
    routes = None
    if opts.routes is not None:
        routes = tuple(r.strip() for r in opts.routes.split(",") if r.strip())
    text_options = {"stride": opts.stride, "prompt_chars": opts.prompt_chars,
                    "continuation_chars": opts.continuation_chars, "top_k": opts.top_k,
                    "top_p": opts.top_p}
    result = evaluate_checkpoint(
        checkpoint, data=opts.data, split=opts.split, n=opts.n, seed=opts.seed,
        use_ema=not opts.raw, features=opts.features, sample_kwargs=given,
        batch_size=opts.batch_size, kid_subset_size=opts.kid_subset_size,
        baseline=not opts.no_baseline, device=opts.device, language=opts.language,
        text_options=text_options, seed_block=opts.seed_block, scorer=opts.scorer,
        routes=routes)
    if result is None:  # not rank 0 under torchrun: rank 0 reports and writes
        return 0
    if isinstance(result, TextToImageEvaluation):
        return _write_text_to_image(checkpoint, result, opts)
    card = result if isinstance(result, MetricCard) else result.card
    print(f"{'metric':>24}  {'model':>12}  {'real vs real':>12}")
    for key, value in card.values.items():
        if not isinstance(value, (list, dict)):
            print(f"{key:>24}  {format_value(value):>12}  "
                  f"{format_value(card.baseline.get(key, '')):>12}")
    n = card.protocol.get("n_generated") or card.protocol.get("continuations", {}).get("n") \
        or opts.n
    out = Path(opts.out) if opts.out else _default_out(
        checkpoint, card.protocol.get("data", "data"), n, opts.seed)
    js, md = card.write(out)
    print(f"metric card: {js} and {md}")
    if isinstance(result, TextEvaluation):
        texts = js.with_name(js.name[:-len(".json")] + ".samples.jsonl")
        texts.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n"
                                 for s in result.samples), encoding="utf-8")
        print(f"continuations: {texts}")
    if opts.report:
        from aigc.metrics.report import find_log, read_curves, write_report

        pictures = {}
        if isinstance(result, ImageEvaluation):
            pictures = {"samples": result.samples, "real": result.real,
                        "neighbours": result.neighbours,
                        "neighbour_distances": result.neighbour_distances}
        elif isinstance(result, TextEvaluation):
            pictures = {"texts": result.samples}
        log = find_log(Path(card.subject["checkpoint"]))
        curves = read_curves(log) if log else None
        print(f"report: {write_report(opts.report, card, curves=curves, **pictures)}")
    return 0


def _write_text_to_image(checkpoint: str, result, opts: argparse.Namespace) -> int:
    """Print the rows, write the card, the prompt grid (with its record) and the report."""
    from aigc.media import save_grid
    from aigc.metrics.card import format_value
    from aigc.records import checkpoint_ref, runtime

    card = result.card
    print(f"{'set':<13} {'route':<12} {'judged':<7} {'top1':>6} {'top5':>6} {'clip':>6}   "
          f"real: {'top1':>6} {'top5':>6} {'clip':>6}")
    for row in card.values["retrieval"]:
        g, r = row["generated"], row["real"]
        print(f"{row['set']:<13} {row['route']:<12} {row['judged_against'][:2]:<7} "
              f"{g['top1']:>6.3f} {g['top5']:>6.3f} {g['clipscore']:>6.1f}         "
              f"{r['top1']:>6.3f} {r['top5']:>6.3f} {r['clipscore']:>6.1f}")
    print(f"{'metric':>24}  {'model':>12}  {'real vs real':>12}")
    for key, value in card.values.items():
        if key.startswith(("fid", "kid")):
            print(f"{key:>24}  {format_value(value):>12}  "
                  f"{format_value(card.baseline.get(key, '')):>12}")
    for note in card.notes[:2]:
        print(note)
    print(f"wall: {card.environment['wall_seconds']} s")
    n = card.protocol["n_per_set"]
    out = Path(opts.out) if opts.out else _default_out(checkpoint, "emoji-text-to-image", n,
                                                       opts.seed)
    js, md = card.write(out)
    print(f"metric card: {js} and {md}")
    grid = js.with_name(js.name[:-len(".json")] + ".grid.png")
    record = {"kind": "eval-grid", "checkpoint": checkpoint_ref(card.subject["checkpoint"]),
              "model_sha256": card.subject["checkpoint_sha256"], "family": "latent-diffusion",
              "step": card.subject["step"], "ema": card.protocol.get("ema"),
              "options": card.protocol["sampling"], "seed": card.protocol["seed"],
              "scorer_sha256": card.protocol["scorer"]["sha256"],
              "layout": "one row per (set, prompt, route): the real image, then one image per "
                        "seed", "rows": result.grid_rows, **runtime()}
    save_grid(grid, result.grid, nrow=result.grid_columns, record=record)
    print(f"prompt grid: {grid}")
    if opts.report:
        from aigc.metrics.report import find_log, read_curves, write_report

        log = find_log(Path(card.subject["checkpoint"]))
        curves = read_curves(log) if log else None
        page = write_report(opts.report, card, curves=curves, samples=result.samples,
                            real=result.real)
        print(f"report: {page}")
    return 0


# ------------------------------------------------------------------------ actions


def _run_prepare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="aigc eval prepare-features",
        description="Train the feature classifier of a labelled image dataset (the extractor "
        "for FID/KID/IS/precision-recall) and write it as safetensors. Deterministic for a "
        "given seed, torch version and thread count. Refuses (exit 2, nothing written) an "
        "extractor with a feature that is constant on the validation images. The shipped "
        "mnist / fashion-mnist extractors were built with this command and its defaults.")
    p.add_argument("--data", required=True, help="mnist, fashion-mnist or folder:PATH (labelled)")
    p.add_argument("--out", help="output .safetensors (default features/DATA.safetensors)")
    p.add_argument("--epochs", type=int, help="default 3 for mnist, 6 otherwise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: what the shipped extractor used, else 1)")
    args = p.parse_args(argv)
    check_seed_flag(args)
    if args.out:
        check_out_file(args.out)
    import torch

    from aigc.metrics.features import shipped_records, train_classifier

    shipped = shipped_records().get(args.data)
    torch.set_num_threads(args.threads or (shipped or {}).get("threads", 1))
    out = Path(args.out or f"features/{args.data.replace(':', '_').replace('/', '_')}"
               ".safetensors")
    summary = train_classifier(args.data, out, epochs=args.epochs, seed=args.seed,
                               batch_size=args.batch_size)
    print(f"{args.data}: val accuracy {summary['val_accuracy']}, test accuracy "
          f"{summary['test_accuracy']}, {summary['train_seconds']:.0f} s")
    print(f"wrote {summary['file']} (sha256 {summary['sha256']})")
    if shipped:
        same = "identical to" if shipped["sha256"] == summary["sha256"] else "differs from"
        print(f"{same} the shipped extractor (sha256 {shipped['sha256']})")
    print(f"use it with: aigc eval CHECKPOINT --data {args.data} --features {out}")
    return 0


def _run_compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="aigc eval compare", description="Compare two metric cards side by side. Refuses "
        "(exit 2) when their protocols differ, naming the differing fields.")
    p.add_argument("a", help="first card (.json)")
    p.add_argument("b", help="second card (.json)")
    args = p.parse_args(argv)
    from aigc.metrics.card import MetricCard, compare_cards, format_value

    a, b = MetricCard.read(args.a), MetricCard.read(args.b)
    result = compare_cards(a, b)
    print(f"A: {a.subject.get('checkpoint', args.a)}\nB: {b.subject.get('checkpoint', args.b)}")
    print(f"{'metric':>24}  {'A':>10}  {'B':>10}  {'B-A':>10}  better  {'real vs real':>12}")
    for r in result["rows"]:
        print(f"{r['metric']:>24}  {format_value(r['a']):>10}  {format_value(r['b']):>10}  "
              f"{format_value(r['b_minus_a']):>10}  {r['better']:>6}  "
              f"{format_value(r['baseline'] if r['baseline'] is not None else ''):>12}")
    if result["version_differences"]:
        print("note: library versions differ: " + ", ".join(result["version_differences"]))
    return 0


def _run_convert(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="aigc eval convert-inception",
        description="Convert the standard FID Inception weights (pt_inception-2015-12-05-*.pth, "
        "a torch pickle) to safetensors once, with torch.load(weights_only=True), the restricted "
        "loader that refuses to run code. Then: aigc eval CKPT --features inception:DST")
    p.add_argument("src")
    p.add_argument("dst")
    args = p.parse_args(argv)
    from aigc.checkpoints import file_sha256
    from aigc.metrics.features import convert_inception_pth

    dst = convert_inception_pth(args.src, args.dst)
    print(f"wrote {dst} (sha256 {file_sha256(dst)})")
    return 0
