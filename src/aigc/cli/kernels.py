"""``aigc kernels``: which CPU kernels this machine takes, and the measurements behind them."""

from __future__ import annotations

import argparse
import os

HELP = """\
aigc chooses some CPU kernels by timing them on the machine, once, and keeps the result in
$AIGC_CACHE_DIR/kernels.json (default ~/.cache/aigc), keyed by CPU model, ISA flags, torch
version and thread count:

  linear   float32 matrix products of 32+ rows: MKL (F.linear) or oneDNN
  gelu     GPT's tanh GELU: ATen's or aigc's native kernel (compiled here with the C compiler)
  decode   Llama (SmolLM2) decoding's RMSNorm, rotary + cache writes, SiLU product: ATen's or
           native
  attention  GPT's causal self-attention over whole sequences (training, scoring), up to 256
           positions: ATen's scaled_dot_product_attention with the head split, or native
  conv     the diffusion UNets' and the autoencoder's 3x3 convolutions (stride 1, channels-last
           float32, channel counts multiples of 16 up to 256): oneDNN's (F.conv2d) or native
           Winograd F(4x4, 3x3) kernels
  groupnorm  the same UNets' GroupNorm + scale-shift + SiLU (channels-last float32): ATen's
           three to five operations, or one native kernel
  mlp      GPT's MLP over whole sequences (hidden width a multiple of 32): the two linear
           layers around the GELU, or native products with the biases and the GELU fused

Environment variables force a route: AIGC_LINEAR_ROUTE=onednn|torch, AIGC_GELU_ROUTE,
AIGC_DECODE_ROUTE, AIGC_ATTENTION_ROUTE, AIGC_CONV_ROUTE, AIGC_GROUPNORM_ROUTE and
AIGC_MLP_ROUTE=native|torch
(auto: the measured one).
docs/performance.md has the figures.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="show the CPU kernels measured fastest on this machine",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true",
                   help="time the kernels again now (a few seconds) and keep the new choice")
    p.add_argument("--threads", type=int, default=None,
                   help="thread count to measure for (default: torch's, as a run would use)")
    p.set_defaults(func=run)


def _ratio(entry: dict | None, field: str, label: str) -> str:
    if not entry:
        return "not measured yet"
    if entry.get(field) is None:
        return entry.get("reason") or "not measured"
    return f"{label} {entry[field]:.2f} (chosen when >= {entry.get('margin', 1.1):.2f})"


def run(args: argparse.Namespace) -> int:
    import torch

    from aigc.errors import AigcError
    from aigc.models import layers, native

    if args.threads is not None:
        if args.threads < 1:
            raise AigcError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.measure:
        layers.store_measurement(layers._machine_key(), layers.measure_linear_routes())
        for kind in native.ROUTE_ENVS:
            result = getattr(native, native._MEASURE[kind])()
            layers.store_measurement(native.cache_key(kind), result)
    print(f"machine: {layers._machine_key()}")
    print(f"cache:   {layers._cache_file()}")
    lib = native._build()
    threads = ("torch's OpenMP threads" if native._threaded else "one thread (no OpenMP runtime "
               "shared with torch)")
    built = (f"built: {native._lib_path}, runs on {threads}" if lib is not None
             else f"unavailable: {native._build_error}")
    print(f"native:  {built}")
    rows = [("linear", layers.linear_route(), os.environ.get(layers.ROUTE_ENV),
             _ratio(layers.cached_measurement(layers._machine_key()), "torch_over_onednn",
                    "F.linear time / oneDNN time"))]
    rows += [(kind, native.route(kind), os.environ.get(env),
              _ratio(layers.cached_measurement(native.cache_key(kind)), "aten_over_native",
                     "ATen time / native time"))
             for kind, env in native.ROUTE_ENVS.items()]
    print()
    for name, route, env, measured in rows:
        forced = f" (forced by the environment: {env})" if env and env.lower() != "auto" else ""
        print(f"  {name:<9} {route:<7} {measured}{forced}")
    return 0
