"""Samplers for diffusion models, one algorithm per file, all with one small contract::

    sampler = make_sampler("dpm-solver++", alphas_cumprod, prediction="epsilon")
    sampler.set_timesteps(20)               # choose the 20 timesteps to visit, descending
    for t in sampler.timesteps:
        out = network(x, t)                 # epsilon or v, as the model was trained
        x = sampler.step(out, t, x, generator=g)   # x_t -> x_{t_prev}

The sampling loop itself lives in :meth:`aigc.models.diffusion.Diffusion.sample`.
"""

from __future__ import annotations

import torch

from aigc.errors import ConfigError
from aigc.models.samplers.ddim import DDIMSampler
from aigc.models.samplers.ddpm import DDPMSampler
from aigc.models.samplers.dpm_solver import DPMSolverPlusPlus2MSampler

SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpm-solver++": DPMSolverPlusPlus2MSampler,
}


def make_sampler(name: str, alphas_cumprod: torch.Tensor, prediction: str, *,
                 eta: float = 0.0, clip_x0: bool = True, spacing: str = "trailing",
                 steps_offset: int = 0, diffusers_rules: bool = False, **options):
    """Build a sampler by name (``ddpm``, ``ddim``, ``dpm-solver++``).

    ``spacing`` (``trailing``, our families' default; ``leading`` with ``steps_offset``;
    ``linspace``) places the visited timesteps, for every sampler. The sampler-specific
    ``options``: ``eta`` and ``alpha_to_one`` (the alpha_bar after the last step: 1, or a_0
    when false) for ``ddim``; ``final`` (``zero`` or ``sigma_min``), ``lower_order_final`` and
    ``euler_at_final`` for ``dpm-solver++``. ``diffusers_rules``: follow diffusers'
    arithmetic where it differs from ours (trailing rounding; DDIM's t' = t - T // n). A Stable
    Diffusion folder sets them all from its scheduler config
    (:func:`aigc.models.sd_folder.scheduler_settings`).
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    own = {"ddim": ("alpha_to_one",), "ddpm": (),
           "dpm-solver++": ("final", "lower_order_final", "euler_at_final")}[name]
    foreign = sorted(set(options) - set(own))
    if foreign:
        raise ConfigError(f"option(s) {', '.join(foreign)} do not apply to the {name!r} sampler; "
                          f"it takes {', '.join(own) or 'none beyond spacing, steps_offset'}")
    common = {"clip_x0": clip_x0, "spacing": spacing, "steps_offset": steps_offset,
              "diffusers_rules": diffusers_rules}
    if name == "ddim":
        return DDIMSampler(alphas_cumprod, prediction, eta=eta, **common, **options)
    if eta:
        raise ConfigError(f"eta applies to the ddim sampler only, not {name!r}")
    return SAMPLERS[name](alphas_cumprod, prediction, **common, **options)
