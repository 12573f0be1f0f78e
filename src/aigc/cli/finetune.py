"""``aigc finetune chat`` (LoRA on SmolLM2 with question -> answer pairs),
``aigc finetune gpt CHECKPOINT`` (full fine-tuning of our GPT on another corpus) and
``aigc finetune text-align CHECKPOINT`` (fit the prompt path of a text-conditional diffusion
model to its class conditions).

The first two print held-out perplexity before and after, measured the same way.
"""

from __future__ import annotations

import argparse

from aigc.cli._common import add_config_flags, check_out_file, check_out_folder, config_flags


def _finetune_defaults(family: str) -> dict:
    """A fine-tune's TrainConfig defaults: the family's, with a shorter run, a lower learning
    rate and 20 warm-up steps (shown by --help and used by the run)."""
    from aigc.models import family_module

    shorter = {"gpt": {"steps": 500, "lr": 3e-4}, "diffusion": {"steps": 400, "lr": 2e-4}}[family]
    return {**family_module(family).TRAIN_DEFAULTS, **shorter, "warmup_steps": 20}


def register(sub: argparse._SubParsersAction) -> None:
    from aigc.config import TrainConfig

    p = sub.add_parser("finetune", help="fine-tune the chat model (LoRA) or a GPT checkpoint")
    fsub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    c = fsub.add_parser("chat", help="LoRA fine-tune SmolLM2 on question -> answer pairs",
                        description="Adapt SmolLM2-135M-Instruct to question -> answer pairs "
                        "(dialogues, dialogues-en, dialogues-zh, or text:FILE.jsonl with "
                        '{"question": ..., "answer": ...} lines). Saves a LoRA adapter '
                        "(safetensors); use it with `aigc chat --adapter OUT`.")
    c.add_argument("--data", default="dialogues-en")
    c.add_argument("--out", default="runs/chat-lora")
    c.add_argument("--steps", type=int, default=100)
    c.add_argument("--batch-size", type=int, default=8,
                   help="global batch; under torchrun each process takes batch-size / N")
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--rank", type=int, default=8)
    c.add_argument("--alpha", type=float, default=16.0)
    c.add_argument("--dropout", type=float, default=0.05,
                   help="LoRA dropout (default 0.05; 0 makes torchrun runs repeat one process's)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-val", type=int, default=64, help="held-out pairs for perplexity")
    c.set_defaults(func=run_chat)
    g = fsub.add_parser("gpt", help="continue training a GPT checkpoint on another corpus")
    g.add_argument("checkpoint")
    g.add_argument("--data", required=True, help="text corpus (its characters must be known to "
                   "the checkpoint's tokenizer)")
    g.add_argument("--out", required=True, help="run folder of the fine-tuned model")
    g.add_argument("--layers", type=int, help="grow the model to this many layers first (a "
                   "multiple of its depth): each block is repeated, the copies starting as the "
                   "identity, so training begins from the same model with more capacity")
    add_config_flags(g, TrainConfig, "training config", defaults=_finetune_defaults("gpt"))
    g.set_defaults(func=run_gpt)
    d = fsub.add_parser(
        "diffusion", help="continue training a diffusion checkpoint (e.g. on its prompt path)",
        description="Continue training a diffusion checkpoint on the dataset it records, all "
        "weights, with the text-path fields below changed: e.g. --text-prob 0.5 "
        "--text-align-weight 1 --text-noise 0.5 teaches the UNet to render the conditions its "
        "prompts map to. Writes a run folder like `aigc train`.")
    d.add_argument("checkpoint", help="a diffusion checkpoint, run folder or starter:NAME")
    d.add_argument("--out", required=True, help="run folder of the fine-tuned model")
    d.add_argument("--text-prob", type=float, help="share of conditioned examples on a caption")
    d.add_argument("--text-align-weight", type=float, help="weight of the alignment loss")
    d.add_argument("--text-noise", type=float, help="noise on caption embeddings in training")
    add_config_flags(d, TrainConfig, "training config", defaults=_finetune_defaults("diffusion"))
    d.set_defaults(func=run_diffusion)
    a = fsub.add_parser(
        "text-align", help="fit a diffusion model's prompt path to its class conditions",
        description="Train only the text projection of a class- and text-conditional diffusion "
        "model so that the MiniLM embedding of every training caption (plus Gaussian noise, so "
        "unseen paraphrases nearby follow) maps to the condition vector of its class; the UNet "
        "is untouched. Writes a standalone model file with the alignment recorded in its "
        "metadata. Check the result with benchmarks/image_agreement.py.")
    a.add_argument("checkpoint", help="a diffusion checkpoint, run folder or starter:NAME")
    a.add_argument("--out", required=True, help="model file to write (.safetensors)")
    a.add_argument("--steps", type=int, default=2000)
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--noise", type=float, default=0.5,
                   help="std of the noise on unit-norm caption embeddings (default 0.5)")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=run_text_align)


