"""Diffusion-DPO (Wallace et al., 2023, arXiv:2311.12908) for our diffusion model.

A diffusion model has no tractable log p(x_0 | c), but its ELBO is a weighted sum of denoising
errors, so the DPO objective (Rafailov et al., 2023, eq. 7) becomes, for a winner x_0^w and a
loser x_0^l under the same condition c, with one timestep t ~ U{0..T-1} and one noise eps shared
by both (Wallace et al., eq. 14, with the weighting omega(lambda_t) = 1):

    x_t^* = sqrt(a_t) x_0^* + sqrt(1 - a_t) eps                         (q(x_t | x_0), * = w, l)
    d^*   = ||eps - eps_theta(x_t^*, t, c)||^2 - ||eps - eps_ref(x_t^*, t, c)||^2
    L     = -E log sigmoid(-beta T (d^w - d^l))

d^* says how much better (negative) or worse the policy denoises x^* than the reference does.
The loss asks the policy to improve on the winner more than on the loser; it is DPO's eq. 7
with log pi(y | x) replaced by minus the denoising error, which is how this module computes it
(:func:`aigc.loop.dpo.dpo_loss` on ``-errors``).

The constant. Our ``beta`` is the whole factor beta * T * omega(lambda_t) of eq. 14, and the
squared errors are means over the C*H*W pixels, not sums. This is the convention of the
authors' released training script, which computes ``-0.5 * beta_dpo * (model_diff -
ref_diff)`` with per-pixel mean errors and ``beta_dpo = 5000`` (Stable Diffusion 1.5), i.e. a
factor of 2500; that is our default. It is untuned for our small models.

Prediction types. For ``prediction="epsilon"`` the error is ||eps - eps_hat||^2, as above. For
``prediction="v"`` it is the model's own training error ||v - v_hat||^2 (as the released script
uses the scheduler's target); since eps - eps_hat = sqrt(a_t) (v - v_hat), that is eq. 14 with
the weighting omega(lambda_t) = 1 / a_t instead of 1.

Conditions: a pair's condition is ``{"label": int}``, ``{"prompt": str}`` (embedded with
MiniLM, the way the model reads prompts) or ``{}`` (the null condition, for unconditional
models). Condition dropout is not applied: the pairs say under which condition an image won.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from aigc.errors import AigcError
from aigc.loop.dpo import (
    GRAD_CLIP,
    ImprovementRecord,
    check_hyperparameters,
    check_pairs_list,
    dpo_loss,
    optimise,
)

DEFAULT_BETA = 2500.0  # beta * T, see the module docstring
EVAL_DRAWS = 4  # (t, eps) draws per pair for the final record's loss, margin and accuracy

_IMAGE_PAIR = ("{'condition': {'label': int} or {'prompt': str} or {}, 'chosen': image, "
               "'rejected': image}")


# ------------------------------------------------------------------------------ the loss


def q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (Ho et al., 2020, eq. 4), ``(B, C, H, W)``.

    Same forward process as :meth:`aigc.models.diffusion.Diffusion.loss`; ``x0`` in [-1, 1].
    """
    a = alphas_cumprod[t].float()[:, None, None, None]  # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def denoising_errors(model: nn.Module, x0: torch.Tensor, cond: dict[str, torch.Tensor],
                     t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error of the network's training target: ``(B,)``.

    The target is ``eps`` (``prediction="epsilon"``) or ``v = sqrt(a) eps - sqrt(1-a) x_0``
    (``"v"``), exactly as :meth:`aigc.models.diffusion.Diffusion.loss` trains it.

    Args:
        model: an :class:`aigc.models.diffusion.Diffusion`.
        x0: ``(B, C, H, W)`` clean images in [-1, 1].
        cond: ``{"labels": (B,), "text": (B, 384) or absent, "text_mask": (B,) or absent}``,
            the arguments of ``model.unet.condition`` (each model embeds them with its own
            weights, so policy and reference each build their own condition vector).
        t: ``(B,)`` timesteps in ``0..num_train_timesteps-1``.
        noise: ``(B, C, H, W)`` standard normal.
    """
    x_t = q_sample(model.alphas_cumprod, x0, t, noise)
    if model.cfg.prediction == "epsilon":
        target = noise
    else:  # v-prediction (Salimans & Ho, 2022)
        a = model.alphas_cumprod[t].float()[:, None, None, None]
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
    c = model.unet.condition(cond["labels"], cond.get("text"), cond.get("text_mask"))
    pred = model.unet(x_t, t, c)
    return (pred.float() - target).pow(2).mean(dim=(1, 2, 3))


def diffusion_dpo_loss(model: nn.Module, ref_model: nn.Module, x_w: torch.Tensor,
                       x_l: torch.Tensor, cond: dict[str, torch.Tensor], t: torch.Tensor,
                       noise: torch.Tensor, beta: float = DEFAULT_BETA,
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """The Diffusion-DPO loss (Wallace et al., 2023, eq. 14), mean over the batch.

    Winner and loser share ``t`` and ``noise``; ``ref_model`` runs under ``torch.no_grad``.

    Args:
        model, ref_model: the policy and the frozen reference (both ``Diffusion``).
        x_w, x_l: ``(B, C, H, W)`` chosen and rejected images in [-1, 1] (model space).
        cond: the condition of each pair, see :func:`denoising_errors`.
        t: ``(B,)`` timesteps; noise: ``(B, C, H, W)``.
        beta: the factor beta * T of eq. 14 (see the module docstring; default 2500).

    Returns:
        ``(loss, stats)`` with the statistics of :func:`aigc.loop.dpo.dpo_loss`: the implicit
        reward margin is ``-beta (d^w - d^l)``, positive when the policy gained more on the
        winner than on the loser.
    """
    if x_w.shape != x_l.shape or x_w.ndim != 4:
        raise AigcError(f"x_w and x_l must be (B, C, H, W) of one shape, got "
                        f"{tuple(x_w.shape)} and {tuple(x_l.shape)}")
    both = torch.cat([x_w, x_l])  # (2B, C, H, W): one forward pass per model
    cond2 = {k: torch.cat([v, v]) for k, v in cond.items() if v is not None}
    t2, noise2 = torch.cat([t, t]), torch.cat([noise, noise])
    err_w, err_l = denoising_errors(model, both, cond2, t2, noise2).chunk(2)
    with torch.no_grad():
        ref_w, ref_l = denoising_errors(ref_model, both, cond2, t2, noise2).chunk(2)
    # eq. 14 is eq. 7 with log pi replaced by -error: -beta((e_w - r_w) - (e_l - r_l)).
    return dpo_loss(-err_w, -err_l, -ref_w, -ref_l, beta)


# -------------------------------------------------------------------------------- pairs


def check_image(pair: dict, i: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``pair[key]`` if it is a float ``shape`` image in [0, 1]; otherwise an error naming
    the pair, the key and what was found."""
    x = pair.get(key)
    if isinstance(x, str):
        raise AigcError(f"pair {i}: {key!r} is text; an image model needs image pairs "
                        f"{_IMAGE_PAIR} (text pairs go to improve_gpt or improve_lora)")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise AigcError(f"pair {i}: {key!r} must be a float image tensor of shape {shape} in "
                        f"[0, 1], got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise AigcError(f"pair {i}: {key!r} has shape {tuple(x.shape)}; this model makes "
                        f"images of shape {shape} (C, H, W)")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise AigcError(f"pair {i}: {key!r} must hold values in [0, 1] (images as the model "
                        f"generated them), got min {float(x.min()):.3g}, max {float(x.max()):.3g}")
    return x


