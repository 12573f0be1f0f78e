"""Direct Preference Optimization (Rafailov et al., 2023) for our GPT and for LoRA adapters.

Given a prompt x, a chosen reply y_w and a rejected one y_l, DPO fits the policy pi_theta to the
preference directly, against a frozen reference pi_ref (the model before improvement):

    r(x, y) = beta * (log pi_theta(y | x) - log pi_ref(y | x))          (implicit reward, eq. 5)
    L_DPO   = -E log sigmoid(r(x, y_w) - r(x, y_l))                                     (eq. 7)
            = -E log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))

with pi_w = log pi_theta(y_w | x) summed over the reply's tokens (the prompt's tokens are not
scored). The gradient raises pi_w and lowers pi_l, weighted by sigmoid(r_l - r_w): pairs the
policy already ranks correctly count less (eq. 8). At the start pi_theta = pi_ref, so the loss
is log 2 and every margin r_w - r_l is 0. beta (0.1 in the paper) sets how far the policy may
drift from the reference: the KL penalty of the RLHF objective the loss is derived from.

Drivers (each takes a model, a list of preference pairs and a few hyper-parameters, trains the
model in place with AdamW, and returns it with an :class:`ImprovementRecord`):

* :func:`improve_gpt`: our GPT (char or BPE tokenizer); the reference is a frozen deep copy.
* :func:`improve_lora`: a transformers causal LM wrapped in a ``peft`` LoRA adapter (SmolLM2);
  the reference is the same network with the adapter disabled, so it costs no memory.
* :func:`aigc.loop.diffusion_dpo.improve_diffusion`: Diffusion-DPO for our diffusion model.
* :func:`aigc.loop.reward_weighted.improve_vae`: the VAE, by a reward-weighted ELBO on the
  liked images (not DPO).
* :func:`improve_unsupported`: the GAN, refused with the reason.

Every driver is deterministic for a given seed (batch order from one ``torch.Generator``,
dropout off in policy and reference, as TRL does by default) and keeps no global state.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc.errors import AigcError

GRAD_CLIP = 1.0  # max gradient norm, as aigc.finetune and the Diffusion-DPO training script use


@dataclass(frozen=True)
class ImprovementRecord:
    """What an improvement run did, for the registry's lineage and the studio's job record."""

    method: str  # "dpo" or "diffusion-dpo"
    family: str  # "gpt", "lora" or "diffusion"
    pairs: int
    steps: int
    batch_size: int
    lr: float
    beta: float
    seed: int
    grad_clip: float
    final_loss: float  # DPO loss over all pairs after training (log 2 = 0.693 before)
    mean_margin: float  # mean implicit reward margin r_w - r_l over all pairs (0 before)
    accuracy: float  # share of pairs whose margin is positive (0 before: every margin is 0)
    last_batch_loss: float  # the loss of the last optimisation step's batch
    evaluation: str  # how final_loss, mean_margin and accuracy were measured
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ the loss


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss (Rafailov et al., 2023, eq. 7), mean over the batch, and its statistics.

    Args:
        policy_chosen_logps: ``(B,)`` log pi_theta(y_w | x), summed over the reply tokens.
        policy_rejected_logps: ``(B,)`` log pi_theta(y_l | x).
        ref_chosen_logps: ``(B,)`` log pi_ref(y_w | x) (no gradient needed).
        ref_rejected_logps: ``(B,)`` log pi_ref(y_l | x).
        beta: the KL coefficient, > 0.

    Returns:
        ``(loss, stats)``: the scalar loss and ``{"reward_margin": mean of r_w - r_l,
        "reward_accuracy": share of pairs with r_w - r_l > 0, "chosen_reward": mean r_w,
        "rejected_reward": mean r_l}`` as floats.

    Example:
        >>> zero = torch.zeros(3)
        >>> round(float(dpo_loss(zero, zero, zero, zero, beta=0.1)[0]), 4)  # log 2
        0.6931
    """
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise AigcError(f"beta must be a finite number > 0, got {beta!r}")
    shapes = {t.shape for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                ref_rejected_logps)}
    if len(shapes) != 1 or policy_chosen_logps.ndim != 1:
        raise AigcError(f"the four log-probabilities must be (B,) tensors of one shape, got "
                        f"{sorted(tuple(s) for s in shapes)}")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps.detach())  # r(x, y_w), eq. 5
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps.detach())
    margins = chosen_rewards - rejected_rewards  # (B,)
    loss = -F.logsigmoid(margins).mean()  # eq. 7
    stats = {
        "reward_margin": float(margins.detach().mean()),
        "reward_accuracy": float((margins.detach() > 0).float().mean()),
        "chosen_reward": float(chosen_rewards.detach().mean()),
        "rejected_reward": float(rejected_rewards.detach().mean()),
    }
    return loss, stats


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of the marked tokens: ``sum_t mask[b, t] log p(labels[b, t])``.

    Args:
        logits: ``(B, T, V)`` next-token logits; ``logits[:, t]`` predicts ``labels[:, t]``
            (the caller shifts: logits of ``ids[:, :-1]`` against labels ``ids[:, 1:]``).
        labels: ``(B, T)`` token ids; any value where ``mask`` is 0 (padding, ``-100``).
        mask: ``(B, T)``, 1 on the reply tokens to score, 0 on prompt and padding.

    Returns:
        ``(B,)`` float32 sums (log-softmax in float32 whatever the logits' dtype).
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2] or mask.shape != labels.shape:
        raise AigcError(f"sequence_logps needs logits (B, T, V) with labels and mask (B, T), got "
                        f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}")
    keep = mask.bool()
    safe = labels.masked_fill(~keep, 0)  # masked labels may be -100; gather needs a valid id
    logp = logits.float().log_softmax(-1).gather(-1, safe[..., None]).squeeze(-1)  # (B, T)
    return (logp * keep).sum(-1)