def _train_config(args: argparse.Namespace, family: str):
    """The fine-tune's TrainConfig: :func:`_finetune_defaults`, then what the command line sets."""
    from aigc.config import TrainConfig, config_from_dict

    return config_from_dict(TrainConfig,
                            {**_finetune_defaults(family), **config_flags(args, TrainConfig)},
                            where="training config")


def run_chat(args: argparse.Namespace) -> int:
    from aigc.data.text import load_corpus
    from aigc.finetune import finetune_chat_lora

    check_out_folder(args.out)
    corpus = load_corpus(args.data)
    if not corpus.pairs:
        from aigc.errors import DataError

        raise DataError(f"{args.data} has no question -> answer pairs (use a dialogues corpus "
                        'or a .jsonl file with "question" and "answer")')
    result = finetune_chat_lora(
        corpus.pairs["train"], corpus.pairs["val"], args.out, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, seed=args.seed, max_val=args.max_val,
    )
    print(f"held-out perplexity {result.perplexity_before:.3f} -> {result.perplexity_after:.3f} "
          f"({result.val_examples} {args.data} val pairs; {result.steps} steps in "
          f"{result.seconds:.0f}s); adapter {result.out}")
    return 0


def run_gpt(args: argparse.Namespace) -> int:
    from aigc.finetune import finetune_gpt

    cfg = _train_config(args, "gpt")
    check_out_folder(args.out)
    result = finetune_gpt(args.checkpoint, args.data, args.out, cfg, layers=args.layers)
    print(f"held-out perplexity on {args.data} val: {result.perplexity_before:.3f} -> "
          f"{result.perplexity_after:.3f} ({result.steps} steps in {result.seconds:.0f}s); "
          f"checkpoint {result.out}")
    return 0


def run_text_align(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aigc.checkpoints import save_model_file
    from aigc.errors import ConfigError
    from aigc.models import model_from_checkpoint
    from aigc.models.diffusion import align_text, caption_embeddings
    from aigc.registry import resolve_model

    if not args.out.endswith(".safetensors"):
        raise ConfigError(f"--out must name a .safetensors file, got {args.out!r}")
    check_out_file(args.out)
    model, ckpt = model_from_checkpoint(resolve_model(args.checkpoint))
    if ckpt.family != "diffusion":
        raise ConfigError(f"{ckpt.path} is a {ckpt.family} model; text alignment is for "
                          "diffusion models")
    names = ckpt.meta.get("class_names")
    if not names or "data" not in ckpt.meta:
        raise ConfigError(f"{ckpt.path} records no dataset and class names in its metadata")
    # The aligned model reads prompts with Chinese class words glossed (see gloss_for_minilm).
    model_config = {**ckpt.model_config, "text_encoder": "minilm-zh-gloss"}
    embeddings, labels, _ = caption_embeddings(ckpt.meta["data"], list(names), "minilm-zh-gloss")
    record = align_text(model, embeddings, labels, steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, noise=args.noise, seed=args.seed)
    from aigc.distributed import is_main

    if not is_main():  # under torchrun rank 0 writes the model file
        return 0
    record["from_sha256"] = ckpt.sha256
    meta = {**ckpt.meta, "text_align": record}
    # Keep each tensor's stored dtype (the starters are stored in float16).
    stored = ckpt.ema_weights or ckpt.weights
    weights = {k: v.detach().to(stored[k].dtype if k in stored else v.dtype).clone()
               for k, v in model.state_dict().items()}
    out = save_model_file(Path(args.out), family="diffusion", model_config=model_config,
                          weights=weights, step=ckpt.step, train_config=ckpt.train_config,
                          meta=meta)
    print(f"captions mapped to their own class: {record['nearest_class_accuracy_before']:.1%} "
          f"-> {record['nearest_class_accuracy_after']:.1%} ({record['captions']} captions, "
          f"{args.steps} steps, noise {args.noise}); wrote {out}")
    return 0


def run_diffusion(args: argparse.Namespace) -> int:
    from aigc.finetune import finetune_diffusion
    from aigc.registry import resolve_model

    cfg = _train_config(args, "diffusion")
    overrides = {k: v for k, v in (("text_prob", args.text_prob),
                                   ("text_align_weight", args.text_align_weight),
                                   ("text_noise", args.text_noise)) if v is not None}
    check_out_folder(args.out)
    result = finetune_diffusion(resolve_model(args.checkpoint), args.out, cfg,
                                model_overrides=overrides)
    print(f"{result.step} steps ({result.stopped}); checkpoint {result.checkpoint}")
    return 0
