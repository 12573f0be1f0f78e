"""Reward-weighted fine-tuning of the VAE on liked images (not DPO).

DPO needs log p(x), which a VAE only bounds from below by its ELBO, estimated with a sampled
latent; a difference of two such noisy bounds is a poor stand-in for a log-likelihood ratio. So
the VAE learns from preferences the older way, by reward-weighted likelihood (reward-weighted
regression, Peters & Schaal, 2007; as a fine-tune of a generative model on rated outputs, Lee et
al., 2023, arXiv:2302.12192, eq. 1 without its pre-training term): maximise the ELBO of the
images people chose, each weighted by the reward r_i (1 unless the pair gives a ``"weight"``):

    L(theta) = sum_i r_i * (-ELBO_theta(x_i^w)) / sum_i r_i
    -ELBO(x) = -E_q[log p(x | z)] + KL(q(z | x) || p(z))          (aigc.models.vae, full KL)

The rejected images get no gradient: this raises the likelihood of what was liked and only
indirectly lowers that of the rest, and nothing but the small step count and learning rate
keeps the model near the reference. The record reports, as DPO's would, the margin of each
pair in nats, (ELBO_theta - ELBO_ref)(x^w) - (ELBO_theta - ELBO_ref)(x^l): positive when the
chosen image gained more than the rejected one.

Pairs are ``{"condition": {}, "chosen": (C, H, W), "rejected": (C, H, W)}`` in [0, 1] (the VAE
is unconditional), optionally with ``"weight": float >= 0``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from aigc.errors import AigcError
from aigc.loop.diffusion_dpo import check_image
from aigc.loop.dpo import (
    GRAD_CLIP,
    ImprovementRecord,
    check_hyperparameters,
    check_pairs_list,
    optimise,
)

EVAL_DRAWS = 4  # latent draws per image for the record's ELBO estimates
_VAE_PAIR = "{'condition': {}, 'chosen': image, 'rejected': image, 'weight': float (optional)}"


def _check_vae_pairs(model: nn.Module, pairs: Any):
    """``(chosen (N, C, H, W), rejected (N, C, H, W), weights (N,))`` or an error."""
    check_pairs_list(pairs, _VAE_PAIR)
    cfg = model.cfg
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    chosen, rejected, weights = [], [], []
    for i, pair in enumerate(pairs):
        if "condition" not in pair:
            raise AigcError(f"pair {i} has no 'condition'; a VAE pair is {_VAE_PAIR}")
        if pair["condition"] not in ({}, None):
            raise AigcError(f"pair {i}: the VAE is unconditional, so its pairs have the condition "
                            f"{{}}, got {pair['condition']!r}")
        weight = pair.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight < 0:
            raise AigcError(f"pair {i}: weight must be a finite number >= 0, got {weight!r}")
        chosen.append(check_image(pair, i, "chosen", shape))
        rejected.append(check_image(pair, i, "rejected", shape))
        weights.append(float(weight))
    if sum(weights) <= 0:
        raise AigcError("every pair has weight 0: nothing to learn from")
    return torch.stack(chosen).float(), torch.stack(rejected).float(), torch.tensor(weights)


def _targets(model: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The images the VAE's likelihood scores: re-binarised for a binarising Bernoulli model
    (as :meth:`aigc.models.vae.VAE.loss` does), drawn from ``gen``."""
    if model.cfg.likelihood == "bernoulli" and model.cfg.binarize:
        return torch.bernoulli(x.cpu(), generator=gen).to(x.device)
    return x


