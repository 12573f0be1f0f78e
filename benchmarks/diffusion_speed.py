"""Our UNet + DDPM training and our samplers against diffusers, measured in one run, printed as ratios.

1. Training images/s: aigc's Diffusion (UNet, epsilon loss) against diffusers' UNet2DModel +
   DDPMScheduler.add_noise at a matched parameter count (both printed) and the same batch, with
   the same objective on both sides: cosine schedule (diffusers' squaredcos_cap_v2 is the same
   alpha-bar), uniform t, MSE on epsilon, 10% of class labels replaced by the null class. Both
   sides get the same AdamW (lr 1e-4, torch defaults otherwise) in the same implementation per
   row. Variants, cumulative, each for fp32 and bf16 autocast (bf16 only where this machine's
   bf16 matmul runs at least half as fast as float32, unless --bf16 on), on both sides:
     eager            AdamW as torch picks it (for-loop on CPU)
     +fused           AdamW(fused=True)           (ours: TrainConfig(adamw_impl="fused"))
     +channels-last   model and batch in NHWC     (ours: TrainConfig(channels_last=True))
     +compile         torch.compile of forward + loss (ours: TrainConfig(compile=True), i.e.
                      aigc.train.CompiledLoss; diffusers: torch.compile of its loss function)
   Since 2026-11-30 ``aigc train diffusion`` runs as the fp32 "+fused+channels-last" row by
   default (TrainConfig.adamw_impl="auto" is fused; the family's TRAIN_DEFAULTS turn
   channels-last on: benchmarks/adamw_impl_check.py, benchmarks/channels_last_check.py).
   Our channels-last float32 rows take aigc's native UNet kernels where this machine measured
   them faster (Winograd 3x3 convolutions, GroupNorm + SiLU: aigc.models.native; the header
   prints the routes); one more row runs the default recipe on ATen's kernels, to show what
   they are worth, and the equal-quality check trains the default recipe both ways.
   Timing: interleaved rounds, CPU-time medians (benchmarks/_timing.py); warm-up steps, where
   compilation happens, are reported and excluded.
2. Sampling images/s: our DDIM and DPM-Solver++(2M) loops against diffusers' DDIMScheduler and
   DPMSolverMultistepScheduler driving the same (our) network, same steps, classifier-free guidance.

    python benchmarks/diffusion_speed.py --batch 32 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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
    """CPU seconds per call of ``step_fn``: median of calls made within ``seconds`` after warm-up."""
    for _ in range(warmup):
        step_fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.process_time()
        step_fn()
        times.append(time.process_time() - t0)
    times.sort()
    return times[len(times) // 2]


def _adamw(model, fused: bool, lr: float):
    return torch.optim.AdamW(model.parameters(), lr=lr, **({"fused": True} if fused else {}))


_UNET_KERNELS = ("conv", "groupnorm")  # aigc.models.native families a UNet step can take


def train_ours(batch: dict, bf16: bool, channels_last: bool, fused: bool, compile_: bool,
               lr: float = 1e-4, kernels: str | None = None, device: str = "cpu"):
    """``kernels``: force aigc's native UNet kernels (Winograd convolutions, GroupNorm + SiLU)
    to ``"native"`` or ``"torch"`` (ATen's) during this recipe's steps; ``None``: as measured
    on this machine (what ``aigc train`` takes). ``device``: where the model and each step's
    batch go (``batch`` stays where the caller keeps it)."""
    from aigc.models import native
    from aigc.train import CompiledLoss

    torch.manual_seed(0)
    model = ours_model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _adamw(model, fused, lr)
    loss_fn = CompiledLoss(model) if compile_ else model.loss
    device_type = torch.device(device).type  # autocast's

    def step():
        # ``batch`` is read at every step, so a caller may refill it (the quality check does)
        x = batch["image"].to(device)
        b = {"image": x.contiguous(memory_format=torch.channels_last) if channels_last else x,
             "label": batch["label"].to(device)}
        with native.routes(**dict.fromkeys(_UNET_KERNELS, kernels) if kernels else {}):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(b)
            loss.backward()
            opt.step()
        return loss
    return model, step


def train_diffusers(batch: dict, bf16: bool, channels_last: bool = False, fused: bool = False,
                    compile_: bool = False, lr: float = 1e-4, device: str = "cpu"):
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    model = diffusers_model().to(device)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _adamw(model, fused, lr)

    def loss_fn(x0, labels):
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
        drop = torch.rand(x0.shape[0], device=x0.device) < 0.1
        pred = model(sched.add_noise(x0, noise, t), t, class_labels=labels.masked_fill(drop, 10)).sample
        return F.mse_loss(pred.float(), noise)

    if compile_:
        loss_fn = torch.compile(loss_fn)
    device_type = torch.device(device).type  # autocast's

    def step():
        x0 = batch["image"].to(device) * 2 - 1
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(x0, batch["label"].to(device))
        loss.backward()
        opt.step()
        return loss
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


def noised_test_set(test, g: torch.Generator, n: int = 1000):
    """The first ``n`` test images noised with one fixed draw (from ``g``) of t and epsilon
    under the cosine schedule: ``(x_t, t, labels, eps)``, what a test epsilon-MSE is taken on."""
    from aigc.models.diffusion import noise_schedule

    batch = test.get_batch(torch.arange(n))
    x0, labels = batch["image"] * 2 - 1, batch["label"]
    t = torch.randint(0, 1000, (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = noise_schedule("cosine", 1000)[t].float()[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, labels, eps


def quality_check(steps: int, every: int, batch_size: int, lr: float,
                  cpu_per_step: dict[str, float], seed: int = 1) -> None:
    """Equal quality, measured: each recipe trains ``steps`` steps from the same seed on the same
    real MNIST batches; every ``every`` steps its epsilon-prediction MSE is measured in fp32 on
    1,000 test images with one fixed draw of t, noise and labels (the quantity both sides
    minimise). Printed: the curves, and the CPU time each recipe needs to reach the MSE that
    diffusers as shipped (fp32 eager) has after ``steps`` steps (steps to reach it, linearly
    interpolated between evaluations, times the recipe's CPU seconds per step from the timing
    table). A recipe that steps faster but learns worse pays for it here."""
    from aigc.data.images import load_images

    train, test = load_images("mnist", "train"), load_images("mnist", "test")
    g = torch.Generator().manual_seed(seed)
    order = torch.randint(0, len(train), (steps, batch_size), generator=g)
    x_t, t, labels, eps = noised_test_set(test, g)
    recipes = {  # name: (side, bf16, channels_last, fused, ours: forced UNet kernels)
        "diffusers fp32 eager": (train_diffusers, False, False, False, None),
        "ours fp32 eager": (train_ours, False, False, False, None),
        "diffusers bf16 +fused": (train_diffusers, True, False, True, None),
        "ours bf16 +fused": (train_ours, True, False, True, None),
        # the trainer's default, on aigc's native kernels and on ATen's: the same learning?
        "ours fp32 +fused+channels-last": (train_ours, False, True, True, "native"),
        "ours fp32 +fused+channels-last, ATen kernels": (train_ours, False, True, True, "torch"),
    }

    @torch.no_grad()
    def test_mse(model, ours: bool) -> float:
        model.eval()
        preds = [model.unet(x, tt, model.unet.condition(lab)) if ours else
                 model(x, tt, class_labels=lab).sample
                 for x, tt, lab in zip(x_t.split(250), t.split(250), labels.split(250), strict=True)]
        model.train()
        return F.mse_loss(torch.cat(preds).float(), eps).item()

    marks = list(range(every, steps + 1, every))
    print(f"  {'test epsilon MSE after steps':<46}" + "".join(f"{m:>8}" for m in marks))
    curves = {}
    for name, (side, bf16, cl, fused, kernels) in recipes.items():
        batch = {}
        model, step = (side(batch, bf16, cl, fused, False, lr, kernels) if side is train_ours
                       else side(batch, bf16, cl, fused, False, lr))
        torch.manual_seed(seed)  # the training noise and timesteps: the same stream per recipe
        curves[name] = []
        for i in range(steps):
            batch.update(train.get_batch(order[i]))
            step()
            if i + 1 in marks:
                curves[name].append(test_mse(model, side is train_ours))
        print(f"  {name:<46}" + "".join(f"{v:8.4f}" for v in curves[name]), flush=True)
    target = curves["diffusers fp32 eager"][-1]
    print(f"  CPU time to reach MSE {target:.4f} (diffusers fp32 eager after {steps} steps):")
    base = steps * cpu_per_step["diffusers fp32 eager"]
    for name, curve in curves.items():
        if name not in cpu_per_step:
            print(f"    {name:<44} (not timed)")
            continue
        reached = next((i for i, v in enumerate(curve) if v <= target), None)
        if reached is None:
            print(f"    {name:<44} not reached in {steps} steps")
            continue
        prev_step, prev_v = (0, float("inf")) if reached == 0 else (marks[reached - 1], curve[reached - 1])
        frac = 1.0 if prev_v == float("inf") else (prev_v - target) / (prev_v - curve[reached])
        at = prev_step + frac * (marks[reached] - prev_step)
        seconds = at * cpu_per_step[name]
        print(f"    {name:<44} ~{at:5.0f} steps, {seconds:6.1f} CPU s  x{base / seconds:.2f}")


def profile_steps(batch: dict, steps: int = 4) -> None:
    """Self CPU time by operator for one training step of each side, fp32 and bf16, eager; and
    each side's fastest row on CPUs with native bf16 arithmetic (ours as ``aigc train`` runs it,
    diffusers' bf16 with fused AdamW)."""
    from torch.profiler import ProfilerActivity, profile

    for name, make in [("ours fp32 +fused+channels-last (as aigc trains)",
                        lambda: train_ours(batch, False, True, True, False)),
                       ("diffusers bf16 +fused", lambda: train_diffusers(batch, True, False, True)),
                       ("diffusers fp32", lambda: train_diffusers(batch, False)),
                       ("ours fp32", lambda: train_ours(batch, False, False, False, False)),
                       ("diffusers bf16", lambda: train_diffusers(batch, True)),
                       ("ours bf16", lambda: train_ours(batch, True, False, False, False)),
                       ("ours bf16 channels-last", lambda: train_ours(batch, True, True, False, False))]:
        step = make()[1]
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\n{name}: {total / steps / 1e3:.0f} ms CPU per step (profiled); top operators by self time")
        for e in events[:8]:
            print(f"  {e.key[:48]:<48} {e.self_cpu_time_total / steps / 1e3:8.1f} ms "
                  f"{100 * e.self_cpu_time_total / total:5.1f}%")
        conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower())
        print(f"  {'all convolution operators':<48} {conv / steps / 1e3:8.1f} ms {100 * conv / total:5.1f}%")
        native = sum(e.self_cpu_time_total for e in events if e.key.startswith("_EagerConv3x3"))
        if native:
            print(f"  {'  of which aigc native 3x3 (fwd + bwd)':<48} {native / steps / 1e3:8.1f} ms "
                  f"{100 * native / total:5.1f}%")


