"""``aigc generate CHECKPOINT --prompt TEXT``: stream text from a GPT trained with aigc."""

from __future__ import annotations

import argparse
import sys
import warnings


def add_sampling_flags(p: argparse.ArgumentParser, *, max_tokens: int = 200,
                       temperature: float = 0.8) -> None:
    """The sampling flags shared by ``aigc generate`` and ``aigc chat`` (each its own defaults;
    the help prints the parser's default, so it cannot disagree with the value used)."""
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens,
                   help="tokens to generate, >= 1 (default %(default)s)")
    g.add_argument("--temperature", type=float, default=temperature,
                   help="0 is greedy (default %(default)s)")
    g.add_argument("--top-k", type=int, default=0,
                   help="keep the k most likely tokens, 0: off (default %(default)s)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling, (0, 1], 1: off (default %(default)s)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 0, 1: off (default %(default)s)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end before this string (repeatable); \\n is a newline")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: fresh, printed)")


def sampling_params(args: argparse.Namespace):
    from aigc.generation import SamplingParams

    stops = tuple(s.encode("utf-8").decode("unicode_escape") if "\\" in s else s for s in args.stop)
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, max_tokens=args.max_tokens,
                          stop=stops, seed=args.seed)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a trained GPT (streamed)",
                       description="Continue a prompt with a GPT checkpoint (a run folder, a "
                       "checkpoint folder or a model.safetensors); text is printed as it is made.")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="", help="text to continue (default: start a document)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    add_sampling_flags(p)
    from aigc.cli.music import add_music_flags  # music checkpoints: --bars, --key, --out, ...

    add_music_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aigc.models.music_gpt import is_music_checkpoint

    if is_music_checkpoint(args.checkpoint):  # a music model composes instead (aigc.cli.music)
        from aigc.cli.music import run_generate

        return run_generate(args)
    from aigc.generation import stream_text
    from aigc.models.gpt import load_text_model

    params = sampling_params(args)
    model, tokenizer, ckpt = load_text_model(args.checkpoint, use_ema=not args.raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = stream_text(model, tokenizer, args.prompt, params)
    for w in caught:
        print(f"aigc: warning: {w.message}", file=sys.stderr)
    sys.stdout.write(args.prompt)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"[{len(stream.tokens)} tokens, finish: {stream.finish_reason}, seed {stream.seed}, "
          f"model {ckpt.path}]", file=sys.stderr)
    return 0
