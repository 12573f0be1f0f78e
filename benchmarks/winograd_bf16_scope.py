"""Would a bf16 route for aigc's Winograd convolutions keep their accuracy, and what could it gain?

A scoping measurement for issue #17 on CPUs with native bf16 arithmetic (AVX512-BF16, AMX),
where diffusers' fastest training row is bf16 and aigc's Winograd kernels are float32 only.
Nothing here is a kernel of aigc's; it answers two questions before one is written:

1. Accuracy. Winograd's transforms enlarge rounding error, F(4x4, 3x3) far more than F(2x2).
   For the UNet's 3x3 convolutions (the shapes of benchmarks/diffusion_speed.py's model), the
   relative error against a float64 convolution of:
     oneDNN bf16          F.conv2d on bf16-rounded input and kernels (what a bf16-autocast step
                          runs, diffusers' bf16 rows included; output rounded to bf16 as there)
     F(m x m) fp32        Winograd in float32 throughout (aigc's kernels today: m = 4)
     F(m x m) bf16 prod.  the transformed tiles and kernels rounded to bf16, their products
                          summed in float32, the output transform in float32 (what an
                          AVX512-BF16 or AMX product kernel would compute)
   over the forward and the input gradient (the same convolution with the kernels flipped).
2. Speed of the products alone: the (m + 2)^2 batched products of a Winograd convolution, as
   torch.bmm in float32 and in bf16 (MKL / oneDNN, one thread), against ATen's direct
   convolution in float32 and bf16 at the same shape and aigc's native F(4x4) convolution
   (float32, transforms included; where this machine's route takes it).

    OMP_NUM_THREADS=1 python benchmarks/winograd_bf16_scope.py

Prints the machine (CPU model, ISA flags) and the measured matmul peaks first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Winograd's matrices (Lavin and Gray, 2015): F(2x2, 3x3) on the points 0, 1, -1, infinity;
# F(4x4, 3x3) on 0, 1, -1, 2, -2, infinity. Output tile Y = A^T [(G g G^T) * (B^T d B)] A.
_MATS = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}

# (batch, in channels, height = width, out channels): the 3x3 convolutions of the diffusion
# benchmark's UNet at its three resolutions
SHAPES = [(32, 32, 28, 32), (32, 64, 14, 64), (32, 64, 7, 64)]


def winograd_conv(x: torch.Tensor, w: torch.Tensor, m: int, bf16_products: bool) -> torch.Tensor:
    """3x3 convolution, stride 1, padding 1, of ``x (B, Ci, H, W)`` by ``w (Co, Ci, 3, 3)`` by
    F(m x m, 3 x 3) in ``x``'s dtype; ``bf16_products``: V and U rounded to bf16 before their
    products, which are summed in ``x``'s dtype."""
    BT, G, AT = (torch.tensor(a, dtype=x.dtype) for a in _MATS[m])
    B, ci, H, W = x.shape
    co = w.shape[0]
    a = m + 2
    th, tw = -(-H // m), -(-W // m)
    # pad so that the tiles (stride m, size m + 2) cover the image with its 1-pixel border
    xp = F.pad(x, (1, tw * m + 2 - W - 1, 1, th * m + 2 - H - 1))
    tiles = xp.unfold(2, a, m).unfold(3, a, m)  # (B, Ci, th, tw, a, a)
    v = BT @ tiles @ BT.T  # (B, Ci, th, tw, a, a)
    v = v.permute(4, 5, 0, 2, 3, 1).reshape(a * a, B * th * tw, ci)
    u = (G @ w @ G.T).permute(2, 3, 1, 0).reshape(a * a, ci, co)
    if bf16_products:
        v, u = v.bfloat16().to(x.dtype), u.bfloat16().to(x.dtype)
    mprod = torch.bmm(v, u)  # (a*a, tiles, Co), summed in x's dtype
    mprod = mprod.reshape(a, a, B, th, tw, co).permute(2, 5, 3, 4, 0, 1)
    y = AT @ mprod @ AT.T  # (B, Co, th, tw, m, m)
    y = y.permute(0, 1, 2, 4, 3, 5).reshape(B, co, th * m, tw * m)
    return y[:, :, :H, :W]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def accuracy(shape, seed: int = 0) -> dict[str, float]:
    B, ci, hw, co = shape
    g = torch.Generator().manual_seed(seed)
    # inputs as a UNet's convolutions see them: SiLU of group-normalised activations
    x = F.silu(F.group_norm(torch.randn(B, ci, hw, hw, generator=g, dtype=torch.float64), 8))
    w = torch.randn(co, ci, 3, 3, generator=g, dtype=torch.float64) * (2 / (9 * ci)) ** 0.5
    errs: dict[str, list[float]] = {}
    # the forward, then the input's gradient: the output's gradient through the flipped kernels
    for xx, ww in ((x, w), (torch.randn(B, co, hw, hw, generator=g, dtype=torch.float64),
                            w.flip(2, 3).transpose(0, 1).contiguous())):
        ref = F.conv2d(xx, ww, padding=1)
        got = {"oneDNN bf16": F.conv2d(xx.float().bfloat16(), ww.float().bfloat16(),
                                       padding=1).float()}
        for m in (2, 4):
            got[f"F({m}x{m}) fp32"] = winograd_conv(xx.float(), ww.float(), m, False)
            got[f"F({m}x{m}) bf16 products"] = winograd_conv(xx.float(), ww.float(), m, True)
        got["oneDNN fp32"] = F.conv2d(xx.float(), ww.float(), padding=1)
        assert rel_err(winograd_conv(xx, ww, 4, False), ref) < 1e-12  # the matrices are right
        for k, y in got.items():
            errs.setdefault(k, []).append(rel_err(y, ref))
    return {k: max(v) for k, v in errs.items()}


def _time(fn, rounds: int) -> float:
    fn()
    ts = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return statistics.median(ts)


def speed(shape, rounds: int) -> dict[str, float]:
    B, ci, hw, co = shape
    out = {}
    m = 4  # aigc's kernels' F(4x4, 3x3)
    tiles = B * (-(-hw // m)) ** 2
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        v = torch.randn((m + 2) ** 2, tiles, ci).to(dtype)
        u = torch.randn((m + 2) ** 2, ci, co).to(dtype)
        out[f"F(4x4) products {name}"] = _time(lambda v=v, u=u: torch.bmm(v, u), rounds)
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        x = torch.randn(B, ci, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(co, ci, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
        out[f"ATen direct conv {name}"] = _time(lambda x=x, w=w: F.conv2d(x, w, padding=1),
                                                  rounds)
        if dtype == torch.float32:
            from aigc.models import native

            if native.conv3x3_fits(x, w) and native.route("conv") == "native":
                out["aigc native F(4x4) conv fp32"] = _time(
                    lambda x=x, w=w: native.native_conv3x3(x, w), rounds)
    return out


def main() -> None:
    from _machine import machine_line, matmul_peak

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=21, help="timed calls per measurement (median)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"measured matmul peak (1024^3, {args.threads} thread(s)): float32 "
          f"{matmul_peak('float32'):,.0f} GFLOP/s, bfloat16 {matmul_peak('bfloat16'):,.0f} GFLOP/s")
    print("\n1. relative error against a float64 convolution (the larger of forward and input "
          "gradient)")
    for shape in SHAPES:
        errs = accuracy(shape)
        print(f"  batch {shape[0]}, {shape[1]} -> {shape[3]} channels, {shape[2]}x{shape[2]}: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    print("\n2. time of one call, ms (CPU time, median; the Winograd products alone, without "
          "their transforms)")
    for shape in SHAPES:
        t = speed(shape, args.rounds)
        fp32, bf16 = t["F(4x4) products fp32"], t["F(4x4) products bf16"]
        print(f"  batch {shape[0]}, {shape[1]} -> {shape[3]} channels, {shape[2]}x{shape[2]}: "
              + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in t.items())
              + f"; products bf16 / fp32 speed x{fp32 / bf16:.2f}")


if __name__ == "__main__":
    main()
