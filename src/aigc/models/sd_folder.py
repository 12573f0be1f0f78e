"""Stable Diffusion folders: sample a diffusers-format text-to-image pipeline with our samplers.

A folder written by ``StableDiffusionPipeline.save_pretrained`` holds ``model_index.json`` and
one sub-folder per component. The network classes come from diffusers and transformers; the
sampling loop, classifier-free guidance and the record are ours::

    folder = load_sd_folder("/models/sd-v1-5")           # safetensors only
    images = folder.sample(2, prompt="a red fox in snow",
                           generator=torch.Generator().manual_seed(0),
                           sampler="dpm-solver++", steps=20, guidance=7.5)  # (2, 3, H, W), [0, 1]

What is read from the folder, and how it maps onto our samplers (docs/sd-folders.md):

- ``scheduler/scheduler_config.json``: ``num_train_timesteps``, ``beta_start``, ``beta_end``,
  ``beta_schedule`` (``linear`` or ``scaled_linear``, or ``trained_betas``) and
  ``prediction_type`` (``epsilon`` or ``v_prediction``) give the noise schedule;
  ``timestep_spacing`` (``leading``, ``trailing``, ``linspace``), ``steps_offset``,
  ``set_alpha_to_one`` (ddim) and ``final_sigmas_type``, ``lower_order_final``,
  ``euler_at_final`` (dpm-solver++) configure our sampler as diffusers would configure the
  matching scheduler class from that config (:func:`scheduler_settings`: a missing key takes
  that class's default). Its ``_class_name`` is not used.
- x_0 clipping is OFF (:data:`CLIP_X0`): x_0 here is a VAE latent, not an image in [-1, 1].
- the text encoder's last hidden state for the prompt padded to the tokenizer's
  ``model_max_length`` is the condition; the empty prompt ``""`` is the unconditional one.
- latents are decoded as ``vae.decode(z / scaling_factor (+ shift_factor))``, mapped to [0, 1].
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from aigc.errors import AigcError, CheckpointError, ConfigError

# model_index.json entry -> (library, accepted class names); the scheduler class is not used.
COMPONENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "unet": ("diffusers", ("UNet2DConditionModel",)),
    "vae": ("diffusers", ("AutoencoderKL",)),
    "text_encoder": ("transformers", ("CLIPTextModel",)),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
    "scheduler": ("diffusers", ()),
}
WEIGHTED = ("unet", "vae", "text_encoder")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
CLIP_X0 = False  # latents are not bounded by [-1, 1]: clipping x_0 would distort them
DEFAULTS = {"sampler": "dpm-solver++", "steps": 20, "guidance": 7.5, "eta": 0.0}
# sampler -> {scheduler config key: the default of the diffusers class that sampler matches
# (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler)}: what a folder's config sets
SCHEDULER_KEYS: dict[str, dict[str, Any]] = {
    "ddim": {"timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True},
    "ddpm": {"timestep_spacing": "leading", "steps_offset": 0},
    "dpm-solver++": {"timestep_spacing": "linspace", "steps_offset": 0,
                     "final_sigmas_type": "zero", "lower_order_final": True,
                     "euler_at_final": False},
}
# what every folder was sampled with before the folder's own settings were honoured (issue
# #18), with our arithmetic rather than diffusers' (``diffusers_rules``, not a diffusers key):
# a record without "scheduler" in its options means these
LEGACY_SCHEDULER: dict[str, Any] = {
    "timestep_spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True,
    "final_sigmas_type": "zero", "lower_order_final": True, "euler_at_final": False,
    "diffusers_rules": False}
MAX_PROMPT_CHARS = 500


def is_diffusers_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder that claims to be a diffusers pipeline (it holds
    ``model_index.json`` or a ``unet``/``vae``/``text_encoder`` sub-folder), or a folder that is
    not an aigc run but holds pickle checkpoints (``*.ckpt``...); it may still be an invalid
    one: :func:`check_folder` says why."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "model_index.json").is_file() or any((p / c).is_dir() for c in WEIGHTED):
        return True
    aigc_run = (p / "model.safetensors").exists() or (p / "checkpoints").exists()
    return not aigc_run and bool(_pickles(p))


def _pickles(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)


def check_folder(path: str | Path) -> dict[str, Any]:
    """Validate a diffusers text-to-image folder and return its ``model_index.json``.

    Raises :class:`CheckpointError` (one sentence naming the folder or file) when the folder is
    not a diffusers pipeline, not a text-to-image one (no UNet, VAE, CLIP text encoder,
    tokenizer or scheduler), or holds weights only in a pickle format (``*.bin``, ``*.ckpt``...).
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder (a diffusers pipeline is a folder with "
                              "model_index.json)")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        found = _pickles(root)
        hint = (f"; {found[0].name} is a pickle checkpoint, which aigc refuses to load (convert it "
                "to a diffusers folder with safetensors weights)") if found else ""
        raise CheckpointError(f"{root} is not a diffusers pipeline: no model_index.json{hint}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index_path} is not valid JSON: {e}") from None
    if not isinstance(index, dict):
        raise CheckpointError(f"{index_path} is not a diffusers model index (not a JSON object)")
    kind = index.get("_class_name", "?")
    if index.get("text_encoder_2") not in (None, [None, None]):
        raise CheckpointError(f"{root} is a {kind} with two text encoders (SDXL-style); only "
                              "single-CLIP text-to-image pipelines (Stable Diffusion 1.x/2.x) "
                              "are supported")
    for name, (library, classes) in COMPONENTS.items():
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise CheckpointError(f"{root} is not a text-to-image diffusers pipeline ({kind}): "
                                  f"model_index.json has no {name!r} component")
        if classes and entry[1] not in classes:
            raise CheckpointError(f"{root}: component {name!r} is {entry[0]}.{entry[1]}, expected "
                                  f"{library}.{' or '.join(classes)}")
        if not (root / name).is_dir():
            raise CheckpointError(f"{root}: model_index.json names {name!r} but the folder "
                                  f"{root / name} is missing")
    for name in WEIGHTED:
        sub = root / name
        if not (sub / "config.json").is_file():
            raise CheckpointError(f"{sub} has no config.json")
        if not any(sub.glob("*.safetensors")):
            pickles = _pickles(sub)
            if pickles:
                raise CheckpointError(f"{pickles[0]} is a pickle-format weights file; aigc loads "
                                      "safetensors only (re-save the pipeline with "
                                      "safe_serialization=True)")
            raise CheckpointError(f"{sub} holds no *.safetensors weights")
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        raise CheckpointError(f"{root / 'scheduler'} has no scheduler_config.json")
    return index