# ------------------------------------------------------------ checks shared by the drivers


def check_hyperparameters(steps: int, lr: float, beta: float | None, batch_size: int,
                          seed: int) -> None:
    """Refuse a non-positive step count, learning rate, beta (unless ``None``: a method without
    one) or batch size, or a negative seed, naming the value."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AigcError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("lr", lr), ("beta", beta)):
        if value is None and name == "beta":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise AigcError(f"{name} must be a finite number > 0, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AigcError(f"seed must be an integer >= 0, got {seed!r}")


def check_pairs_list(pairs: Any, needs: str) -> None:
    """A non-empty list of dicts, or an error saying what a pair must look like."""
    if not isinstance(pairs, Sequence) or isinstance(pairs, (str, bytes)):
        raise AigcError(f"pairs must be a list of {needs}, got {type(pairs).__name__}")
    if not pairs:
        raise AigcError(f"pairs is empty: improvement needs at least one preference pair "
                        f"({needs})")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise AigcError(f"pair {i} must be a dict ({needs}), got {type(pair).__name__}")


def progress_callback(progress: bool | Callable[[float], None], desc: str,
                      steps: int) -> tuple[Callable[[float], None] | None, Any]:
    """``(report, bar)``: ``report(fraction)`` for a callable, a tqdm bar for ``True``."""
    if callable(progress):
        return progress, None
    if progress:
        from tqdm.auto import tqdm

        return None, tqdm(total=steps, desc=desc, leave=False)
    return None, None


def optimise(params: list[nn.Parameter], n_pairs: int, batch_loss, *, steps: int, lr: float,
             batch_size: int, generator: torch.Generator,
             progress: bool | Callable[[float], None], desc: str) -> float:
    """The loop every driver shares: draw ``batch_size`` pair indices (with replacement, from
    ``generator``), ``loss = batch_loss(indices)``, clip, AdamW step. Returns the last loss.

    Weight decay is 0: it would pull the policy somewhere the DPO objective does not ask for.
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    report, bar = progress_callback(progress, desc, steps)
    loss = torch.zeros(())
    try:
        for step in range(steps):
            idx = torch.randint(0, n_pairs, (batch_size,), generator=generator)
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if report is not None:
                report((step + 1) / steps)
    finally:
        if bar is not None:
            bar.close()
    return float(loss.detach())


# ----------------------------------------------------------------------- text pairs -> ids


_TEXT_PAIR = "{'prompt': str, 'chosen': str, 'rejected': str}"


