"""``aigc finetune chat`` (LoRA on SmolLM2 with question -> answer pairs) and
``aigc finetune gpt CHECKPOINT`` (full fine-tuning of our GPT on another corpus).

Both print held-out perplexity before and after, measured the same way.
"""

from __future__ import annotations

import argparse

from aigc.cli._common import add_config_flags, config_flags


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
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--rank", type=int, default=8)
    c.add_argument("--alpha", type=float, default=16.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-val", type=int, default=64, help="held-out pairs for perplexity")
    c.set_defaults(func=run_chat)
    g = fsub.add_parser("gpt", help="continue training a GPT checkpoint on another corpus")
    g.add_argument("checkpoint")
    g.add_argument("--data", required=True, help="text corpus (its characters must be known to "
                   "the checkpoint's tokenizer)")
    g.add_argument("--out", required=True, help="run folder of the fine-tuned model")
    add_config_flags(g, TrainConfig, "training config")
    g.set_defaults(func=run_gpt)


def run_chat(args: argparse.Namespace) -> int:
    from aigc.data.text import load_corpus
    from aigc.finetune import finetune_chat_lora

    corpus = load_corpus(args.data)
    if not corpus.pairs:
        from aigc.errors import DataError

        raise DataError(f"{args.data} has no question -> answer pairs (use a dialogues corpus "
                        'or a .jsonl file with "question" and "answer")')
    result = finetune_chat_lora(
        corpus.pairs["train"], corpus.pairs["val"], args.out, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, rank=args.rank, alpha=args.alpha, seed=args.seed,
        max_val=args.max_val,
    )
    print(f"held-out perplexity {result.perplexity_before:.3f} -> {result.perplexity_after:.3f} "
          f"({result.val_examples} {args.data} val pairs; {result.steps} steps in "
          f"{result.seconds:.0f}s); adapter {result.out}")
    return 0


def run_gpt(args: argparse.Namespace) -> int:
    from aigc.config import TrainConfig, config_from_dict
    from aigc.finetune import finetune_gpt
    from aigc.models.gpt import TRAIN_DEFAULTS

    defaults = {**TRAIN_DEFAULTS, "steps": 500, "lr": 3e-4, "warmup_steps": 20}
    cfg = config_from_dict(TrainConfig, {**defaults, **config_flags(args, TrainConfig)},
                           where="training config")
    result = finetune_gpt(args.checkpoint, args.data, args.out, cfg)
    print(f"held-out perplexity on {args.data} val: {result.perplexity_before:.3f} -> "
          f"{result.perplexity_after:.3f} ({result.steps} steps in {result.seconds:.0f}s); "
          f"checkpoint {result.out}")
    return 0
