"""How aigc's GPT kernels (GELU, attention, fused MLP) are called: through their custom ops
(``torch.library.custom_op``, with a Python autograd kernel on every call) or through an
``autograd.Function`` (what ``aigc.models.native`` does: in eager mode around the ctypes calls,
since 2026-11-30; under ``torch.compile`` around plain operators with no autograd kernel, traced
into the graph, since 2026-12-01). Same kernels, same numbers (tests/test_native_kernels.py);
only the Python dispatch around them differs.

One GPT training step (the defaults of benchmarks/gpt_speed.py: 4 layers, width 128, context 64,
batch 12, austen characters; fused AdamW), eager (the trainer's default) or compiled
(``--compiled``: ``CompiledLoss``, as gpt_speed's ``ours fused+compile``), the two variants timed
in interleaved rounds in one process (benchmarks/_timing.py), ratio by CPU time:

    OMP_NUM_THREADS=1 python benchmarks/native_dispatch.py --rounds 11 [--compiled]

The "custom ops" variant swaps aigc's GELU, attention and MLP entry points for wrappers that
call the custom ops wherever a gradient is recorded or the compiler traces (the previous
behaviour); nothing else changes.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compiled", action="store_true",
                    help="time the torch.compile'd step instead of the eager one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from _machine import machine_line
    from _timing import interleaved, load_average, ratio_spread, warm_up
    from gpt_speed import events_of_one_step, make_step

    from aigc.data.text import load_corpus
    from aigc.data.tokens import TokenWindows, encode_documents
    from aigc.models import gpt as gpt_module
    from aigc.models import native
    from aigc.models.gpt import GPT, GPTConfig
    from aigc.tokenizers import CharTokenizer
    from aigc.train import CompiledLoss

    print(machine_line())
    print(load_average() + " (before)")
    print(f"routes: GELU {native.gelu_route()}, attention {native.attention_route()}, "
          f"MLP {native.mlp_route()}")
    if "torch" in (native.gelu_route(), native.attention_route(), native.mlp_route()):
        raise SystemExit("the native kernels are not this machine's route: nothing to compare")
    corpus = load_corpus("austen")
    tok = CharTokenizer.train([d for s in ("train", "val", "test") for d in corpus.documents(s)])
    windows = TokenWindows(encode_documents(tok, corpus.documents("val")), 64, stride=64)
    gen = torch.Generator().manual_seed(0)
    batches = [windows.get_batch(torch.randint(0, len(windows), (12,), generator=gen))["tokens"]
               for _ in range(8)]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=64, layers=4, heads=4,
                          width=128))

    function_gelu, function_attention = gpt_module.gelu_tanh, native.native_causal_attention
    function_mlp = native.gpt_mlp

    def op_gelu(x):
        if x.requires_grad and torch.is_grad_enabled() and native.gelu_route() == "native" \
                and x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
            return native._gelu_op(x)
        return function_gelu(x)

    def op_attention(qkv, heads, bias=None):
        if native._call_path(qkv, bias) != "direct":
            return native._attention_op(qkv, heads, bias)[0]
        return function_attention(qkv, heads, bias)

    def op_mlp(x, fc, proj):
        args = (x.reshape(-1, x.shape[-1]), fc.weight, fc.bias, proj.weight, proj.bias)
        if native._call_path(*args) != "direct":
            y = native._mlp_op(*args)[0]
            return y.view(*x.shape[:-1], y.shape[-1])
        return function_mlp(x, fc, proj)

    def variant(gelu, attention, mlp):
        m = copy.deepcopy(model)
        loss = CompiledLoss(m) if args.compiled else m.loss
        step = make_step(m, lambda t: loss({"tokens": t}), batches, fused=True, bf16=False)

        def run():
            gpt_module.gelu_tanh, native.native_causal_attention = gelu, attention
            native.gpt_mlp = mlp
            try:
                return step()
            finally:
                gpt_module.gelu_tanh = function_gelu
                native.native_causal_attention = function_attention
                native.gpt_mlp = function_mlp
        return run

    variants = {"custom ops": variant(op_gelu, op_attention, op_mlp),
                "autograd.Function": variant(function_gelu, function_attention, function_mlp)}
    losses = {name: [run().item() for _ in range(3)] for name, run in variants.items()}
    # Each variant has its own copy of the model but, compiled, the same code (``model.loss``):
    # the compiler reuses a graph unless something it guards differs. The swapped entry points
    # are such a thing; this shows it, from what one step of each calls.
    called = {}
    for name, run in variants.items():
        called[name] = sorted(k for k in events_of_one_step(run) if k.startswith("aigc"))
        print(f"aigc's operators in one step, {name}: {', '.join(called[name]) or 'none'}")
    if called["custom ops"] == called["autograd.Function"]:
        raise SystemExit("both variants call the same operators: the compiler reused one graph "
                         "for both, so there is nothing to compare; nothing timed")
    same = losses["custom ops"] == losses["autograd.Function"]
    print(f"the first 3 losses of each variant identical: {same}")
    warm_up(variants, 3)
    res = interleaved(variants, args.rounds, args.steps)
    mode = "compiled" if args.compiled else "eager"
    print(f"\n{mode} GPT training step, {args.threads} thread(s), {args.rounds} interleaved rounds "
          f"x {args.steps} steps (median)")
    print(f"  {'kernels called through':<22} {'ms/step (cpu)':>14} {'ms/step (wall)':>15}")
    for name, r in res.items():
        print(f"  {name:<22} {r['cpu'] * 1e3:14.2f} {r['wall'] * 1e3:15.2f}")
    print(f"autograd.Function against the custom ops, by CPU time: "
          f"{ratio_spread(res['custom ops'], res['autograd.Function'])}")
    print(load_average() + " (after)")


if __name__ == "__main__":
    main()
