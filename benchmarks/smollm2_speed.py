"""SmolLM2-135M-Instruct chat generation: aigc against transformers' ``generate``, 1 thread.

Greedy, one fixed chat prompt, 128 new tokens on every side (ours: ``stop_at_end=False``; the
peer: ``min_new_tokens=128``; the prompt's reply does not reach an end token in 128 tokens at
float32, checked and printed below). Rows:

* as shipped: ``aigc.models.pretrained.chat`` with ``decoder="transformers"`` (transformers'
  forward, ``DynamicCache``, fed one token at a time: the path before the lean decoder) against
  ``model.generate`` as it comes (float32, ``DynamicCache``);
* every speed option on our side (:class:`aigc.models.llama_decode.LeanLlama`, through the same
  ``chat()`` path the CLI and the studio use; its small operations by the native kernels where
  :func:`aigc.models.native.decode_route` measured them faster, and one int4 row with ATen's
  operations instead, to show what they add), and the same option given to the peer: the
  same weight-only int8 weights and kernel (``_weight_int8pack_mm``, bf16 activations), or the
  same int4 layer weights (``_weight_int4pack_mm_for_cpu``, groups of 32: the GGUF's Q4_1
  blocks) with the int8 head, swapped into its ``nn.Linear`` layers; bf16 weights
  (``model.to(bfloat16)``); the static KV cache (``cache_implementation="static"``).
  ``torch.compile`` is not among them: compiling our one-token step (inductor, 1 thread, about
  70 s) made it slower (fp32 65 vs 46 ms/token, int8 45 vs 29; a 40-token check, not a row).

Agreement with float32 greedy (transformers' generate, float32) for every variant: identical
tokens or the first position that differs, and the largest absolute difference of the
next-token logits after the prompt.

Timing: :func:`benchmarks._timing.interleaved`, one generation per variant per round, the order
rotating; median CPU-time and wall-time ratios with their spread over rounds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/smollm2_speed.py --rounds 5

Exits 2 when the SmolLM2 weights are not installed.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NEW_TOKENS = 128
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds "
                                      "a message in a bottle."}]


def _quantized_peer(model, weights: str):
    """A copy of the transformers model whose linear layers hold the same weights and use the
    same kernel as our ``weights="int8"`` / ``"int4"`` (int4: layers only, lm_head int8)."""
    import torch

    from aigc.models.llama_decode import _Linear

    class QuantizedLinear(torch.nn.Module):
        def __init__(self, linear, kind):
            super().__init__()
            self.inner = _Linear(linear.weight, kind)

        def forward(self, x):
            shape = x.shape
            y = self.inner(x.reshape(-1, shape[-1]).float())
            return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)

    peer = copy.deepcopy(model)
    for module in list(peer.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                kind = "int8" if child_name == "lm_head" else weights
                setattr(module, child_name, QuantizedLinear(child, kind))
    return peer.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=NEW_TOKENS)
    args = ap.parse_args()
    if args.rounds < 1 or args.tokens < 1:
        print("--rounds and --tokens must be >= 1", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from aigc.errors import AigcError
    from aigc.generation import SamplingParams
    from aigc.models.pretrained import _smollm2_hf, chat, load_smollm2, smollm2_dir
    from benchmarks._machine import machine_line, matmul_peak, step_flops
    from benchmarks._timing import interleaved, load_average, ratio_spread, warm_up

    try:
        smollm2_dir()
    except AigcError as exc:
        print(f"SmolLM2 weights not present: {exc}", file=sys.stderr)
        return 2

    print(machine_line())
    peak = matmul_peak("float32")
    print(f"matmul peak: float32 {peak:.0f} GFLOP/s, "
          f"bfloat16 {matmul_peak('bfloat16'):.0f} GFLOP/s (1024^3, this thread count)")
    print(load_average())
    hf_tokenizer, model = _smollm2_hf()
    import transformers

    print(f"transformers {transformers.__version__}; SmolLM2-135M-Instruct (GGUF Q4_1 "
          f"de-quantized to float32); greedy, {args.tokens} new tokens; rounds {args.rounds}")

    n = args.tokens
    params = SamplingParams(temperature=0, max_tokens=n, stop_at_end=False)
    ours = {"shipped": load_smollm2(decoder="transformers")[0]}
    tokenizer = load_smollm2()[1]
    for w in ("float32", "bfloat16", "int8", "int4"):
        ours[w] = load_smollm2(w)[0]
    prompt_ids = tokenizer.chat_ids(PROMPT)
    x = torch.tensor([prompt_ids])
    print(f"prompt: {len(prompt_ids)} tokens, {PROMPT[0]['content']!r}")
    # FLOPs of one decoding step (the float32 model, one token after the prompt): the products
    # torch.utils.flop_counter counts, i.e. the linear layers and the head; attention over the
    # cache (under 3% at these lengths) is not counted. The same yardstick for every row.
    with torch.no_grad():
        cache = model(input_ids=x, use_cache=True).past_key_values
        token_flops = step_flops(lambda: model(input_ids=x[:, -1:], past_key_values=cache,
                                               use_cache=True))
    print(f"FLOPs per new token: {token_flops / 1e9:.3f} G (linear layers and head); GFLOP/s "
          f"below = {n} x that / time, the prompt's prefill not counted: a lower bound")

    peers = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16).eval(),
             "int8": _quantized_peer(model, "int8"), "int4": _quantized_peer(model, "int4")}

    from aigc.models import native

    print(f"aigc decode route (RMSNorm, rotary + cache, SiLU product; aigc.models.native): "
          f"{native.decode_route()}")

    def our_run(lm, decode=None):
        def run():
            with native.routes(decode=decode):
                return chat(PROMPT, params, model=lm, tokenizer=tokenizer).result().tokens
        return run

    def peer_run(m, **kw):
        @torch.no_grad()
        def run():
            out = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, **kw)
            return out[0, len(prompt_ids):].tolist()
        return run

    static = {"cache_implementation": "static"}
    variants = {
        "ours as shipped (transformers forward, fp32)": our_run(ours["shipped"]),
        "peer as shipped (generate, fp32)": peer_run(peers["fp32"]),
        "ours lean fp32": our_run(ours["float32"]),
        "peer generate fp32, static cache": peer_run(peers["fp32"], **static),
        "ours lean bf16 weights": our_run(ours["bfloat16"]),
        "peer generate bf16 model": peer_run(peers["bf16"]),
        "ours lean int8 weight-only": our_run(ours["int8"]),
        "peer generate int8 weight-only (same kernel)": peer_run(peers["int8"]),
        "ours lean int4 layers + int8 head": our_run(ours["int4"]),
        "ours lean int4, ATen small operations": our_run(ours["int4"], "torch"),
        "peer generate int4 layers + int8 head (same)": peer_run(peers["int4"]),
        "peer generate int4 + int8 head, static cache": peer_run(peers["int4"], **static),
    }

    # ---- agreement with float32 greedy (transformers generate, float32)
    with torch.no_grad():
        ref_logits = model(x).logits[0, -1].float()
    ref_tokens = variants["peer as shipped (generate, fp32)"]()
    end_ids = ours["float32"].end_ids
    hits = [i for i, t in enumerate(ref_tokens) if t in end_ids]
    print(f"float32 reference reply reaches an end token: "
          f"{'at ' + str(hits[0]) if hits else 'no'}")
    print(f"float32 reference reply: {tokenizer.decode(ref_tokens)!r}")
    print("\nagreement with float32 greedy (transformers generate):")
    prompt_logits = {
        "ours as shipped (transformers forward, fp32)": ours["shipped"],
        "ours lean fp32": ours["float32"], "ours lean bf16 weights": ours["bfloat16"],
        "ours lean int8 weight-only": ours["int8"],
        "ours lean int4 layers + int8 head": ours["int4"],
        "ours lean int4, ATen small operations": ours["int4"],
    }
    for name, run in variants.items():
        tokens = run()
        first = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
        if name in prompt_logits:
            lm = prompt_logits[name]
            with native.routes(decode="torch" if "ATen small" in name else None):
                lm.reset()
                logits = lm.feed(prompt_ids).float()
        else:
            m = (peers["bf16"] if "bf16" in name else peers["int4"] if "int4" in name
                 else peers["int8"] if "int8" in name else model)
            with torch.no_grad():
                logits = m(x).logits[0, -1].float()
        diff = float((logits - ref_logits).abs().max())
        same = "identical" if first is None else f"first differs at token {first}"
        print(f"  {name:<48} {same:<28} max |logit diff| after prompt {diff:.4f}", flush=True)

    # ---- timing
    print("\nwarm-up (1 generation each):")
    warm_up(variants, 1)
    t0 = time.perf_counter()
    res = interleaved(variants, args.rounds, 1)
    print(f"\ntimed {args.rounds} rounds in {time.perf_counter() - t0:.0f} s; {load_average()}")
    print(f"\n{'variant':<48} {'ms/token cpu':>12} {'wall':>8} {'GFLOP/s':>8}  of the fp32 peak")
    for name, r in res.items():
        rate = token_flops / (r["cpu"] / n) / 1e9
        print(f"{name:<48} {r['cpu'] / n * 1e3:12.1f} {r['wall'] / n * 1e3:8.1f} {rate:8.1f}  "
              f"{rate / peak:.1%}")

    def row(label, slow, fast):
        print(f"  {label:<70} cpu {ratio_spread(res[slow], res[fast], 'cpu')}  "
              f"wall {ratio_spread(res[slow], res[fast], 'wall')}")

    print("\nratios (peer time / our time; > 1: ours faster):")
    row("as shipped vs as shipped", "peer as shipped (generate, fp32)",
        "ours as shipped (transformers forward, fp32)")
    row("lean fp32 vs peer fp32", "peer as shipped (generate, fp32)", "ours lean fp32")
    row("lean fp32 vs peer fp32 static cache", "peer generate fp32, static cache",
        "ours lean fp32")
    row("lean bf16 vs peer bf16", "peer generate bf16 model", "ours lean bf16 weights")
    row("lean int8 vs peer int8", "peer generate int8 weight-only (same kernel)",
        "ours lean int8 weight-only")
    row("lean int4 vs peer int4", "peer generate int4 layers + int8 head (same)",
        "ours lean int4 layers + int8 head")
    row("lean int4 vs peer int4 static cache", "peer generate int4 + int8 head, static cache",
        "ours lean int4 layers + int8 head")
    row("lean int4: native small operations vs ATen's", "ours lean int4, ATen small operations",
        "ours lean int4 layers + int8 head")
    peer_names = [k for k in res if k.startswith("peer")]
    our_names = [k for k in res if k.startswith("ours")]
    best_peer = min(peer_names, key=lambda k: res[k]["cpu"])
    best_ours = min(our_names, key=lambda k: res[k]["cpu"])
    print(f"\nbest against best (by median CPU time): ours = {best_ours!r}, "
          f"peer = {best_peer!r}")
    row("best vs best", best_peer, best_ours)
    row("ours best vs peer as shipped", "peer as shipped (generate, fp32)", best_ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
