"""The diffusion UNets' native kernels across shapes, against ATen's, forward and backward.

`aigc.models.native` chooses the `conv` route (Winograd F(2x2, 3x3) 3x3 convolutions) and the
`groupnorm` route (GroupNorm + scale-shift + SiLU in one kernel) once per machine and thread
count by timing one shape each. This checks the other shapes the routes take: every 3x3
convolution shape of the MNIST UNet of benchmarks/diffusion_speed.py at batch 32 (channels-last
float32), some wider ones up to the route's limit (256 channels a side, 32,768 kernels), and
the UNet's GroupNorm shapes; for
each, the best of 5 alternating timings of

  aten     F.conv2d (oneDNN's direct convolution) / GroupNorm, scale-shift and SiLU as ATen
           operations, forward, or forward + backward through autograd
  native   the same through aigc's kernels (native.native_conv3x3 / native.group_norm_silu)

and the ratio aten / native (> 1: native faster). The forward alone is what sampling runs.

    python benchmarks/unet_kernels.py --threads 1 2
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# batch, in channels, side, out channels, and how often the MNIST UNet runs it in a step
CONV_SHAPES = [
    (32, 32, 28, 32, 4), (32, 64, 28, 64, 1), (32, 96, 28, 32, 1), (32, 64, 28, 32, 1),
    (32, 32, 14, 64, 1), (32, 64, 14, 64, 4), (32, 128, 14, 64, 1), (32, 96, 14, 64, 1),
    (32, 64, 7, 64, 8), (32, 128, 7, 64, 2),
    (8, 128, 16, 128, 0), (8, 128, 16, 256, 0), (1, 64, 7, 64, 0),  # wider; one image
]
NORM_SHAPES = [  # batch, channels, side, groups, with scale-shift
    (32, 32, 28, 8, True), (32, 96, 28, 8, False), (32, 64, 14, 8, True), (32, 64, 7, 8, True),
    (32, 128, 7, 8, False), (8, 256, 16, 32, True),
]
CL = torch.channels_last


def main() -> int:
    from attention_shapes import best_pair, thread_counts

    from aigc.models import native

    gen = torch.Generator().manual_seed(0)
    for _ in thread_counts(__doc__):
        print("3x3 convolutions, stride 1, channels-last float32; x per step: uses in one MNIST "
              "UNet training step")
        print(f"{'B':>3} {'Ci':>4} {'HxW':>6} {'Co':>4} {'x/step':>6}  {'fwd aten':>9} "
              f"{'native':>7} {'ratio':>6}  {'fwd+bwd aten':>12} {'native':>7} {'ratio':>6}")
        totals = [0.0, 0.0]
        for B, ci, side, co, uses in CONV_SHAPES:
            x = torch.randn(B, ci, side, side, generator=gen).contiguous(memory_format=CL)
            x.requires_grad_()
            w = (torch.randn(co, ci, 3, 3, generator=gen) * (9 * ci) ** -0.5).requires_grad_()
            b = torch.zeros(co, requires_grad=True)
            gy = torch.randn(B, co, side, side, generator=gen).contiguous(memory_format=CL)
            with torch.no_grad():
                fa, fn = best_pair(lambda x=x, w=w, b=b: F.conv2d(x, w, b, padding=1),
                                   lambda x=x, w=w, b=b: native.native_conv3x3(x, w, b))
            ta, tn = best_pair(
                lambda x=x, w=w, b=b, g=gy: torch.autograd.grad(F.conv2d(x, w, b, padding=1),
                                                                (x, w, b), g),
                lambda x=x, w=w, b=b, g=gy: torch.autograd.grad(native.native_conv3x3(x, w, b),
                                                                (x, w, b), g))
            totals[0] += uses * ta
            totals[1] += uses * tn
            print(f"{B:>3} {ci:>4} {f'{side}x{side}':>6} {co:>4} {uses:>6}  {fa * 1e3:9.2f} "
                  f"{fn * 1e3:7.2f} {f'x{fa / fn:.2f}':>6}  {ta * 1e3:12.2f} {tn * 1e3:7.2f} "
                  f"{f'x{ta / tn:.2f}':>6}")
        print(f"the UNet step's 3x3 convolutions (forward + backward, weighted by uses): ATen "
              f"{totals[0] * 1e3:.1f} ms, native {totals[1] * 1e3:.1f} ms, x{totals[0] / totals[1]:.2f}")
        print("\nGroupNorm (+ scale-shift) + SiLU, channels-last float32")
        print(f"{'B':>3} {'C':>4} {'HxW':>6} {'G':>3} {'s-s':>4}  {'fwd aten':>9} {'native':>7} "
              f"{'ratio':>6}  {'fwd+bwd aten':>12} {'native':>7} {'ratio':>6}")
        for B, C, side, G, ss in NORM_SHAPES:
            norm = torch.nn.GroupNorm(G, C)
            x = torch.randn(B, C, side, side, generator=gen).contiguous(memory_format=CL)
            x.requires_grad_()
            scale = shift = None
            if ss:
                scale = (0.1 * torch.randn(B, C, 1, 1, generator=gen)).requires_grad_()
                shift = (0.1 * torch.randn(B, C, 1, 1, generator=gen)).requires_grad_()
            leaves = [t for t in (x, norm.weight, norm.bias, scale, shift) if t is not None]
            gy = torch.randn(B, C, side, side, generator=gen).contiguous(memory_format=CL)

            def aten(x=x, norm=norm, scale=scale, shift=shift):
                h = norm(x)
                return F.silu(h if scale is None else h * (1 + scale) + shift)

            def ours(x=x, norm=norm, scale=scale, shift=shift):
                return native.group_norm_silu(x, norm, scale, shift)

            with torch.no_grad():
                fa, fn = best_pair(aten, ours)
            ta, tn = best_pair(lambda f=aten, lv=leaves, g=gy: torch.autograd.grad(f(), lv, g),
                               lambda f=ours, lv=leaves, g=gy: torch.autograd.grad(f(), lv, g))
            print(f"{B:>3} {C:>4} {f'{side}x{side}':>6} {G:>3} {'yes' if ss else 'no':>4}  "
                  f"{fa * 1e3:9.2f} {fn * 1e3:7.2f} {f'x{fa / fn:.2f}':>6}  {ta * 1e3:12.2f} "
                  f"{tn * 1e3:7.2f} {f'x{ta / tn:.2f}':>6}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