def folder_files(root: Path) -> list[Path]:
    """The files a pipeline is built from: the index, configs, tokenizer files, safetensors."""
    files = [root / "model_index.json", root / "scheduler" / "scheduler_config.json"]
    files += sorted(f for f in (root / "tokenizer").iterdir() if f.is_file())
    for name in WEIGHTED:
        files += [root / name / "config.json", *sorted((root / name).glob("*.safetensors"))]
    return files


def folder_sha256(path: str | Path) -> str:
    """One SHA-256 over every file :func:`folder_files` lists: its path relative to the folder,
    its size and its own SHA-256. Replay refuses a folder whose files changed."""
    root = Path(path)
    total = hashlib.sha256()
    for f in folder_files(root):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        total.update(f"{f.relative_to(root).as_posix()}\0{f.stat().st_size}\0{h.hexdigest()}\n"
                     .encode())
    return total.hexdigest()


def alphas_cumprod_from(config: dict[str, Any]) -> tuple[torch.Tensor, str]:
    """``(alpha_bar, prediction)`` from a diffusers scheduler config, computed as diffusers does
    (float32 betas) so the schedule is the one the UNet was trained with."""
    t = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
    else:
        schedule = config.get("beta_schedule", "linear")
        start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
        if schedule == "linear":
            betas = torch.linspace(start, end, t, dtype=torch.float32)
        elif schedule == "scaled_linear":
            betas = torch.linspace(start ** 0.5, end ** 0.5, t, dtype=torch.float32) ** 2
        else:
            raise ConfigError(f"scheduler beta_schedule {schedule!r} is not supported; "
                              "supported: linear, scaled_linear, trained_betas")
    if config.get("rescale_betas_zero_snr"):
        raise ConfigError("scheduler rescale_betas_zero_snr=true is not supported")
    kinds = {"epsilon": "epsilon", "v_prediction": "v"}
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in kinds:
        raise ConfigError(f"scheduler prediction_type {prediction!r} is not supported; "
                          f"supported: {', '.join(kinds)}")
    return torch.cumprod(1.0 - betas, dim=0), kinds[prediction]



