"""Does the fused AdamW (aigc's default since 2026-11-30) train as well as the for-loop one?

The trainer's ``adamw_impl="auto"`` became the fused kernel on CPU (aigc.train.adamw_flags);
PyTorch's own CPU default is the for-loop kernel. Both compute the same update up to float
rounding. This runs each implementation from the same initial weights on the same batches and
the same noise, one after the other, and prints the loss curves side by side, the largest
difference, and CPU seconds per step:

1. GPT (the gpt_speed.py configuration: 4 layers, width 128, context 64, batch 12, the
   ``austen`` corpus): mean next-token loss on 16 fixed validation batches;
2. the diffusion UNet of diffusion_speed.py (1.19M parameters, batch 32, real MNIST): epsilon
   MSE on 1,000 test images with one fixed draw of t, noise and labels.

    OMP_NUM_THREADS=1 python benchmarks/adamw_impl_check.py [--gpt-steps 600 --unet-steps 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

IMPLS = ("for-loop", "fused")


def _optimizer(model, impl: str, lr: float):
    from aigc.config import TrainConfig
    from aigc.train import make_adamw

    return make_adamw(list(model.parameters()), TrainConfig(lr=lr, adamw_impl=impl))


def _train(model, opt, batch_at, steps: int, every: int, evaluate) -> tuple[list[float], float]:
    """``steps`` AdamW steps on ``batch_at(i)``; ``evaluate()`` every ``every`` steps. Returns the
    curve and the CPU seconds of the training steps alone."""
    curve, cpu = [], 0.0
    for i in range(steps):
        t0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        model.loss(batch_at(i)).backward()
        opt.step()
        cpu += time.process_time() - t0
        if (i + 1) % every == 0:
            curve.append(evaluate())
    return curve, cpu


def _flags(opt) -> dict:
    return {k: v for k, v in opt.defaults.items() if k in ("fused", "foreach")}


def gpt_curves(steps: int, every: int) -> dict:
    import argparse as ap

    from gpt_speed import build

    from aigc.data.text import load_corpus
    from aigc.data.tokens import TokenWindows, encode_documents
    from aigc.tokenizers import CharTokenizer

    corpus = load_corpus("austen")
    tok = CharTokenizer.train([d for s in ("train", "val", "test") for d in corpus.documents(s)])
    train = TokenWindows(encode_documents(tok, corpus.documents("train")), 64, stride=64)
    val = TokenWindows(encode_documents(tok, corpus.documents("val")), 64, stride=64)
    g = torch.Generator().manual_seed(0)
    order = torch.randint(0, len(train), (steps, 12), generator=g)
    val_batches = [val.get_batch(torch.arange(i * 12, (i + 1) * 12)) for i in range(16)]
    out = {}
    for impl in IMPLS:
        model, _ = build(ap.Namespace(context=64, layers=4, heads=4, width=128), tok.vocab_size)
        opt = _optimizer(model, impl, 1e-3)

        @torch.no_grad()
        def val_loss(model=model):
            return sum(model.loss(b).item() for b in val_batches) / len(val_batches)

        curve, cpu = _train(model, opt, lambda i: train.get_batch(order[i]), steps, every, val_loss)
        out[impl] = {"curve": curve, "cpu_per_step": cpu / steps, "flags": _flags(opt)}
    return out


def unet_curves(steps: int, every: int) -> dict:
    from diffusion_speed import noised_test_set, ours_model

    from aigc.data.images import load_images

    train, test = load_images("mnist", "train"), load_images("mnist", "test")
    g = torch.Generator().manual_seed(1)
    order = torch.randint(0, len(train), (steps, 32), generator=g)
    x_t, t, labels, eps = noised_test_set(test, g)
    out = {}
    for impl in IMPLS:
        torch.manual_seed(0)
        model = ours_model()
        opt = _optimizer(model, impl, 1e-4)
        torch.manual_seed(1)  # the training noise and timesteps: the same stream per impl

        @torch.no_grad()
        def test_mse(model=model):
            model.eval()
            preds = [model.unet(x, tt, model.unet.condition(lab)) for x, tt, lab in
                     zip(x_t.split(250), t.split(250), labels.split(250), strict=True)]
            model.train()
            return F.mse_loss(torch.cat(preds), eps).item()

        curve, cpu = _train(model, opt, lambda i: train.get_batch(order[i]), steps, every, test_mse)
        out[impl] = {"curve": curve, "cpu_per_step": cpu / steps, "flags": _flags(opt)}
    return out


def report(title: str, result: dict, every: int) -> None:
    a, b = (result[i]["curve"] for i in IMPLS)
    marks = [every * (i + 1) for i in range(len(a))]
    print(f"\n{title}")
    print(f"  {'after steps':<24}" + "".join(f"{m:>9}" for m in marks))
    for impl in IMPLS:
        print(f"  {impl:<24}" + "".join(f"{v:9.4f}" for v in result[impl]["curve"]))
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    rel = max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))
    fl, fu = (result[i]["cpu_per_step"] for i in IMPLS)
    print(f"  largest difference: {diff:.2e} ({100 * rel:.3f}% of the loss); final: fused "
          f"{b[-1]:.4f} vs for-loop {a[-1]:.4f} ({'not worse' if b[-1] <= a[-1] * 1.005 else 'WORSE'}"
          f" at a 0.5% tolerance)")
    print(f"  CPU s per step (sequential runs, not interleaved): for-loop {fl * 1e3:.1f} ms, fused "
          f"{fu * 1e3:.1f} ms, x{fl / fu:.2f}; optimizer flags {[result[i]['flags'] for i in IMPLS]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpt-steps", type=int, default=600)
    p.add_argument("--unet-steps", type=int, default=200)
    p.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from _machine import machine_line

    print(machine_line())
    if args.gpt_steps:
        report(f"GPT, austen, {args.gpt_steps} steps: validation loss (nats/char)",
               gpt_curves(args.gpt_steps, args.every), args.every)
    if args.unet_steps:
        report(f"diffusion UNet, MNIST, {args.unet_steps} steps: test epsilon MSE",
               unet_curves(args.unet_steps, args.every), args.every)


if __name__ == "__main__":
    main()
