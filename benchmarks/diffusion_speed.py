"""Our UNet + DDPM training and our samplers against diffusers, measured in one run, printed as ratios.

1. Training images/s: aigc's Diffusion (UNet, epsilon loss) against diffusers' UNet2DModel +
   DDPMScheduler.add_noise at a matched parameter count and the same batch, fp32 and bf16
   autocast; ours also with channels-last, the fused AdamW and torch.compile, each measured.
2. Sampling images/s: our DDIM and DPM-Solver++(2M) loops against diffusers' DDIMScheduler and
   DPMSolverMultistepScheduler driving the same (our) network, same steps, classifier-free guidance.

    python benchmarks/diffusion_speed.py --batch 64 --seconds 20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from aigc.models.diffusion import Diffusion, DiffusionConfig


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def ours_model() -> Diffusion:
    return Diffusion(DiffusionConfig(channels=(32, 64, 64), num_res_blocks=1, attention_levels=(2,),
                                     num_classes=10))


def diffusers_model():
    from diffusers import UNet2DModel

    # Same widths, one ResNet per level down (two up), attention at the 7x7 level, class embedding.
    return UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
        layers_per_block=1, norm_num_groups=8, num_class_embeds=11,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=32,
    )


def _time_steps(step_fn, seconds: float, warmup: int = 2) -> float:
    """Seconds per call of ``step_fn``: median of calls made within ``seconds`` after warm-up."""
    for _ in range(warmup):
        step_fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def train_ours(batch: dict, bf16: bool, channels_last: bool, fused: bool, compile_: bool):
    torch.manual_seed(0)
    model = ours_model()
    x = batch["image"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    loss_fn = torch.compile(model.loss) if compile_ else model.loss
    b = {"image": x, "label": batch["label"]}

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(b)
        loss.backward()
        opt.step()
    return model, step


def train_diffusers(batch: dict, bf16: bool):
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    model = diffusers_model()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0, labels = batch["image"] * 2 - 1, batch["label"]

    def step():
        opt.zero_grad(set_to_none=True)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],))
        drop = torch.rand(x0.shape[0]) < 0.1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(sched.add_noise(x0, noise, t), t,
                         class_labels=labels.masked_fill(drop, 10)).sample
            loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
    return model, step


def sample_ours(model: Diffusion, n: int, sampler: str, steps: int):
    def run():
        model.sample(n, generator=torch.Generator().manual_seed(0), labels=torch.arange(n) % 10,
                     sampler=sampler, steps=steps, guidance=3.0)
    return run


def sample_diffusers(model: Diffusion, n: int, sampler: str, steps: int):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddim":
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              timestep_spacing="trailing", clip_sample=True)
    else:
        sched = DPMSolverMultistepScheduler(num_train_timesteps=1000,
                                            beta_schedule="squaredcos_cap_v2",
                                            timestep_spacing="trailing", final_sigmas_type="zero",
                                            algorithm_type="dpmsolver++", solver_order=2)
    labels = torch.arange(n) % 10

    @torch.no_grad()
    def run():
        g = torch.Generator().manual_seed(0)
        sched.set_timesteps(steps)
        x = torch.randn(n, 1, 28, 28, generator=g)
        cond = model.unet.condition(labels)
        null = model.unet.condition(torch.full((n,), 10))
        for t in sched.timesteps:
            out = model._guided(x, int(t), cond, null, 3.0)
            x = sched.step(out, t, x).prev_sample
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0, help="timing window per variant")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--sample-n", type=int, default=32)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(args.batch, 1, 28, 28, generator=g),
             "label": torch.randint(0, 10, (args.batch,), generator=g)}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"parameters: ours {_params(ours_model()) / 1e6:.3f}M, diffusers "
          f"{_params(diffusers_model()) / 1e6:.3f}M")
    rows = {}
    for name, bf16 in [("diffusers fp32", False), ("diffusers bf16", True)]:
        _, step = train_diffusers(batch, bf16)
        rows[name] = args.batch / _time_steps(step, args.seconds)
    variants = [("ours fp32", False, False, False, False), ("ours bf16", True, False, False, False),
                ("ours fp32 channels-last", False, True, False, False),
                ("ours bf16 channels-last", True, True, False, False),
                ("ours fp32 fused-adamw", False, False, True, False),
                ("ours bf16 fused-adamw", True, False, True, False)]
    if not args.no_compile:
        variants += [("ours fp32 compile", False, False, False, True),
                     ("ours bf16 compile", True, False, False, True)]
    for name, bf16, cl, fused, comp in variants:
        try:
            _, step = train_ours(batch, bf16, cl, fused, comp)
            rows[name] = args.batch / _time_steps(step, args.seconds, warmup=3 if comp else 2)
        except Exception as exc:  # e.g. torch.compile without a C++ compiler
            print(f"{name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
    print("\ntraining images/s")
    for name, value in rows.items():
        base = rows["diffusers fp32" if "fp32" in name else "diffusers bf16"]
        print(f"  {name:<28} {value:8.1f}   x{value / base:.2f} vs diffusers "
              f"{'fp32' if 'fp32' in name else 'bf16'}")
    best = max((v, k) for k, v in rows.items() if k.startswith("ours"))
    print(f"  best ours ({best[1]}) vs best diffusers: "
          f"x{best[0] / max(rows['diffusers fp32'], rows['diffusers bf16']):.2f}")

    model = ours_model().eval()
    print(f"\nsampling images/s ({args.sample_n} images, {args.sample_steps} steps, guidance 3, "
          "same network)")
    for sampler in ["ddim", "dpm-solver++"]:
        ours = args.sample_n / _time_steps(sample_ours(model, args.sample_n, sampler,
                                                       args.sample_steps), args.seconds, 1)
        theirs = args.sample_n / _time_steps(sample_diffusers(model, args.sample_n, sampler,
                                                              args.sample_steps), args.seconds, 1)
        print(f"  {sampler:<14} ours {ours:7.1f}  diffusers {theirs:7.1f}  x{ours / theirs:.2f}")


if __name__ == "__main__":
    main()