def scheduler_settings(config: dict[str, Any], sampler: str) -> dict[str, Any]:
    """The settings of a diffusers scheduler config that our sampler ``sampler`` uses, as
    diffusers' matching class (``DDIMScheduler``, ``DDPMScheduler``,
    ``DPMSolverMultistepScheduler``) reads them with ``from_config``: a missing key takes that
    class's default; ``diffusers_rules`` (true unless given) makes our sampler use diffusers'
    arithmetic too. Raises :class:`ConfigError` naming a value we cannot follow."""
    from aigc.models.samplers._common import SPACINGS
    from aigc.models.samplers.dpm_solver import FINALS

    if sampler not in SCHEDULER_KEYS:
        raise ConfigError(f"unknown sampler {sampler!r}; known: {', '.join(SCHEDULER_KEYS)}")
    keys = {**SCHEDULER_KEYS[sampler], "diffusers_rules": True}
    out = {k: default if config.get(k) is None else config[k] for k, default in keys.items()}
    if out["timestep_spacing"] not in SPACINGS:
        raise ConfigError(f"scheduler timestep_spacing {out['timestep_spacing']!r} is not "
                          f"supported; supported: {', '.join(SPACINGS)}")
    offset = out["steps_offset"]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"scheduler steps_offset must be an integer >= 0, got {offset!r}")
    if out.get("final_sigmas_type", "zero") not in FINALS:
        raise ConfigError(f"scheduler final_sigmas_type {out['final_sigmas_type']!r} is not "
                          f"supported; supported: {', '.join(FINALS)}")
    for key in ("set_alpha_to_one", "lower_order_final", "euler_at_final", "diffusers_rules"):
        if key in out and not isinstance(out[key], bool):
            raise ConfigError(f"scheduler {key} must be true or false, got {out[key]!r}")
    return out


