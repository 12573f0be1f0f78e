"""Provenance records: what every generated file carries so that it can be made again.

One record format serves ``aigc sample`` (a grid of ``n`` images from one generator) and the
studio (one image per item, image ``i`` of a job drawn from its own generator ``seed + i``).
Both build their records with :func:`image_record`, so the same fields mean the same thing:

===================  ===========================================================================
``format``           :data:`FORMAT`; a record without it predates this module
``kind``             ``"sample"`` (a CLI grid) or ``"image"`` (one studio item)
``checkpoint``       how to find the model again: ``starter:NAME``, ``NAME@vK`` (the registry) or
                     an absolute path (never a relative one: it breaks from another folder)
``model_sha256``     the weights file's hash; replay refuses any other file
``seed``, ``n``      the generator seed and how many images it drew
``label``            class index (``None``: none, or cycling for a grid: ``class_name`` says)
``prompt``           the prompt text, or ``None``
``text_route``       latent diffusion only, with a prompt: ``"tokens"`` or ``"sentence"``, how
                     the prompt was read (:meth:`~aigc.models.latent_diffusion.LatentDiffusion.
                     prompt_route`); replay reads it the same way
``options``          every sampling option the family takes, defaults resolved: what ran, never
                     ``null`` for "the default" (:func:`sampling_options`)
``threads``          ``torch.get_num_threads()`` when it ran: float reductions, and so the last
                     bit of a pixel, depend on it; replay uses the recorded count
``cpu_capability``   the kernel family torch chose (``AVX512``, ``AVX2``, ...), same reason
``linear_route``     ``onednn`` or ``torch``: the float32 linear kernels measured fastest on the
                     machine (:func:`aigc.models.layers.linear_route`); replay takes the same one
``gelu_route``       ``native`` or ``torch``: GPT's GELU kernel, likewise measured
                     (:func:`aigc.models.native.gelu_route`); ``undecided`` when nothing in the
                     process needed it yet (image models, which do not use it)
``decode_route``     the same for the small kernels of Llama (SmolLM2) decoding
                     (:func:`aigc.models.native.decode_route`)
``attention_route``  the same for GPT's causal self-attention over whole sequences
                     (:func:`aigc.models.native.attention_route`)
``conv_route``       the same for the UNets' 3x3 convolutions (Winograd kernels,
                     :func:`aigc.models.native.conv2d`); ``undecided`` where no channels-last
                     float32 convolution ran yet; replay takes it, and an image record without
                     it (before 2026-12) replays on ATen's (``torch``)
``groupnorm_route``  the same for the UNets' GroupNorm + scale-shift + SiLU
                     (:func:`aigc.models.native.group_norm_silu`)
``mlp_route``        the same for GPT's fused MLP kernels (:func:`aigc.models.native.gpt_mlp`)
``memory_format``    images: ``channels_last`` or ``contiguous``, the network's weights while it
                     drew (:func:`aigc.models.sampling_memory_format`); replay takes it, and a
                     record without it (before 2026-11-30) replays in ``contiguous``
===================  ===========================================================================
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import torch

FORMAT = 2

# The options of a family's ``sample(...)`` that a record carries, in the order they are shown.
OPTION_NAMES = ("sampler", "steps", "guidance", "eta", "size", "truncation", "temperature")


def sampling_options(model: torch.nn.Module) -> dict[str, Any]:
    """``{option: default}`` for the options of :data:`OPTION_NAMES` that ``model.sample``
    takes. The model's signature is the one place a default is written; the CLI, the studio
    and the records all read it from here.

    Example:
        >>> sampling_options(vae)        # doctest: +SKIP
        {'temperature': 1.0}
    """
    params = inspect.signature(model.sample).parameters
    return {k: params[k].default for k in OPTION_NAMES if k in params}


def resolve_options(model: torch.nn.Module, given: dict[str, Any]) -> dict[str, Any]:
    """The family's defaults overridden by ``given`` (keys with value ``None`` count as not
    given). ``size=None`` resolves to the trained image size. Raises ``ValueError`` naming an
    option the family does not take."""
    defaults = sampling_options(model)
    unknown = sorted(k for k, v in given.items() if v is not None and k not in defaults)
    if unknown:
        raise ValueError(f"option(s) {', '.join(unknown)} do not apply to this model; it takes "
                         f"{', '.join(defaults) or 'none'}")
    options = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    if "size" in options and options["size"] is None:
        options["size"] = int(model.cfg.image_size)
    return options


def checkpoint_ref(name_or_path: str | Path) -> str:
    """A reference to a model that works from any folder: ``starter:NAME`` and registry
    references (``NAME@...``) are kept; a starter file given by path becomes ``starter:NAME``;
    any other path becomes absolute."""
    from aigc.registry import STARTERS_DIR

    text = str(name_or_path)
    if text.startswith("starter:") or "@" in text:
        return text
    path = Path(text).resolve()
    if path.parent == STARTERS_DIR.resolve() and path.suffix == ".safetensors":
        return f"starter:{path.stem}"
    if path.parent.parent.name == "versions" and re.fullmatch(r"v\d+", path.parent.name):
        return f"{path.parent.parent.parent.name}@{path.parent.name}"  # a registry version
    return str(path)


def runtime() -> dict[str, Any]:
    """What about this process can change the low bits of a result."""
    from aigc.checkpoints import library_versions
    from aigc.models.layers import linear_route
    from aigc.models.native import ROUTE_ENVS, current_route

    return {"threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "linear_route": linear_route(),
            **{f"{kind}_route": current_route(kind) for kind in ROUTE_ENVS},
            "versions": library_versions()}


def image_record(*, kind: str, ckpt, checkpoint: str | Path, seed: int, n: int, ema: bool,
                 options: dict[str, Any], label: int | None = None,
                 class_name: str | None = None, prompt: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The record of an image (``kind="image"``) or a grid (``kind="sample"``); ``extra``
    carries what only one side has (the studio's job id and output size). It holds no clock
    time, so a replay writes the same bytes (the studio keeps times in its database)."""
    if kind not in ("image", "sample"):
        raise ValueError(f"kind must be 'image' or 'sample', got {kind!r}")
    return {
        "format": FORMAT, "kind": kind, "checkpoint": checkpoint_ref(checkpoint),
        "model_sha256": ckpt.sha256, "family": ckpt.family, "step": ckpt.step,
        "data": ckpt.meta.get("data"), "ema": ema, "seed": int(seed), "n": int(n),
        "label": label, "class_name": class_name, "prompt": prompt, "options": dict(options),
        **runtime(), **extra,
    }


def replay_options(record: dict[str, Any]) -> dict[str, Any]:
    """The sampling options of a record, of this format or of the older flat CLI records
    (where ``steps``, ``sampler``... sat at the top level and ``null`` meant the default)."""
    if isinstance(record.get("options"), dict):
        return dict(record["options"])
    return {k: record[k] for k in OPTION_NAMES if record.get(k) is not None}
