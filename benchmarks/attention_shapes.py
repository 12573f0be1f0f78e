"""GPT attention across shapes: aigc's native kernels against ATen's path, forward + backward.

`aigc.models.native` chooses the attention route once per machine and thread count by timing a
single shape (gpt_speed's training shape, batch 12 x 63 positions, width 128, 4 heads). This
checks that the choice holds for the other shapes the route takes (up to 256 positions, head
widths 16 to 128): for each shape, the best of 5 alternating timings of

  aten     the head split of the fused qkv projection, F.scaled_dot_product_attention
           (is_causal) and the merge, backward through autograd (native.causal_attention_aten)
  native   the native custom op on the same qkv (native._attention_op)

and the ratio aten / native (> 1: native faster), at each thread count given.

    python benchmarks/attention_shapes.py --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

SHAPES = [  # batch, positions, heads, head width
    (12, 63, 4, 32),  # gpt_speed's training shape: the one the route is measured on
    (1, 16, 2, 16), (16, 32, 8, 64), (4, 128, 12, 64), (8, 128, 12, 64), (32, 128, 6, 64),
    (2, 128, 4, 128),
    (12, 255, 4, 32),  # `aigc train gpt`'s default context (256 tokens a window)
    (8, 256, 12, 64), (2, 256, 4, 128),
]


def best_pair(fa, fn, repeats: int = 5) -> tuple[float, float]:
    """The best of ``repeats`` alternating timings of each, after two untimed calls of each."""
    from aigc.models.layers import alternating_best
    from aigc.models.native import _best_of

    fa(), fn()  # alternating_best makes the second untimed call
    return alternating_best(lambda: _best_of(fa, 1), lambda: _best_of(fn, 1), repeats)


def thread_counts(doc: str):
    """Parse ``--threads N [N ...]`` (``doc``: the script's help), build the native kernels, and
    yield each thread count after setting it and printing the machine line; exits with status 2,
    saying why, where the kernels cannot be built."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    args = p.parse_args()

    from _machine import machine_line

    from aigc.models import native

    if native._build() is None:
        print(f"native kernels unavailable: {native._build_error}", file=sys.stderr)
        sys.exit(2)
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(machine_line())
        print(f"native kernels on {'torch OpenMP threads' if native._threaded else 'one thread'}")
        yield threads


def main() -> int:
    from aigc.models import native

    gen = torch.Generator().manual_seed(0)
    for _ in thread_counts(__doc__):
        print(f"{'B':>3} {'T':>4} {'H':>3} {'d':>4}  {'aten ms':>8} {'native ms':>9}  aten/native")
        for B, T, H, d in SHAPES:
            qkv = torch.randn(B, T, 3 * H * d, generator=gen).requires_grad_()
            gy = torch.randn(B, T, H * d, generator=gen)
            ta, tn = best_pair(
                lambda x=qkv, g=gy, h=H: torch.autograd.grad(native.causal_attention_aten(x, h), x, g),
                lambda x=qkv, g=gy, h=H: torch.autograd.grad(native._attention_op(x, h)[0], x, g))
            print(f"{B:>3} {T:>4} {H:>3} {d:>4}  {ta * 1e3:8.2f} {tn * 1e3:9.2f}  x{ta / tn:.2f}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