def sampler_options(settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`scheduler_settings` (diffusers' names) as :func:`make_sampler` options."""
    names = {"timestep_spacing": "spacing", "steps_offset": "steps_offset",
             "set_alpha_to_one": "alpha_to_one", "final_sigmas_type": "final",
             "lower_order_final": "lower_order_final", "euler_at_final": "euler_at_final",
             "diffusers_rules": "diffusers_rules"}
    return {names[k]: v for k, v in settings.items()}

@dataclass
class SDFolder:
    """A loaded diffusers text-to-image folder; :meth:`sample` draws images with our samplers."""

    path: Path
    sha256: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    alphas_cumprod: torch.Tensor
    prediction: str
    scheduler_config: dict[str, Any] = field(default_factory=dict)

    per_image_generators = True  # sample(n, generator=[g_1..g_n]): image i from g_i alone

    @property
    def samplers(self) -> tuple[str, ...]:
        from aigc.models.samplers import SAMPLERS

        return tuple(SAMPLERS)

    @property
    def cfg(self) -> SimpleNamespace:
        """What the studio's image backend reads of a model's config."""
        return SimpleNamespace(image_size=self.default_size, image_channels=3,
                               text_conditioning=True, num_classes=0)

    def checkpoint_info(self) -> SimpleNamespace:
        """The checkpoint-like description the studio and the records read."""
        return SimpleNamespace(path=self.path, sha256=self.sha256, family="diffusers-folder",
                               step=None, meta={"data": None}, model_config={
                                   "unet": dict(self.unet.config), "vae": dict(self.vae.config),
                                   "prediction": self.prediction})

    @staticmethod
    def network_versions() -> dict[str, str]:
        """The versions of the libraries whose classes run the networks (for the record)."""
        import diffusers
        import transformers

        return {"diffusers": diffusers.__version__, "transformers": transformers.__version__}

    def scheduler_settings(self, sampler: str,
                           override: dict[str, Any] | None = None) -> dict[str, Any]:
        """The scheduler settings ``sampler`` runs with: the folder's config
        (:func:`scheduler_settings`), with ``override`` (a record's, e.g.
        :data:`LEGACY_SCHEDULER`) on top."""
        if override is None:
            return scheduler_settings(self.scheduler_config, sampler)
        if not isinstance(override, dict) or set(override) - set(LEGACY_SCHEDULER):
            raise ConfigError(f"scheduler must be a dict with keys among "
                              f"{', '.join(LEGACY_SCHEDULER)}, got {override!r}")
        return scheduler_settings({**self.scheduler_config, **override}, sampler)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        """The image side the UNet was trained at (``sample_size`` latents x VAE factor)."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size) * self.vae_scale_factor

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def check_prompt(self, prompt: str) -> str:
        """The prompt, stripped; an error for an empty, too long, or all-unknown-token prompt.

        An empty prompt is refused rather than read as "unconditional": ``""`` is the negative
        prompt that guidance pushes away from. A prompt the tokenizer maps only to its unknown
        token (text in a script its vocabulary lacks) would draw an unconditional image, so it
        is refused too. (The real CLIP vocabulary has byte-level pieces, so it maps most scripts
        to byte tokens rather than ``<unk>``; see docs/sd-folders.md.)
        """
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
        text = prompt.strip()
        if not text:
            raise ConfigError("prompt is empty; give text to draw (the empty prompt is the "
                              "unconditional one that guidance steers away from)")
        if len(text) > MAX_PROMPT_CHARS:
            raise ConfigError(f"prompt must be 1..{MAX_PROMPT_CHARS} characters, got {len(text)}")
        unk = self.tokenizer.unk_token_id
        ids = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text))
        if unk is not None and ids and all(i == unk for i in ids):
            raise ConfigError(f"prompt {text[:40]!r} has no token this model's tokenizer knows "
                              "(every character maps to its unknown token); write it in a "
                              "language the text encoder was trained on (e.g. English)")
        return text

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """``(len(prompts), L, D)`` text-encoder states, padded to the tokenizer's max length."""
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.to(device))[0]

    @torch.no_grad()
    def sample(self, n: int = 1, *, prompt: str | list[str] | None = None,
               generator: torch.Generator | list[torch.Generator] | None = None,
               sampler: str = DEFAULTS["sampler"], steps: int = DEFAULTS["steps"],
               guidance: float = DEFAULTS["guidance"], eta: float = DEFAULTS["eta"],
               size: int | None = None, latents: torch.Tensor | None = None,
               progress: bool | Callable[[float], None] = False,
               scheduler: dict[str, Any] | None = None) -> torch.Tensor:
        """Draw ``n`` images, ``(n, 3, size, size)`` in [0, 1] (the signature of our families'
        ``sample``, so the studio's image backend serves a folder like a checkpoint).

        Args:
            prompt: one prompt for every image, or ``n`` prompts (one per image).
            generator: CPU generator for the initial latents (and DDPM/DDIM-eta noise), or a
                list of ``n``, one per image: image i is then the image ``sample(1, ...)``
                draws with generator i, whatever the batch.
            sampler: ``ddpm``, ``ddim`` or ``dpm-solver++`` (ours, :mod:`aigc.models.samplers`).
            steps: sampler steps, 1..num_train_timesteps.
            guidance: classifier-free guidance scale w: ``uncond + w (cond - uncond)``;
                1 is the plain conditional model (one UNet call a step), 0 the unconditional.
            size: image side in pixels (default :attr:`default_size`), a multiple of
                the VAE factor times the UNet's down-sampling.
            latents: ``(n, C, size/f, size/f)`` initial noise instead of drawing it.
            scheduler: scheduler settings (diffusers' names, :data:`LEGACY_SCHEDULER`'s keys)
                over the folder's own; ``None``: the folder's (:meth:`scheduler_settings`).
        """
        from aigc.models.samplers import make_sampler
        from aigc.models.samplers._common import noise_like

        if not isinstance(n, int) or not 1 <= n <= 64:
            raise ConfigError(f"n must be an integer between 1 and 64, got {n!r}")
        if prompt is None:
            raise ConfigError("a diffusers text-to-image folder needs a prompt")
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ConfigError(f"{len(prompts)} prompts for {n} images")
        if isinstance(generator, list) and len(generator) != n:
            raise ConfigError(f"generator: a list needs one generator per image ({n}), "
                              f"got {len(generator)}")
        prompts = [self.check_prompt(p) for p in prompts]
        if not 1 <= steps <= self.num_train_timesteps:
            raise ConfigError(f"steps must be between 1 and {self.num_train_timesteps}, "
                              f"got {steps}")
        if not 0 <= guidance <= 30:
            raise ConfigError(f"guidance must be between 0 and 30, got {guidance}")
        size = size or self.default_size
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if not 8 <= size <= 2048 or size % multiple:
            raise ConfigError(f"size must be between 8 and 2048 and divisible by {multiple}, "
                              f"got {size}")
        device = next(self.unet.parameters()).device
        dtype = next(self.unet.parameters()).dtype
        cond = self.encode(prompts)
        uncond = self.encode([""] * n)
        settings = self.scheduler_settings(sampler, scheduler)
        schedule = make_sampler(sampler, self.alphas_cumprod, self.prediction, eta=eta,
                                clip_x0=CLIP_X0, **sampler_options(settings))
        schedule.set_timesteps(steps)
        shape = (n, self.unet.config.in_channels, size // self.vae_scale_factor,
                 size // self.vae_scale_factor)
        if latents is None:
            x = noise_like(torch.empty(shape, device=device, dtype=dtype), generator)
        elif tuple(latents.shape) != shape:
            raise ConfigError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            x = latents.to(device, dtype)
        timesteps = schedule.timesteps
        if progress is True:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc=f"{sampler} {steps} steps", leave=False)
        for i, t in enumerate(timesteps):  # the sampling loop: guided UNet output -> step
            if guidance == 1.0:
                out = self.unet(x, t, encoder_hidden_states=cond).sample
            else:  # one batch [uncond, cond], as diffusers' pipeline does
                both = self.unet(torch.cat([x, x]), t,
                                 encoder_hidden_states=torch.cat([uncond, cond])).sample
                out_uncond, out_cond = both.chunk(2)
                out = out_uncond + guidance * (out_cond - out_uncond)
            x = schedule.step(out, t, x, generator=generator)
            if callable(progress):
                progress((i + 1) / len(schedule.timesteps))
        cfg = self.vae.config
        z = x / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None) is not None:
            z = z + cfg.shift_factor
        image = self.vae.decode(z.to(next(self.vae.parameters()).dtype)).sample
        return ((image.float() + 1) / 2).clamp(0, 1).cpu()