def main() -> None:
    from _machine import keep_freed_memory_line, machine_line, matmul_peak, step_flops
    from _timing import interleaved, load_average, ratio_spread, warm_up

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compile here)")
    ap.add_argument("--seconds", type=float, default=10.0, help="sampling timing window")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample-n", type=int, default=32)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true", help="leave out the compile rows")
    ap.add_argument("--no-sampling", action="store_true")
    ap.add_argument("--quality-steps", type=int, default=600,
                    help="steps of the equal-quality check on real MNIST (0: skip it)")
    ap.add_argument("--quality-every", type=int, default=100, help="test MSE every N steps")
    ap.add_argument("--quality-seed", type=int, default=1, help="seed of the batches and test draw")
    ap.add_argument("--quality-lr", type=float, default=5e-4)
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="bf16-autocast rows: auto keeps them where this machine's bf16 matmul "
                         "runs at least half as fast as float32 (native bf16 arithmetic); "
                         "without it a bf16 step takes minutes here")
    ap.add_argument("--profile", action="store_true",
                    help="only print torch.profiler tables (where a training step's time goes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(args.batch, 1, 28, 28, generator=g),
             "label": torch.randint(0, 10, (args.batch,), generator=g)}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"parameters: ours {_params(ours_model()) / 1e6:.3f}M, diffusers "
          f"{_params(diffusers_model()) / 1e6:.3f}M; AdamW lr 1e-4 both sides")
    print(machine_line())
    print(keep_freed_memory_line())
    peak = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16")}
    print(f"measured matmul peak (1024^3, {args.threads} thread(s)): float32 "
          f"{peak['fp32']:,.0f} GFLOP/s, bfloat16 {peak['bf16']:,.0f} GFLOP/s")
    keep_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and peak["bf16"] >= 0.5 * peak["fp32"])
    precisions = ("fp32", "bf16") if keep_bf16 else ("fp32",)
    if not keep_bf16:
        print(f"bf16 rows left out on both sides (--bf16 {args.bf16}): bf16 matmul runs at "
              f"{peak['bf16'] / peak['fp32']:.2f}x float32's speed on this machine")
    # FLOPs of one training step per side (convolutions, matmuls, attention, forward and
    # backward: torch.utils.flop_counter), the same with or without the speed options
    flops = {"ours": step_flops(train_ours(batch, False, False, False, False)[1]),
             "diffusers": step_flops(train_diffusers(batch, False, False, False, False)[1])}
    print(f"FLOPs per training step: ours {flops['ours'] / 1e9:.2f} G, diffusers "
          f"{flops['diffusers'] / 1e9:.2f} G")
    from aigc.models import native

    print("aigc's native UNet kernels, as measured on this machine (ours, channels-last "
          "float32 rows): " + ", ".join(f"{k} {native.route(k)}" for k in _UNET_KERNELS))
    print(load_average() + " (before)")
    if args.profile:
        profile_steps(batch)
        return
    stages = [("eager", False, False, False), ("+fused", True, False, False),
              ("+fused+channels-last", True, True, False)]
    if not args.no_compile:
        stages.append(("+fused+channels-last+compile", True, True, True))
    variants = {}
    for precision in precisions:
        for stage, fused, cl, comp in stages:
            bf16 = precision == "bf16"
            variants[f"diffusers {precision} {stage}"] = train_diffusers(batch, bf16, cl, fused, comp)[1]
            variants[f"ours {precision} {stage}"] = train_ours(batch, bf16, cl, fused, comp)[1]
    # what aigc's native UNet kernels are worth: the trainer's default recipe on ATen's kernels
    aten_row = "ours fp32 +fused+channels-last, ATen kernels"
    variants[aten_row] = train_ours(batch, False, True, True, False, kernels="torch")[1]
    print(f"warm-up: {args.warmup} steps each, excluded from the figures (compile happens here)")
    warm_up(variants, args.warmup)
    timing = interleaved(variants, args.rounds, args.steps)
    print(f"\ntraining images/s ({args.rounds} interleaved rounds x {args.steps} steps; median; "
          "ratios from CPU time)")
    print(f"  {'precision / stage':<34} {'diffusers':>10} {'ours':>10} {'ours/diffusers':>15} "
          f"{'ours/diffusers eager':>21}   (wall: diffusers, ours)")
    ips = {n: args.batch / t["cpu"] for n, t in timing.items()}
    for precision in precisions:
        base = ips[f"diffusers {precision} eager"]
        for stage, *_ in stages:
            d, o = ips[f"diffusers {precision} {stage}"], ips[f"ours {precision} {stage}"]
            dw = args.batch / timing[f"diffusers {precision} {stage}"]["wall"]
            ow = args.batch / timing[f"ours {precision} {stage}"]["wall"]
            fd = flops["diffusers"] * d / args.batch / 1e9  # GFLOP/s
            fo = flops["ours"] * o / args.batch / 1e9
            print(f"  {precision + ' ' + stage:<34} {d:10.1f} {o:10.1f} {'x%.2f' % (o / d):>15} "
                  f"{'x%.2f' % (o / base):>21}   ({dw:.1f}, {ow:.1f})   of the {precision} "
                  f"peak: diffusers {100 * fd / peak[precision]:.1f}%, ours "
                  f"{100 * fo / peak[precision]:.1f}%")
    print(f"  {aten_row:<48} {ips[aten_row]:10.1f}   the native UNet kernels are worth "
          f"x{ips['ours fp32 +fused+channels-last'] / ips[aten_row]:.2f} (per round: "
          f"{ratio_spread(timing[aten_row], timing['ours fp32 +fused+channels-last'])})")
    best_o = max((v, k) for k, v in ips.items() if k.startswith("ours"))
    best_d = max((v, k) for k, v in ips.items() if k.startswith("diffusers"))
    for precision in precisions:
        bo = max((v, k) for k, v in ips.items() if k.startswith(f"ours {precision}"))
        print(f"  best ours {precision} ({bo[1]}) vs diffusers {precision} eager: "
              f"x{bo[0] / ips[f'diffusers {precision} eager']:.2f}")
    print("  as aigc trains by default (ours fp32 +fused+channels-last) vs diffusers as shipped "
          f"(fp32 eager): x{ips['ours fp32 +fused+channels-last'] / ips['diffusers fp32 eager']:.2f}"
          "; vs diffusers with the same options: "
          f"x{ips['ours fp32 +fused+channels-last'] / ips['diffusers fp32 +fused+channels-last']:.2f}")
    print(f"  best ours ({best_o[1]}) vs diffusers as shipped (diffusers fp32 eager): "
          f"x{best_o[0] / ips['diffusers fp32 eager']:.2f} (target >= 1.5x at equal quality)")
    print(f"  best ours ({best_o[1]}) vs best diffusers ({best_d[1]}), same tricks on both sides: "
          f"x{best_o[0] / best_d[0]:.2f}; per round: CPU time "
          f"{ratio_spread(timing[best_d[1]], timing[best_o[1]])}, wall time "
          f"{ratio_spread(timing[best_d[1]], timing[best_o[1]], 'wall')} (target >= 1.5x)")
    if args.quality_steps:
        print(f"\nequal quality: {args.quality_steps} steps, batch {args.batch}, AdamW lr "
              f"{args.quality_lr}, real MNIST; epsilon MSE on 1,000 test images (lower is better)")
        quality_check(args.quality_steps, args.quality_every, args.batch, args.quality_lr,
                      {n: t["cpu"] for n, t in timing.items()}, seed=args.quality_seed)
    print(load_average() + " (after)")
    if args.no_sampling:
        return

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
