"""Validation loss on `austen` (character level) after equal wall-clock training: our GPT vs
transformers' GPT2LMHeadModel, same config, same initial weights, same data order, same
optimizer, in one run.

Training alternates between the two models in chunks of --chunk-s seconds until each has used
--minutes of its own wall-clock time, so load from other processes on the machine hits both
alike. The faster model takes more steps in the same time; that is the point of the comparison.

    python benchmarks/gpt_austen_equal_time.py --minutes 10      # the issue's protocol
    python benchmarks/gpt_austen_equal_time.py --minutes 3       # a shorter budget

Loss: mean next-character cross-entropy (nats) on the first --val-windows non-overlapping
windows of the validation split (chapters i % 20 == 1); also reported in bits per character.
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


@torch.no_grad()
def val_loss(model, loss_fn, windows, n):
    model.eval()
    total = 0.0
    idx = torch.arange(min(n, len(windows)))
    for chunk in idx.split(64):
        total += float(loss_fn(model, windows.get_batch(chunk)["tokens"])) * len(chunk)
    model.train()
    return total / len(idx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training time per model")
    p.add_argument("--chunk-s", type=float, default=15.0)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--val-windows", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from gpt_speed import build, hf_loss, ours_loss  # same models and losses as the speed bench

    from aigc.data.text import load_corpus
    from aigc.data.tokens import TokenWindows, encode_documents
    from aigc.tokenizers import CharTokenizer

    corpus = load_corpus("austen")
    tok = CharTokenizer.train([d for s in ("train", "val", "test") for d in corpus.documents(s)])
    train = TokenWindows(encode_documents(tok, corpus.documents("train")), args.context)
    val = TokenWindows(encode_documents(tok, corpus.documents("val")), args.context,
                       stride=args.context)
    ours, hf = build(args, tok.vocab_size)
    runs = {}
    for name, model, fn in (("ours", ours, ours_loss), ("transformers", hf, hf_loss)):
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
        runs[name] = dict(model=model, fn=fn, opt=opt, steps=0, used=0.0,
                          gen=torch.Generator().manual_seed(0), last=float("nan"))
    budget = args.minutes * 60
    print(f"austen char-level: vocab {tok.vocab_size}, train {len(train.stream):,} tokens, val "
          f"{len(val.stream):,}; {args.minutes} min per model, threads={args.threads}")
    while any(r["used"] < budget for r in runs.values()):
        for r in runs.values():
            if r["used"] >= budget:
                continue
            r["model"].train()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.chunk_s and r["used"] + time.perf_counter() - t0 < budget:
                lr = args.lr * min(1.0, (r["steps"] + 1) / args.warmup)
                for g in r["opt"].param_groups:
                    g["lr"] = lr
                idx = torch.randint(0, len(train), (args.batch,), generator=r["gen"])
                loss = r["fn"](r["model"], train.get_batch(idx)["tokens"])
                r["opt"].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0)
                r["opt"].step()
                r["steps"] += 1
                r["last"] = float(loss.detach())
            r["used"] += time.perf_counter() - t0
        print("  " + "  ".join(f"{n}: {r['used'] / 60:.1f} min, {r['steps']} steps, "
                               f"train loss {r['last']:.3f}" for n, r in runs.items()), flush=True)
    losses = {n: val_loss(r["model"], r["fn"], val, args.val_windows) for n, r in runs.items()}
    for n, r in runs.items():
        print(f"{n:>12}: {r['steps']} steps in {r['used'] / 60:.2f} min, val loss "
              f"{losses[n]:.4f} nats/char ({losses[n] / math.log(2):.3f} bits/char)")
    verdict = "lower" if losses["ours"] < losses["transformers"] else "NOT lower"
    print(f"ours - transformers = {losses['ours'] - losses['transformers']:+.4f} nats/char "
          f"({verdict}; target: lower); steps ratio "
          f"{runs['ours']['steps'] / runs['transformers']['steps']:.2f}x")


if __name__ == "__main__":
    main()