def load_sd_folder(path: str | Path, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> SDFolder:
    """Validate (:func:`check_folder`) and load a diffusers text-to-image folder from disk,
    safetensors only, offline."""
    root = Path(path).resolve()
    check_folder(root)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    if not isinstance(config, dict):
        raise CheckpointError(f"{root / 'scheduler' / 'scheduler_config.json'} is not a JSON "
                              "object")
    alphas_cumprod, prediction = alphas_cumprod_from(config)
    try:
        for sampler in SCHEDULER_KEYS:  # refuse a setting we cannot follow now, not mid-job
            scheduler_settings(config, sampler)
    except ConfigError as e:
        raise ConfigError(f"{root / 'scheduler' / 'scheduler_config.json'}: {e}") from None
    from transformers.utils import logging as hf_logging

    kw = {"use_safetensors": True, "local_files_only": True}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one line per error on the CLI, not a loading bar
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AigcError(f"{root}: cannot load the pipeline: {first}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    for module in (unet, vae, text_encoder):
        module.to(device).eval()
        if dtype != torch.float32:
            module.to(dtype)
    return SDFolder(path=root, sha256=folder_sha256(root), unet=unet, vae=vae,
                    text_encoder=text_encoder, tokenizer=tokenizer,
                    alphas_cumprod=alphas_cumprod, prediction=prediction,
                    scheduler_config=config)