def _conditions(model: nn.Module, pairs: list[dict]) -> dict[str, torch.Tensor]:
    """The condition of every pair as ``unet.condition`` arguments over all pairs."""
    cfg, null = model.cfg, model.null_label
    labels, prompts = [], {}
    for i, pair in enumerate(pairs):
        condition = pair.get("condition")
        if not isinstance(condition, dict) or set(condition) - {"label", "prompt"} \
                or len(condition) > 1:
            raise AigcError(f"pair {i}: 'condition' must be {{'label': int}}, {{'prompt': str}} "
                            f"or {{}}, got {condition!r}")
        if "label" in condition:
            label = condition["label"]
            if not cfg.num_classes:
                raise AigcError(f"pair {i}: this model was trained without class labels, so "
                                f"the condition {{'label': {label!r}}} cannot be used")
            if isinstance(label, bool) or not isinstance(label, int) \
                    or not 0 <= label < cfg.num_classes:
                raise AigcError(f"pair {i}: label must be an integer in 0..{cfg.num_classes - 1},"
                                f" got {label!r}")
            labels.append(label)
        elif "prompt" in condition:
            prompt = condition["prompt"]
            if not cfg.text_conditioning:
                raise AigcError(f"pair {i}: this model was trained without text conditioning, "
                                f"so the prompt {prompt!r} cannot be used")
            if not isinstance(prompt, str) or not prompt.strip():
                raise AigcError(f"pair {i}: prompt must be a non-empty string, got {prompt!r}")
            prompts[i] = prompt
            labels.append(null)
        else:
            labels.append(null)
    cond = {"labels": torch.tensor(labels, dtype=torch.long)}
    if prompts:
        text = torch.zeros(len(pairs), model.unet.text_proj[0].in_features)
        text[list(prompts)] = model.embed_prompts(list(prompts.values())).float()
        mask = torch.zeros(len(pairs), dtype=torch.bool)
        mask[list(prompts)] = True
        cond.update(text=text, text_mask=mask)
    return cond