def _check_text_pairs(pairs: Any) -> None:
    check_pairs_list(pairs, _TEXT_PAIR)
    for i, pair in enumerate(pairs):
        if "condition" in pair or any(isinstance(pair.get(k), torch.Tensor)
                                      for k in ("chosen", "rejected")):
            raise AigcError(f"pair {i} is an image pair (condition and image tensors); a text "
                            f"model needs text pairs {_TEXT_PAIR} (use "
                            "aigc.loop.diffusion_dpo.improve_diffusion for images)")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(pair.get(key), str):
                raise AigcError(f"pair {i}: {key!r} must be a string, got "
                                f"{type(pair.get(key)).__name__} (a text pair is {_TEXT_PAIR})")
        if not pair["chosen"] or not pair["rejected"]:
            raise AigcError(f"pair {i}: an empty reply cannot be scored")
        if pair["chosen"] == pair["rejected"]:
            raise AigcError(f"pair {i}: chosen and rejected are the same text; a preference "
                            "needs two different replies")


def _encoder(tokenizer) -> Callable[[str], list[int]]:
    if hasattr(tokenizer, "encode"):
        return tokenizer.encode
    if callable(tokenizer):
        return tokenizer
    raise AigcError(f"tokenizer must have .encode(text) or be a function text -> ids, got "
                    f"{type(tokenizer).__name__}")


def _encode_pairs(pairs: list[dict], prompt_ids: Callable[[str], list[int]],
                  reply_ids: Callable[[str], list[int]], max_len: int,
                  limit: str) -> list[tuple]:
    """``[(prompt, chosen, rejected)]`` token id lists, each sequence within ``max_len`` tokens
    (``limit`` says where that number comes from, for the error)."""
    examples = []
    for i, pair in enumerate(pairs):
        p = list(prompt_ids(pair["prompt"]))
        if not p:
            raise AigcError(f"pair {i}: the prompt encodes to no tokens, so the reply's first "
                            "token has nothing to be predicted from")
        w, l_ = list(reply_ids(pair["chosen"])), list(reply_ids(pair["rejected"]))
        longest = len(p) + max(len(w), len(l_))
        if longest > max_len:
            raise AigcError(f"pair {i}: prompt + reply is {longest} tokens, more than the "
                            f"{max_len} this model can score ({limit}); shorten or drop the "
                            "pair")
        examples.append((p, w, l_))
    return examples


def _collate(examples: list[tuple], pad_id: int = 0):
    """Chosen sequences then rejected ones, right-padded: ``ids (2B, L)``, ``attention (2B, L)``,
    and for the shifted targets ``labels (2B, L-1)`` and ``reply_mask (2B, L-1)`` (1 where token
    ``t+1`` belongs to the reply)."""
    seqs = [(p, w) for p, w, _ in examples] + [(p, l_) for p, _, l_ in examples]
    length = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), length), dtype=torch.long)
    reply = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention[i, : len(p) + len(r)] = 1
        reply[i, len(p) : len(p) + len(r)] = True
    return ids, attention, ids[:, 1:], reply[:, 1:]


