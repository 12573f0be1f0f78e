"""Image backends: one :class:`ImageBackend` serves one image checkpoint of any family.

An :class:`ImageBackend` draws one image per :class:`ImageSpec` (its own seed, optional class
label or prompt) under :class:`ImageSettings` shared by the whole batch (temperature, steps,
guidance, sampler). Every image has its own seed, so any gallery item is reproduced by
regenerating with its seed and ``n=1``, whatever batch it was drawn in.

The backend passes to the family's ``sample(n, *, generator=..., ...)`` only the keyword
arguments its signature accepts:

=============== ==============================================================================
``temperature`` ``float``, scales the prior draw (VAE)
``labels``      ``LongTensor (n,)`` of class indices (class-conditional GAN/diffusion); names
                come from ``checkpoint.meta["class_names"]``
``prompt``      ``list[str]`` of n prompts (text-conditional diffusion, latent diffusion: read
                on the route ``prompt_route(prompt)`` gives, which the item records)
``steps``       ``int``, number of sampler steps (diffusion)
``guidance``    ``float``, classifier-free guidance scale (diffusion)
``sampler``     ``str``, e.g. ``"ddpm" | "ddim" | "dpm_solver"`` (diffusion)
``progress``    ``callable(fraction: float)``, called between sampler steps; it may raise
                :class:`~aigc.studio.backends.common.JobCancelled` to stop the loop
=============== ==============================================================================

Batching across requests, so the network runs once for the batch:

- a model with ``decode(z)`` and ``cfg.latent_dim`` (the VAE): the prior draws are made per
  image with that image's generator (exactly the draws ``sample(1, generator=...)`` would make),
  concatenated and decoded in one forward pass;
- a family that says ``per_image_generators = True`` (diffusion: its x_T and any sampler noise)
  is called once with ``generator=[g_1, ..., g_n]`` and draws image i from generator i alone.

Other families (the GAN) are served one image at a time with ``sample(1, ...)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aigc.media import png_bytes as media_png_bytes
from aigc.media import to_uint8
from aigc.records import resolve_options, sampling_options
from aigc.studio.backends.common import UnsupportedParameter, _metric_card, log


@dataclass(frozen=True)
class ImageSettings:
    """Settings shared by every image of a batch (requests batch only when these are equal)."""

    temperature: float = 1.0
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None


@dataclass(frozen=True)
class ImageSpec:
    """One image to draw."""

    seed: int
    label: int | None = None
    prompt: str | None = None


class ImageBackend:
    """Serves one image checkpoint. Thread-safety: called from the image worker thread only."""

    kind = "image"

    def __init__(self, name: str, model: torch.nn.Module, ckpt,
                 memory_format: str = "contiguous") -> None:
        self.name = name
        self.model = model
        self.ckpt = ckpt
        self.path = Path(ckpt.path)
        self.sha256 = ckpt.sha256
        self.family = ckpt.family
        cfg = getattr(model, "cfg", None)
        self.image_size = int(getattr(cfg, "image_size", 0) or 0)
        self.channels = int(getattr(cfg, "image_channels", 1) or 1)
        self.class_names: list[str] = list(ckpt.meta.get("class_names") or [])
        # the format its network's weights were put in at load; records carry it for replay
        self.memory_format = memory_format
        params = inspect.signature(model.sample).parameters
        self._accepts = {k for k in ("labels", "prompt", "steps", "guidance", "sampler",
                                     "progress", "temperature") if k in params}
        # A diffusion model may take a class, a prompt, both (either per request) or neither.
        self.takes_prompt = "prompt" in self._accepts and bool(
            getattr(cfg, "text_conditioning", True))
        self.takes_label = "labels" in self._accepts and bool(
            self.class_names or getattr(cfg, "num_classes", 0))
        if not self.takes_label:  # names of classes the model cannot take are not offered
            self.class_names = []
        # A family whose prompts take a route (latent diffusion: MiniLM tokens, or one
        # sentence token from English or, with a bundled encoder, Chinese) says which; its
        # items record the route each prompt took.
        self._routes = callable(getattr(model, "prompt_route", None))
        self.prompt_languages = (["en", "zh"] if getattr(model, "zh", None) is not None
                                 else ["en"]) if self._routes else []
        self.conditioning = ("class+text" if self.takes_prompt and self.takes_label
                             else "text" if self.takes_prompt
                             else "class" if self.takes_label else "none")
        self.has_steps = "steps" in self._accepts
        # The family's defaults, read from its sample() signature (aigc.records): a request
        # that leaves an option out gets these, and its record says which values ran.
        self.options = sampling_options(model)
        self.default_steps = int(self.options.get("steps") or 1)
        self.samplers: list[str] = list(getattr(model, "samplers", []) or [])
        self.card = _metric_card(self.path, self.sha256)
        self._latent = (hasattr(model, "decode") and cfg is not None
                        and hasattr(cfg, "latent_dim"))
        self._per_image = bool(getattr(model, "per_image_generators", False))

    @property
    def batches(self) -> bool:
        return self._latent or self._per_image

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.name, "kind": "image", "family": self.family, "sha256": self.sha256,
            "step": self.ckpt.step, "data": self.ckpt.meta.get("data"),
            "image_size": self.image_size, "channels": self.channels,
            "conditioning": self.conditioning, "class_names": self.class_names,
            "prompt_languages": self.prompt_languages,
            "steps": self.has_steps, "default_steps": self.default_steps,
            "default_guidance": self.options.get("guidance"),
            "samplers": self.samplers,
            "guidance": "guidance" in self._accepts,
            "temperature": "temperature" in self._accepts, "batching": self.batches,
            "model_config": self.ckpt.model_config, "metric_card": self.card,
            "description": f"{self.family} checkpoint {self.path.name} (step {self.ckpt.step})",
        }

    def check(self, settings: ImageSettings, spec: ImageSpec) -> None:
        """Raise :class:`UnsupportedParameter` naming a setting this model cannot use.

        What is refused follows what :meth:`describe` reports: a ``prompt`` unless
        ``conditioning`` has ``text``, a ``label`` unless it has ``class``, both at once,
        ``steps`` / ``guidance`` unless those are true, a ``sampler`` not in ``samplers``.
        """
        if spec.prompt is not None and not self.takes_prompt:
            hint = ("; pick a class with 'label'" if self.conditioning == "class" else
                    "; it draws unconditional samples: drop 'prompt'")
            raise UnsupportedParameter(
                "prompt", f"model {self.name!r} ({self.family}) takes no prompt (conditioning: "
                f"{self.conditioning}){hint}")
        if spec.prompt is not None and spec.label is not None:
            raise UnsupportedParameter("prompt", "give a class 'label' or a 'prompt', not both")
        if spec.prompt is not None and self._routes:
            from aigc.errors import AigcError

            try:  # an empty prompt, a script it cannot read, Chinese without an encoder
                self.model.prompt_route(spec.prompt)
            except AigcError as exc:
                raise UnsupportedParameter("prompt", f"model {self.name!r}: {exc}") from None
        if spec.label is not None:
            if not self.takes_label:
                raise UnsupportedParameter(
                    "label", f"model {self.name!r} is not class-conditional; drop 'label'")
            if not 0 <= spec.label < max(1, len(self.class_names)):
                raise UnsupportedParameter("label", f"label must be in 0..{len(self.class_names) - 1}, "
                                           f"got {spec.label}")
        if settings.steps is not None and not self.has_steps:
            raise UnsupportedParameter("steps", f"model {self.name!r} ({self.family}) has no "
                                       "sampler steps; drop 'steps'")
        if settings.guidance is not None and "guidance" not in self._accepts:
            raise UnsupportedParameter("guidance", f"model {self.name!r} ({self.family}) has no "
                                       "guidance; drop 'guidance'")
        if settings.temperature != 1.0 and "temperature" not in self._accepts:
            raise UnsupportedParameter("temperature", f"model {self.name!r} ({self.family}) has "
                                       "no temperature; drop 'temperature'")
        if settings.sampler is not None and settings.sampler not in self.samplers:
            allowed = ", ".join(self.samplers) or "none (this model has no samplers)"
            raise UnsupportedParameter(
                "sampler", f"sampler {settings.sampler!r} is not offered by {self.name!r}; "
                f"allowed: {allowed}")

    def resolve(self, settings: ImageSettings) -> ImageSettings:
        """``settings`` with every option this family takes filled in with its default (and
        the ones it does not take set to ``None``): what a job stores and its items record."""
        def pick(name: str):
            if name not in self.options:
                return None
            value = getattr(settings, name)
            return self.options[name] if value is None else value

        temperature = pick("temperature")
        return ImageSettings(temperature=1.0 if temperature is None else float(temperature),
                             steps=pick("steps"), guidance=pick("guidance"),
                             sampler=pick("sampler"))

    def record_options(self, settings: ImageSettings) -> dict[str, Any]:
        """Every sampling option of this family as it ran (defaults resolved); a diffusers
        folder adds the scheduler settings its sampler ran with."""
        options = resolve_options(self.model, {k: getattr(settings, k) for k in
                                               ("steps", "guidance", "sampler", "temperature")
                                               if k in self.options})
        if hasattr(self.model, "scheduler_settings"):
            options["scheduler"] = self.model.scheduler_settings(options["sampler"])
        return options

    def prompt_record(self, spec: ImageSpec) -> dict[str, Any]:
        """What an item's record adds about how its prompt was read: ``{"text_route": ...}``
        (``"tokens"`` or ``"sentence"``) for a family with routes and a prompt, else nothing."""
        if spec.prompt is None or not self._routes:
            return {}
        return {"text_route": self.model.prompt_route(spec.prompt)}

    def _kwargs(self, settings: ImageSettings, specs: list[ImageSpec],
                progress: Callable[[float], None] | None) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if "temperature" in self._accepts:
            kw["temperature"] = settings.temperature
        if "labels" in self._accepts and any(s.label is not None for s in specs):
            kw["labels"] = torch.tensor([s.label or 0 for s in specs], dtype=torch.long)
        if self.takes_prompt and any(s.prompt is not None for s in specs):
            kw["prompt"] = [s.prompt or "" for s in specs]
        for k in ("steps", "guidance", "sampler"):
            if k in self._accepts and getattr(settings, k) is not None:
                kw[k] = getattr(settings, k)
        if "progress" in self._accepts and progress is not None:
            kw["progress"] = progress
        return kw

    @torch.no_grad()
    def generate(self, specs: list[ImageSpec], settings: ImageSettings,
                 progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """Draw one image per spec: ``(len(specs), C, H, W)`` floats in [0, 1]."""
        gens = [torch.Generator().manual_seed(s.seed) for s in specs]
        if self._latent:
            # Same draws as model.sample(1, generator=g): z ~ N(0, I) of shape (1, latent_dim).
            z = torch.cat([torch.randn(1, self.model.cfg.latent_dim, generator=g) for g in gens])
            if progress:
                progress(0.5)
            return self.model.decode(z * settings.temperature)
        kw = self._kwargs(settings, specs, progress)
        if self._per_image:
            return self.model.sample(len(specs), generator=gens, **kw)
        out = []
        for i, (s, g) in enumerate(zip(specs, gens, strict=True)):
            one = self._kwargs(settings, [s], None)
            out.append(self.model.sample(1, generator=g, **one))
            if progress:
                progress((i + 1) / len(specs))
        return torch.cat(out)


def png_bytes(image: torch.Tensor, record: dict[str, Any], size: int | None = None) -> bytes:
    """One ``(C, H, W)`` image in [0, 1] as PNG bytes with the provenance record embedded
    (nearest-neighbour resized to ``size`` x ``size`` when asked): :func:`aigc.media.png_bytes`
    of its pixels."""
    arr = to_uint8(image[None])[0].permute(1, 2, 0).numpy()  # (H, W, C) uint8
    return media_png_bytes(arr, record, size=(size, size) if size else None)


def load_image_backends(paths: list[tuple[str, Path]]) -> tuple[dict[str, ImageBackend],
                                                                  dict[str, str]]:
    """Load every checkpoint that samples images. Returns (backends, {name: why skipped})."""
    from aigc.errors import AigcError
    from aigc.models import model_from_checkpoint, sampling_memory_format, set_memory_format
    from aigc.models.sd_folder import is_diffusers_folder, load_sd_folder

    backends: dict[str, ImageBackend] = {}
    skipped: dict[str, str] = {}
    from aigc.checkpoints import read_metadata, resolve_checkpoint

    for name, path in paths:
        try:
            if is_diffusers_folder(path):  # a Stable Diffusion folder (aigc.models.sd_folder)
                model = load_sd_folder(path)
                ckpt = model.checkpoint_info()
                memory_format = "contiguous"
            # text GPTs are served by load_text_backends, music GPTs by load_music_backends:
            # read the header only, not their weights
            elif read_metadata(resolve_checkpoint(path)).get("family") in ("gpt", "music-gpt"):
                continue
            else:
                model, ckpt = model_from_checkpoint(path)
                memory_format = sampling_memory_format(ckpt.family)
                set_memory_format(model, memory_format)
        except (AigcError, OSError, KeyError) as exc:
            skipped[name] = str(exc)
            log.warning("studio: skipping model %s: %s", path, exc)
            continue
        if not hasattr(model, "sample") or getattr(model, "cfg", None) is None \
                or not hasattr(model.cfg, "image_size"):
            skipped[name] = f"a {ckpt.family!r} model does not sample images"
            continue
        if name in backends:
            name = f"{name}-{ckpt.sha256[:8]}"
        backends[name] = ImageBackend(name, model, ckpt, memory_format)
        log.info("studio: image model %s <- %s", name, ckpt.path)
    return backends, skipped