def _negative_elbo(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """``(B,)`` -ELBO with one latent draw; the draw comes from a forked RNG seeded with
    ``seed``, so the estimate is reproducible and the global RNG is left as it was."""
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return model.negative_elbo(x)[0]


def improve_vae(model: nn.Module, pairs: list[dict], *, steps: int = 100, lr: float = 1e-4,
                batch_size: int = 16, seed: int = 0,
                progress: bool | Callable[[float], None] = False,
                reference: nn.Module | None = None) -> tuple[nn.Module, ImprovementRecord]:
    """Reward-weighted ELBO fine-tune of a VAE on the chosen images; trains it in place.

    Args:
        model: an :class:`aigc.models.vae.VAE`.
        pairs: ``{"condition": {}, "chosen", "rejected", "weight"?}``, images in [0, 1].
        steps, lr, batch_size: AdamW steps, learning rate, pairs per step (drawn with
            replacement, in proportion to nothing: the weight enters the loss). Untuned.
        seed: seeds pair order, binarisation and latent draws; deterministic for a seed.
        progress: ``True`` for a progress bar; a callable gets the fraction done after each step.
        reference: the model before fine-tuning, for the record's margins; default a deep copy.

    Returns:
        ``(model, record)``; ``record.beta`` is 1.0 (margins in nats) and ``final_loss`` is the
        weighted mean -ELBO of the chosen images after training.
    """
    from aigc.models.vae import VAE

    if not isinstance(model, VAE):
        raise AigcError(f"improve_vae needs an aigc VAE, got {type(model).__name__}")
    check_hyperparameters(steps, lr, None, batch_size, seed)
    chosen, rejected, weights = _check_vae_pairs(model, pairs)
    ref = reference if reference is not None else copy.deepcopy(model)
    device = model.log_sigma.device
    chosen, rejected, weights = chosen.to(device), rejected.to(device), weights.to(device)
    gen = torch.Generator().manual_seed(seed)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        i = idx.to(device)
        x = _targets(model, chosen[i], gen)
        nelbo = _negative_elbo(model, x, int(torch.randint(0, 2**31 - 1, (), generator=gen)))
        w = weights[i]
        return (w * nelbo).sum() / w.sum().clamp(min=1e-12)

    was_training = model.training
    model.eval()  # no dropout in the VAE; eval also leaves its KL warm-up counter alone
    start = time.perf_counter()
    try:
        last = optimise([p for p in model.parameters() if p.requires_grad], len(chosen),
                        batch_loss, steps=steps, lr=lr, batch_size=batch_size, generator=gen,
                        progress=progress, desc="reward-weighted ELBO (VAE)")
        loss, margins = _evaluate(model, ref, chosen, rejected, weights, seed)
    finally:
        model.train(was_training)
    record = ImprovementRecord(
        method="reward-weighted-elbo", family="vae", pairs=len(chosen), steps=steps,
        batch_size=batch_size, lr=lr, beta=1.0, seed=seed, grad_clip=GRAD_CLIP,
        final_loss=loss, mean_margin=float(margins.mean()),
        accuracy=float((margins > 0).float().mean()), last_batch_loss=last,
        evaluation=f"all {len(chosen)} pairs, -ELBO averaged over {EVAL_DRAWS} latent draws "
                   f"(seed {seed}); margins in nats",
        seconds=round(time.perf_counter() - start, 3))
    return model, record


@torch.no_grad()
def _evaluate(model: nn.Module, ref: nn.Module, chosen: torch.Tensor, rejected: torch.Tensor,
              weights: torch.Tensor, seed: int) -> tuple[float, torch.Tensor]:
    """``(weighted mean -ELBO of the chosen images, per-pair margins (N,) in nats)``; both
    models see the same binarisations and latent noise."""
    def nelbo(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        total = torch.zeros(len(x), device=x.device)
        for d in range(EVAL_DRAWS):
            total += _negative_elbo(m, _targets(m, x, gen), seed + d)
        return total / EVAL_DRAWS

    was = ref.training
    ref.eval()
    try:
        w_gain = nelbo(ref, chosen) - nelbo(model, chosen)  # ELBO_theta - ELBO_ref on x^w
        l_gain = nelbo(ref, rejected) - nelbo(model, rejected)
    finally:
        ref.train(was)
    loss = float((weights * nelbo(model, chosen)).sum() / weights.sum())
    return loss, w_gain - l_gain
