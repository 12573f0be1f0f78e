"""Model families. Each family is one module exposing ``CONFIG_CLASS`` and ``MODEL_CLASS``.

``FAMILIES`` maps the family name stored in a checkpoint to its module, imported on demand so
that ``import aigc`` stays cheap. A model is a plain ``nn.Module`` built from its frozen config::

    model = build_model("vae", {"latent_dim": 16})
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import torch
from torch import nn

from aigc.config import config_from_dict
from aigc.errors import CheckpointError, ConfigError

FAMILIES: dict[str, str] = {
    "vae": "aigc.models.vae",
    "gpt": "aigc.models.gpt",
    "music-gpt": "aigc.models.music_gpt",
    "diffusion": "aigc.models.diffusion",
    "gan": "aigc.models.gan",
    "clip-scorer": "aigc.models.clip_scorer",
    "autoencoder-kl": "aigc.models.autoencoder_kl",
    "latent-diffusion": "aigc.models.latent_diffusion",
}


def family_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[family])


def build_model(family: str, model_config: dict[str, Any], *, where: str = "",
                seed: int | None = None) -> nn.Module:
    module = family_module(family)
    cfg = config_from_dict(module.CONFIG_CLASS, model_config, where=where)
    return init_model(module.MODEL_CLASS, cfg, seed=seed)


def init_model(model_class: type[nn.Module], cfg: Any, *, seed: int | None = None) -> nn.Module:
    """``model_class(cfg)`` with its initial weights drawn from ``seed`` (in a forked RNG, so
    the caller's random state is untouched): the same config and seed give the same weights.
    ``seed=None`` draws from the global RNG as it stands."""
    if seed is None:
        return model_class(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(cfg)


def model_from_checkpoint(path, *, use_ema: bool = True, map_location: str = "cpu"):
    """Rebuild a model from a checkpoint alone. Returns ``(model, checkpoint)``; model in eval mode.

    The EMA weights are used when present and ``use_ema`` is true.
    """
    from aigc.checkpoints import load_checkpoint

    ckpt = load_checkpoint(path, map_location=map_location)
    model = build_model(ckpt.family, ckpt.model_config, where=f"checkpoint {ckpt.path}")
    weights = ckpt.ema_weights if (use_ema and ckpt.ema_weights) else ckpt.weights
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{ckpt.path}: weights do not match its config: {first}") from None
    model.eval()
    return model, ckpt


# Families whose image sampling runs faster with the network in channels-last memory format,
# 32 images at 20 steps on one Intel Xeon thread (benchmarks/channels_last_sampling.py,
# 2026-11-30): the diffusion MNIST starter 1.18x (17 of 25,088 pixel levels differ from NCHW),
# the latent-diffusion emoji starter 1.19x (42 of 393,216). Records carry the format and replays
# take it, so a record made in either format replays to the same bytes; records from before
# the field replay in NCHW.
SAMPLING_CHANNELS_LAST = ("diffusion", "latent-diffusion")
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def sampling_memory_format(family: str) -> str:
    """``"channels_last"`` or ``"contiguous"``: the memory format new samples of ``family``
    are drawn in (``AIGC_SAMPLING_FORMAT=channels_last|contiguous`` forces one)."""
    forced = os.environ.get("AIGC_SAMPLING_FORMAT", "auto").strip().lower()
    if forced in MEMORY_FORMATS:
        return forced
    if forced not in ("", "auto"):
        raise ConfigError("AIGC_SAMPLING_FORMAT must be 'channels_last', 'contiguous' or 'auto', "
                          f"got {forced!r}")
    return "channels_last" if family in SAMPLING_CHANNELS_LAST else "contiguous"


def set_memory_format(model: nn.Module, fmt: str) -> nn.Module:
    """Put ``model``'s 4-D weights in ``fmt`` (``"channels_last"`` or ``"contiguous"``)."""
    if fmt not in MEMORY_FORMATS:
        raise ConfigError(f"memory format must be one of {sorted(MEMORY_FORMATS)}, got {fmt!r}")
    return model.to(memory_format=MEMORY_FORMATS[fmt])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(name)
