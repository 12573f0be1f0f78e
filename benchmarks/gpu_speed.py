"""Training speed on a CUDA GPU: aigc against transformers (GPT) and diffusers (UNet), one run.

Issue #17's GPU path: CUDA, bf16 autocast and torch.compile, each side given the same options,
measured when a GPU is lent (the project never needs one). The models and losses are those of
benchmarks/gpt_speed.py and benchmarks/diffusion_speed.py (same initial weights and objectives
on both sides), at sizes that give a GPU work to do (the CPU benchmarks' sizes are dispatch on
a GPU). Every row uses fused AdamW; the stages, cumulative, for float32 and bf16 autocast:

    GPT          eager, +compile (ours: aigc.train.CompiledLoss, as `aigc train --compile`;
                 transformers: torch.compile of forward + loss, its SDPA attention)
    diffusion    eager, +channels-last, +compile

Timing: interleaved rounds (benchmarks/_timing.py), each variant's steps bracketed by
torch.cuda.synchronize, so its figure is the GPU's wall time per step (median over rounds).
Prints the device name, torch and CUDA versions, TF32 settings (the same for both sides) and
the measured matmul peaks, so that every row has its fraction of the peak.

    python benchmarks/gpu_speed.py                       # on a machine with CUDA
    python benchmarks/gpu_speed.py --device cpu --small  # the same code on the CPU, to check it

The compiled rows' warm-ups take minutes (about 1-2 each on this project's CPUs); on a lent GPU
with a short budget, run `--only gpt` and `--only diffusion` as separate calls, or
`--no-compile` first.

On a machine without CUDA, `--device cuda` (the default) stops with a message; the CPU figures
this script prints are no substitute for gpt_speed.py's and diffusion_speed.py's (which pin
threads and time CPU work) and are there only to check the script.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (f"device: {torch.cuda.get_device_name(device)} (compute capability "
                f"{major}.{minor}); torch {torch.__version__}, CUDA {torch.version.cuda}; "
                f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN "
                f"{torch.backends.cudnn.allow_tf32} (both sides)")
    from _machine import machine_line

    return machine_line() + " (a CPU: this checks the script; see the module notes)"


def _rows(title: str, timing: dict, per_step: float, unit: str, flops: dict, peak: dict) -> None:
    print(f"\n{title} ({unit}, wall time per step, median of the rounds)")
    print(f"  {'variant':<36} {unit:>12}  {'ms/step':>9}  {'TFLOP/s':>8}  of the peak")
    for name, t in timing.items():
        side = "ours" if name.startswith("ours") else "peer"
        tflops = flops[side] / t["wall"] / 1e12
        precision = "bfloat16" if "bf16" in name else "float32"
        print(f"  {name:<36} {per_step / t['wall']:12,.0f}  {1e3 * t['wall']:9.2f}  {tflops:8.2f}"
              f"  {100e3 * tflops / peak[precision]:5.1f}% of {precision}")


def _compare(timing: dict, stages: list[str], peer: str) -> None:
    from _timing import ratio_spread

    print(f"ours against {peer} (its time / ours; per round, the two in the same round):")
    for stage in stages:
        print(f"  {stage:<28} {ratio_spread(timing[f'{peer} {stage}'], timing[f'ours {stage}'], 'wall')}")
    ours = min((t["wall"], n) for n, t in timing.items() if n.startswith("ours"))
    theirs = min((t["wall"], n) for n, t in timing.items() if n.startswith(peer))
    print(f"  best against best: {ours[1]} vs {theirs[1]}: "
          f"{ratio_spread(timing[theirs[1]], timing[ours[1]], 'wall')}")


def gpt(args, device: torch.device, sync, peak: dict) -> None:
    from _machine import step_flops
    from _timing import interleaved, warm_up
    from gpt_speed import build, function_of_its_own, hf_loss, make_step

    from aigc.data.text import load_corpus
    from aigc.data.tokens import TokenWindows, encode_documents
    from aigc.tokenizers import CharTokenizer

    corpus = load_corpus("austen")
    tok = CharTokenizer.train([d for s in ("train", "val", "test") for d in corpus.documents(s)])
    windows = TokenWindows(encode_documents(tok, corpus.documents("train")), args.gpt_context,
                           stride=args.gpt_context)
    gen = torch.Generator().manual_seed(0)
    batches = [windows.get_batch(torch.randint(0, len(windows), (args.gpt_batch,),
                                               generator=gen))["tokens"].to(device)
               for _ in range(8)]
    shape = argparse.Namespace(layers=args.gpt_layers, heads=args.gpt_heads, width=args.gpt_width,
                               context=args.gpt_context)
    ours, hf = build(shape, tok.vocab_size)
    ours, hf = ours.to(device), hf.to(device)
    print(f"\nGPT: {args.gpt_layers} layers, {args.gpt_heads} heads, width {args.gpt_width}, "
          f"context {args.gpt_context}, batch {args.gpt_batch}, austen characters; "
          f"{sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M parameters each side")
    losses = {"ours": "m.loss({'tokens': tokens})", "transformers": "hf_loss(m, tokens)"}

    def loss_of(side: str, model, stage: str):
        """The side's loss on a copy of ``model``, a function of its own per variant
        (compiled, it must not share the compiler's cache with another copy: gpt_speed.py)."""
        m = copy.deepcopy(model)
        fn = function_of_its_own(f"{side}_{stage.replace(' +', '_')}", losses[side],
                                 {"m": m, "hf_loss": hf_loss})
        return m, (torch.compile(fn) if "compile" in stage else fn)

    variants = {}
    stages = ["fp32", "bf16"] + ([] if args.no_compile else ["fp32 +compile", "bf16 +compile"])
    for stage in stages:
        for side, model in (("ours", ours), ("transformers", hf)):
            m, loss = loss_of(side, model, stage)
            variants[f"{side} {stage}"] = make_step(m, loss, batches, fused=True,
                                                    bf16=stage.startswith("bf16"))
    # counted with F.linear and ATen's MLP, whose products the counter sees (on a CPU the fused
    # MLP kernels' and oneDNN's it does not: gpt_speed.py's count; on CUDA neither applies)
    flops = {key: step_flops(make_step(*loss_of(side, model, "flops"), batches, fused=True,
                                       bf16=False, onednn=False, mlp="torch"))
             for key, side, model in (("ours", "ours", ours), ("peer", "transformers", hf))}
    print(f"FLOPs per training step (torch.utils.flop_counter): ours {flops['ours'] / 1e9:.1f} G, "
          f"transformers {flops['peer'] / 1e9:.1f} G")
    warm_up(variants, args.warmup)
    timing = interleaved(variants, args.rounds, args.steps, sync=sync)
    _rows("GPT training", timing, args.gpt_batch * args.gpt_context, "tokens/s", flops, peak)
    _compare(timing, stages, "transformers")


def diffusion(args, device: torch.device, sync, peak: dict) -> None:
    from _machine import step_flops
    from _timing import interleaved, warm_up
    from diffusion_speed import train_diffusers, train_ours

    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(args.unet_batch, 1, 28, 28, generator=g).to(device),
             "label": torch.randint(0, 10, (args.unet_batch,), generator=g).to(device)}
    print(f"\ndiffusion: the UNets of benchmarks/diffusion_speed.py (28x28, widths 32/64/64), "
          f"batch {args.unet_batch}")
    stages = [("fp32", False, False, False), ("fp32 +channels-last", False, True, False),
              ("bf16", True, False, False), ("bf16 +channels-last", True, True, False)]
    if not args.no_compile:
        stages += [("fp32 +channels-last+compile", False, True, True),
                   ("bf16 +channels-last+compile", True, True, True)]
    dev = str(device)
    variants = {}
    for stage, bf16, cl, comp in stages:
        variants[f"ours {stage}"] = train_ours(batch, bf16, cl, True, comp, device=dev)[1]
        variants[f"diffusers {stage}"] = train_diffusers(batch, bf16, cl, True, comp, device=dev)[1]
    flops = {"ours": step_flops(train_ours(batch, False, False, True, False, device=dev)[1]),
             "peer": step_flops(train_diffusers(batch, False, False, True, False, device=dev)[1])}
    print(f"FLOPs per training step: ours {flops['ours'] / 1e9:.1f} G, diffusers "
          f"{flops['peer'] / 1e9:.1f} G")
    warm_up(variants, args.warmup)
    timing = interleaved(variants, args.rounds, args.steps, sync=sync)
    _rows("diffusion training", timing, args.unet_batch, "images/s", flops, peak)
    _compare(timing, [s[0] for s in stages], "diffusers")


