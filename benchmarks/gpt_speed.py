"""Training and generation speed of our GPT vs transformers' GPT2LMHeadModel, in one run.

Same config (default: 4 layers, 4 heads, width 128, context 64, batch 12, the char-level
vocabulary of `austen`), same weights, same optimizer (AdamW), same thread count. Rounds of the
two models alternate (A B A B ...) so that load from other processes hits both alike; the
reported number is the median round.

    python benchmarks/gpt_speed.py                      # defaults above
    python benchmarks/gpt_speed.py --rounds 5 --threads 2

Training: tokens/s of forward + backward + AdamW step (B*T target tokens per step).
Generation: new tokens/s for one sequence with greedy decoding, prompt 16 tokens, 48 new tokens
(fills the 64-token context), KV cache on both sides:
  ours-stream  aigc.generation.stream_text (the path `aigc generate` uses: text decoding, stop
               checks, sampling transforms included)
  ours-model   GPT.generate (the bare KV-cache loop)
  hf           GPT2LMHeadModel.generate(do_sample=False, use_cache=True)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def build(args, vocab_size):
    import transformers

    from aigc.models.gpt import GPT, GPTConfig, gpt2_state_dict_to_hf

    cfg = GPTConfig(vocab_size=vocab_size, context_length=args.context, layers=args.layers,
                    heads=args.heads, width=args.width)
    torch.manual_seed(0)
    ours = GPT(cfg)
    hf_cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=args.context, n_embd=args.width, n_layer=args.layers,
        n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(gpt2_state_dict_to_hf(ours.state_dict(), cfg), strict=False)
    return ours, hf


def train_round(model, step_fn, batches, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step_fn(model, batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def ours_loss(model, tokens):
    return model.loss({"tokens": tokens})


def hf_loss(model, tokens):
    # The same loss as ours on the same (B, T) inputs; GPT2LMHeadModel(labels=...) would shift
    # inside and compute the identical quantity.
    logits = model(input_ids=tokens[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--train-steps", type=int, default=40, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gen-repeats", type=int, default=3, help="generations per timed round")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    from aigc.data.text import load_corpus
    from aigc.data.tokens import TokenWindows, encode_documents
    from aigc.generation import SamplingParams, stream_text
    from aigc.tokenizers import CharTokenizer

    corpus = load_corpus("austen")
    tok = CharTokenizer.train([d for s in ("train", "val", "test") for d in corpus.documents(s)])
    windows = TokenWindows(encode_documents(tok, corpus.documents("val")), args.context,
                           stride=args.context)
    gen = torch.Generator().manual_seed(0)
    batches = [windows.get_batch(torch.randint(0, len(windows), (args.batch,), generator=gen))["tokens"]
               for _ in range(8)]
    ours, hf = build(args, tok.vocab_size)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"config: layers={args.layers} heads={args.heads} width={args.width} "
          f"context={args.context} batch={args.batch} vocab={tok.vocab_size} "
          f"params={n_params / 1e6:.2f}M threads={args.threads} torch={torch.__version__} "
          f"transformers={transformers.__version__} attn={hf.config._attn_implementation}")

    # ---- training
    train_round(ours, ours_loss, batches, 5)  # warm-up
    train_round(hf, hf_loss, batches, 5)
    t_ours, t_hf = [], []
    for _ in range(args.rounds):
        t_ours.append(train_round(ours, ours_loss, batches, args.train_steps))
        t_hf.append(train_round(hf, hf_loss, batches, args.train_steps))
    tokens = args.train_steps * args.batch * args.context
    ours_tps, hf_tps = tokens / statistics.median(t_ours), tokens / statistics.median(t_hf)
    print(f"train tokens/s: ours {ours_tps:,.0f}  transformers {hf_tps:,.0f}  "
          f"ratio {ours_tps / hf_tps:.2f}x (target >= 1.3x)")

    # ---- generation (same weights again: copy ours into hf after training diverged them)
    from aigc.models.gpt import gpt2_state_dict_to_hf

    hf.load_state_dict(gpt2_state_dict_to_hf(ours.state_dict(), ours.cfg), strict=False)
    ours.eval()
    hf.eval()
    prompt_text = corpus.documents("val")[0][:15]
    prompt_ids = [0] + tok.encode(prompt_text)  # 16 tokens
    new = args.context - len(prompt_ids)
    params = SamplingParams(temperature=0, max_tokens=new, stop_at_end=False)
    x = torch.tensor([prompt_ids])

    def run_stream():
        s = stream_text(ours, tok, prompt_text, params)
        s.result()
        return s.tokens

    def run_model():
        return ours.generate(x, new, temperature=0)[0, len(prompt_ids):].tolist()

    def run_hf():
        with torch.no_grad():
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
        return out[0, len(prompt_ids):].tolist()

    a, b, c = run_stream(), run_model(), run_hf()
    print(f"greedy outputs identical: stream==model {a == b}, model==hf {b == c}")
    times = {"ours-stream": [], "ours-model": [], "hf": []}
    fns = {"ours-stream": run_stream, "ours-model": run_model, "hf": run_hf}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.gen_repeats):
                fn()
            times[name].append(time.perf_counter() - t0)
    tps = {k: new * args.gen_repeats / statistics.median(v) for k, v in times.items()}
    print(f"generation tokens/s: ours-stream {tps['ours-stream']:,.0f}  ours-model "
          f"{tps['ours-model']:,.0f}  transformers generate() {tps['hf']:,.0f}")
    print(f"generation ratio: stream {tps['ours-stream'] / tps['hf']:.2f}x, bare model "
          f"{tps['ours-model'] / tps['hf']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