def _pair_logps(forward: Callable, examples: list[tuple],
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen (B,), rejected (B,))`` summed reply log-probabilities in one forward pass."""
    ids, attention, labels, mask = (x.to(device) for x in _collate(examples))
    logits = forward(ids, attention)  # (2B, L-1, V): logits of ids[:, :-1]
    return sequence_logps(logits, labels, mask).chunk(2)


def _run_text_dpo(policy_forward: Callable, ref_forward: Callable, params: list[nn.Parameter],
                  examples: list[tuple], *, steps: int, lr: float, beta: float, batch_size: int,
                  seed: int, progress, family: str) -> ImprovementRecord:
    device = params[0].device
    start = time.perf_counter()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        batch = [examples[i] for i in idx.tolist()]
        with torch.no_grad():
            ref_w, ref_l = _pair_logps(ref_forward, batch, device)
        pi_w, pi_l = _pair_logps(policy_forward, batch, device)
        return dpo_loss(pi_w, pi_l, ref_w, ref_l, beta)[0]

    gen = torch.Generator().manual_seed(seed)
    last = optimise(params, len(examples), batch_loss, steps=steps, lr=lr, batch_size=batch_size,
                    generator=gen, progress=progress, desc=f"DPO ({family})")
    pi_w, pi_l, ref_w, ref_l = [], [], [], []
    with torch.no_grad():  # every pair once, exact log-probabilities
        for s in range(0, len(examples), batch_size):
            chunk = examples[s : s + batch_size]
            w, l_ = _pair_logps(policy_forward, chunk, device)
            pi_w.append(w)
            pi_l.append(l_)
            w, l_ = _pair_logps(ref_forward, chunk, device)
            ref_w.append(w)
            ref_l.append(l_)
        loss, stats = dpo_loss(torch.cat(pi_w), torch.cat(pi_l), torch.cat(ref_w),
                               torch.cat(ref_l), beta)
    return ImprovementRecord(
        method="dpo", family=family, pairs=len(examples), steps=steps, batch_size=batch_size,
        lr=lr, beta=beta, seed=seed, grad_clip=GRAD_CLIP, final_loss=float(loss),
        mean_margin=stats["reward_margin"], accuracy=stats["reward_accuracy"],
        last_batch_loss=last, evaluation=f"all {len(examples)} pairs, exact log-probabilities",
        seconds=round(time.perf_counter() - start, 3))


# -------------------------------------------------------------------------------- our GPT


def improve_gpt(model: nn.Module, tokenizer, pairs: list[dict], *, steps: int = 100,
                lr: float = 1e-5, beta: float = 0.1, batch_size: int = 8, seed: int = 0,
                progress: bool | Callable[[float], None] = False,
                reference: nn.Module | None = None) -> tuple[nn.Module, ImprovementRecord]:
    """DPO on our GPT from text preference pairs; trains ``model`` in place.

    A pair is ``{"prompt": str, "chosen": str, "rejected": str}``. Each sequence is scored the
    way :mod:`aigc.generation` produced it: ``<|endoftext|>`` + prompt + reply, the reply's
    tokens only (no end token is appended: a reply cut at ``max_tokens`` did not end).

    Args:
        model: an :class:`aigc.models.gpt.GPT`.
        tokenizer: the model's tokenizer (``.encode(text) -> ids``), or such a function.
        pairs: the preference pairs (at least one).
        steps, lr, batch_size: AdamW steps, learning rate, pairs per step (drawn with
            replacement). The defaults are untuned starting points.
        beta: the DPO KL coefficient (0.1 in Rafailov et al.).
        seed: seeds the batch order; the run is deterministic for a given seed.
        progress: ``True`` for a progress bar; a callable gets the fraction done after each step.
        reference: the frozen reference policy; default a deep copy of ``model`` at the start.
            It is only read (under ``torch.no_grad``), never changed.
    """
    from aigc.models.gpt import GPT

    if not isinstance(model, GPT):
        raise AigcError(f"improve_gpt needs an aigc GPT, got {type(model).__name__} (diffusion: "
                        "improve_diffusion; a peft LoRA model: improve_lora)")
    check_hyperparameters(steps, lr, beta, batch_size, seed)
    _check_text_pairs(pairs)
    encode = _encoder(tokenizer)
    eot = getattr(tokenizer, "eot_id", 0)  # aigc tokenizers put <|endoftext|> at id 0
    # A GPT sees context_length inputs; a sequence of n tokens has n - 1 inputs.
    examples = _encode_pairs(pairs, lambda p: [eot] + list(encode(p)), encode,
                             model.cfg.context_length + 1,
                             f"<|endoftext|> + prompt + reply <= context_length + 1 = "
                             f"{model.cfg.context_length + 1}")
    ref = reference if reference is not None else copy.deepcopy(model)
    was_training, ref_was_training = model.training, ref.training
    model.eval()  # dropout off in both: the margin is exactly 0 at step 0
    ref.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AigcError("the GPT has no trainable parameters (every requires_grad is False)")
    try:
        record = _run_text_dpo(lambda ids, _: model(ids[:, :-1]), lambda ids, _: ref(ids[:, :-1]),
                               params, examples, steps=steps, lr=lr, beta=beta,
                               batch_size=batch_size, seed=seed, progress=progress, family="gpt")
    finally:
        model.train(was_training)
        ref.train(ref_was_training)
    return model, record


# ----------------------------------------------------------- transformers causal LM + LoRA


def improve_lora(model: nn.Module, tokenizer, pairs: list[dict], *, steps: int = 100,
                 lr: float = 1e-4, beta: float = 0.1, batch_size: int = 4, seed: int = 0,
                 progress: bool | Callable[[float], None] = False,
                 ) -> tuple[nn.Module, ImprovementRecord]:
    """DPO on the LoRA adapter of a ``peft`` model over a transformers causal LM (SmolLM2).

    Only the adapter's trainable parameters move; the reference policy is the same network with
    the adapter disabled (``with model.disable_adapter():``), i.e. the base model. Start from a
    fresh adapter (``peft.get_peft_model``, whose B matrices are zero, so policy = reference at
    step 0) or from a fine-tuned one (then the reference is still the base model, not it).

    Args:
        model: a ``peft`` model (``get_peft_model(causal_lm, LoraConfig(...))``).
        tokenizer: :class:`aigc.models.pretrained.HFTokenizer` (then the prompt goes through
            the chat template as a user turn and each reply ends with ``<|im_end|>``, the way
            SmolLM2 answered), or anything with ``.encode(text) -> ids``, or such a function
            (prompt and reply are then plainly concatenated).
        pairs, steps, lr, beta, batch_size, seed, progress: as :func:`improve_gpt`.
    """
    if not hasattr(model, "disable_adapter") or not hasattr(model, "peft_config"):
        raise AigcError(f"improve_lora needs a peft model with a LoRA adapter "
                        f"(peft.get_peft_model), got {type(model).__name__}")
    check_hyperparameters(steps, lr, beta, batch_size, seed)
    _check_text_pairs(pairs)
    encode = _encoder(tokenizer)
    prompt_ids, reply_ids = encode, encode
    if hasattr(tokenizer, "chat_ids"):  # same as aigc.finetune._pair_tensors
        end_id = tokenizer.hf.convert_tokens_to_ids("<|im_end|>")

        def prompt_ids(prompt: str) -> list[int]:
            return tokenizer.chat_ids([{"role": "user", "content": prompt}])

        def reply_ids(reply: str) -> list[int]:
            return list(encode(reply)) + [end_id]

    examples = _encode_pairs(pairs, prompt_ids, reply_ids,
                             model.config.max_position_embeddings,
                             f"max_position_embeddings={model.config.max_position_embeddings}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AigcError("the peft model has no trainable parameters (is the adapter frozen?)")

    def policy_forward(ids, attention):
        return model(input_ids=ids, attention_mask=attention).logits[:, :-1]

    def ref_forward(ids, attention):
        with model.disable_adapter():
            return model(input_ids=ids, attention_mask=attention).logits[:, :-1]

    was_training = model.training
    model.eval()  # LoRA dropout off: the margin is exactly 0 at step 0
    try:
        record = _run_text_dpo(policy_forward, ref_forward, params, examples, steps=steps, lr=lr,
                               beta=beta, batch_size=batch_size, seed=seed, progress=progress,
                               family="lora")
    finally:
        model.train(was_training)
    return model, record


# ------------------------------------------------------------------------- GAN and VAE


_UNSUPPORTED = {
    "gan": "a GAN has no likelihood of an image, so neither DPO (which needs log pi(y|x)) nor "
           "Diffusion-DPO (which needs a denoising error) applies; improving it from ratings "
           "would need a reward model to train the generator against, which aigc does not have",
}


def improve_unsupported(family: str):
    """Refuse to improve a GAN from preferences, with the reason; always raises.

    A VAE is not refused but not improved by DPO either: see
    :func:`aigc.loop.reward_weighted.improve_vae` (reward-weighted ELBO on liked images).
    """
    if family == "vae":
        raise AigcError("a VAE is not improved by DPO (it has an ELBO, not a log-likelihood); "
                        "use aigc.loop.reward_weighted.improve_vae, a reward-weighted ELBO "
                        "fine-tune on the chosen images")
    reason = _UNSUPPORTED.get(family)
    if reason is None:
        raise AigcError(f"improve_unsupported is for 'gan', got {family!r}; diffusion, GPT, "
                        "LoRA and VAE models can be improved from preferences")
    raise AigcError(f"improving a {family} model from feedback is not supported: {reason}")