def _check_image_pairs(model: nn.Module, pairs: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(chosen (N, C, H, W), rejected (N, C, H, W)`` in [-1, 1], conditions) or an error."""
    check_pairs_list(pairs, _IMAGE_PAIR)
    cfg = model.cfg
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    chosen, rejected = [], []
    for i, pair in enumerate(pairs):
        if "condition" not in pair:
            hint = " (a text pair? use improve_gpt or improve_lora)" if "prompt" in pair else ""
            raise AigcError(f"pair {i} has no 'condition'; a diffusion pair is "
                            f"{_IMAGE_PAIR}{hint}")
        w = check_image(pair, i, "chosen", shape)
        l_ = check_image(pair, i, "rejected", shape)
        if torch.equal(w, l_):
            raise AigcError(f"pair {i}: chosen and rejected are the same image; a preference "
                            "needs two different images")
        chosen.append(w)
        rejected.append(l_)
    # [0, 1] -> [-1, 1], as Diffusion.loss scales its batches.
    return (torch.stack(chosen).float() * 2 - 1, torch.stack(rejected).float() * 2 - 1,
            _conditions(model, pairs))


# ------------------------------------------------------------------------------- driver


def improve_diffusion(model: nn.Module, pairs: list[dict], *, steps: int = 200,
                      lr: float = 1e-5, beta: float = DEFAULT_BETA, batch_size: int = 16,
                      seed: int = 0, progress: bool | Callable[[float], None] = False,
                      reference: nn.Module | None = None,
                      ) -> tuple[nn.Module, ImprovementRecord]:
    """Diffusion-DPO on our diffusion model from image preference pairs; trains it in place.

    A pair is ``{"condition": {"label": int} | {"prompt": str} | {}, "chosen": (C, H, W),
    "rejected": (C, H, W)}``, images in [0, 1] as the model generated them (scaled to [-1, 1]
    here, as the model trains). Each step draws ``batch_size`` pairs (with replacement), one
    ``t ~ U{0..T-1}`` and one ``eps ~ N(0, I)`` per pair, shared by winner and loser.

    Args:
        model: an :class:`aigc.models.diffusion.Diffusion` (its EMA weights, if that is what
            serves: the candidate should start from the production weights).
        pairs: the preference pairs (at least one).
        steps, lr, batch_size: AdamW steps, learning rate, pairs per step. Untuned defaults.
        beta: beta * T of eq. 14 (module docstring).
        seed: seeds pair order, timesteps and noise; the run is deterministic for a seed.
        progress: ``True`` for a progress bar; a callable gets the fraction done after each step.
        reference: the frozen reference; default a deep copy of ``model`` at the start. It is
            only read (under ``torch.no_grad``), never changed.

    Returns:
        ``(model, record)``; the record's loss, margin and accuracy are measured after training
        on every pair with ``EVAL_DRAWS`` fixed ``(t, eps)`` draws each (seeded by ``seed``).
    """
    from aigc.models.diffusion import Diffusion

    if not isinstance(model, Diffusion):
        raise AigcError(f"improve_diffusion needs an aigc Diffusion model, got "
                        f"{type(model).__name__} (text models: improve_gpt or improve_lora)")
    check_hyperparameters(steps, lr, beta, batch_size, seed)
    chosen, rejected, cond = _check_image_pairs(model, pairs)
    ref = reference if reference is not None else copy.deepcopy(model)
    device = model.alphas_cumprod.device
    chosen, rejected = chosen.to(device), rejected.to(device)
    cond = {k: v.to(device) for k, v in cond.items()}
    gen = torch.Generator().manual_seed(seed)  # pair order, timesteps and noise (on the CPU)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, model.cfg.num_train_timesteps, (len(idx),), generator=gen)
        noise = torch.randn((len(idx), *chosen.shape[1:]), generator=gen)  # shared by w and l
        i = idx.to(device)
        return diffusion_dpo_loss(model, ref, chosen[i], rejected[i],
                                  {k: v[i] for k, v in cond.items()}, t.to(device),
                                  noise.to(device), beta)[0]

    was_training, ref_was_training = model.training, ref.training
    model.eval()  # dropout off in both: the margin is exactly 0 at step 0
    ref.eval()
    start = time.perf_counter()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        last = optimise(params, len(chosen), batch_loss, steps=steps, lr=lr,
                        batch_size=batch_size, generator=gen, progress=progress,
                        desc="Diffusion-DPO")
        loss, stats = evaluate_pairs(model, ref, chosen, rejected, cond, beta=beta, seed=seed,
                                     batch_size=batch_size)
    finally:
        model.train(was_training)
        ref.train(ref_was_training)
    record = ImprovementRecord(
        method="diffusion-dpo", family="diffusion", pairs=len(chosen), steps=steps,
        batch_size=batch_size, lr=lr, beta=beta, seed=seed, grad_clip=GRAD_CLIP,
        final_loss=loss, mean_margin=stats["reward_margin"],
        accuracy=stats["reward_accuracy"], last_batch_loss=last,
        evaluation=f"all {len(chosen)} pairs x {EVAL_DRAWS} (t, noise) draws, seed {seed}",
        seconds=round(time.perf_counter() - start, 3))
    return model, record


@torch.no_grad()
def evaluate_pairs(model: nn.Module, ref: nn.Module, chosen: torch.Tensor,
                   rejected: torch.Tensor, cond: dict[str, torch.Tensor], *, beta: float,
                   seed: int, batch_size: int = 64, draws: int = EVAL_DRAWS,
                   ) -> tuple[float, dict[str, float]]:
    """Diffusion-DPO loss and statistics over every pair, ``draws`` fixed ``(t, eps)`` each.

    ``chosen``/``rejected`` are ``(N, C, H, W)`` in [-1, 1]; the draws depend only on ``seed``
    and ``N``, so two models evaluated with one seed see the same timesteps and noise.
    """
    n, device = len(chosen), chosen.device
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, model.cfg.num_train_timesteps, (draws, n), generator=gen)
    noise = torch.randn((draws, *chosen.shape), generator=gen)
    total, margins, wins = 0.0, 0.0, 0.0
    for d in range(draws):
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            loss, stats = diffusion_dpo_loss(model, ref, chosen[sl], rejected[sl],
                                             {k: v[sl] for k, v in cond.items()},
                                             t[d, sl].to(device), noise[d, sl].to(device), beta)
            k = len(chosen[sl])
            total += float(loss) * k
            margins += stats["reward_margin"] * k
            wins += stats["reward_accuracy"] * k
    m = draws * n
    return total / m, {"reward_margin": margins / m, "reward_accuracy": wins / m}