def main() -> None:
    from _machine import matmul_peak

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check "
                                                     "the script where there is no GPU")
    ap.add_argument("--only", choices=("gpt", "diffusion"), help="one family only")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compile here)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compile rows")
    ap.add_argument("--small", action="store_true",
                    help="tiny sizes (2 layers, width 64, context 32, batch 4; UNet batch 4): "
                         "a check of the script, not a measurement")
    ap.add_argument("--gpt-layers", type=int, default=6)
    ap.add_argument("--gpt-heads", type=int, default=6)
    ap.add_argument("--gpt-width", type=int, default=384)
    ap.add_argument("--gpt-context", type=int, default=256)
    ap.add_argument("--gpt-batch", type=int, default=32)
    ap.add_argument("--unet-batch", type=int, default=256)
    args = ap.parse_args()
    if args.small:
        args.gpt_layers, args.gpt_heads, args.gpt_width = 2, 2, 64
        args.gpt_context, args.gpt_batch, args.unet_batch = 32, 4, 4
    for name in ("rounds", "steps", "gpt_layers", "gpt_heads", "gpt_width", "gpt_context",
                 "gpt_batch", "unet_batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")
    if args.gpt_width % args.gpt_heads:
        ap.error(f"--gpt-width ({args.gpt_width}) must be a multiple of --gpt-heads "
                 f"({args.gpt_heads})")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        ap.error(f"--device {args.device!r}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py: no CUDA device here (torch.cuda.is_available() is False; "
                         f"torch {torch.__version__}). It measures the GPU path when one is lent; "
                         "`--device cpu --small` checks the script on this machine.")
    if device.type not in ("cuda", "cpu"):
        ap.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    print(device_line(device))
    n = 4096 if device.type == "cuda" else 1024
    peak = {dt: matmul_peak(dt, n=n, device=str(device)) for dt in ("float32", "bfloat16")}
    print(f"measured matmul peak ({n}^3): float32 {peak['float32'] / 1e3:,.1f} TFLOP/s, "
          f"bfloat16 {peak['bfloat16'] / 1e3:,.1f} TFLOP/s")
    if args.only in (None, "gpt"):
        gpt(args, device, sync, peak)
    if args.only in (None, "diffusion"):
        diffusion(args, device, sync, peak)


if __name__ == "__main__":
    main()
