"""Training a :class:`~aigc.apps.sentiment.model.SentimentModel` on labelled examples.

A small loop of its own rather than :class:`aigc.train.Trainer`: the models here are a head over
cached features (MiniLM, frozen) or a hashed bag of n-grams, and train in seconds to a minute on
one core, so resume, EMA and periodic checkpoints would only add weight. What it does:

1. split the examples with :func:`aigc.apps.sentiment.data.split` (train / val / test by hash);
2. featurise train and val once (MiniLM embeddings are computed once per text and may be cached
   on disk with :func:`cached_features`);
3. AdamW, mini-batches in a seeded order, class-weighted cross-entropy (+ score MSE);
4. keep the weights of the epoch with the best validation macro-F1 and stop after ``patience``
   epochs without improvement.

The test split is never touched here.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from aigc.apps.sentiment.data import Example, language_of, split
from aigc.apps.sentiment.model import SentimentConfig, SentimentModel, featurize, select_rows
from aigc.errors import ConfigError, DataError


@dataclass(frozen=True)
class SentimentTrainConfig:
    """How a sentiment model trains (CLI flags map onto these fields)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    seed: int = 0
    split_seed: int = 0  # the seed of the hash split (keep 0 to compare with published numbers)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, float | int) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, float | int) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


def default_config(language: str, labels: tuple[str, ...], has_scores: bool) -> SentimentConfig:
    """The model aigc trains when none is specified: the MiniLM head with VADER features for
    English, the hashed bag of characters and character n-grams for Chinese (docs/sentiment.md gives the measurements)."""
    if language == "zh":
        return SentimentConfig(language="zh", encoder="char-ngrams", labels=labels,
                               hidden=64, score_head=has_scores)
    return SentimentConfig(language="en", encoder="minilm+vader", labels=labels,
                           score_head=has_scores)


def cached_features(texts: list[str], config: SentimentConfig,
                    cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """:func:`featurize` of ``texts``, kept in ``cache_dir`` as safetensors keyed by the encoder
    and a SHA-256 of the texts (dense encoders only; the hashed bags are cheap to recompute)."""
    if cache_dir is None or config.encoder not in ("minilm", "minilm+vader"):
        return featurize(texts, config)
    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{config.encoder}-{digest}.safetensors"
    if path.is_file():
        return load_file(str(path))
    feats = featurize(texts, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp))
    tmp.replace(path)
    return feats


def _targets(examples: list[Example], labels: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for e in examples:
        if e.label not in labels:
            raise DataError(f"label {e.label!r} of text {e.text[:40]!r} is not one of the "
                            f"model's labels {labels}")
    return {
        "label": torch.tensor([labels.index(e.label) for e in examples], dtype=torch.long),
        "score": torch.tensor([e.score if e.score is not None else 0.0 for e in examples],
                              dtype=torch.float32),
        "has_score": torch.tensor([e.score is not None for e in examples], dtype=torch.bool),
    }


def macro_f1_from_predictions(true: torch.Tensor, pred: torch.Tensor, n_classes: int) -> float:
    """Unweighted mean of per-class F1 (a class absent from both gives 0 and still counts)."""
    f1s = []
    for c in range(n_classes):
        tp = int(((pred == c) & (true == c)).sum())
        fp = int(((pred == c) & (true != c)).sum())
        fn = int(((pred != c) & (true == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / n_classes


def train_model(examples: list[Example], model_config: SentimentConfig | None = None,
                train_config: SentimentTrainConfig | None = None, *,
                features: dict[str, torch.Tensor] | None = None,
                cache_dir: str | Path | None = None,
                log=None) -> tuple[SentimentModel, dict[str, Any]]:
    """Train on the train split of ``examples``, early-stopping on their val split.

    Args:
        examples: labelled examples of one language (all splits; the test split is ignored).
        model_config: the model; default :func:`default_config` for the data.
        train_config: the loop's settings; default :class:`SentimentTrainConfig`.
        features: precomputed :func:`featurize` output for exactly ``examples``, in order.
        cache_dir: where dense features may be cached (see :func:`cached_features`).
        log: ``print``-like callable for one line per epoch, or None.

    Returns:
        The model with its best-validation weights, in eval mode, and a summary dict.
    """
    tc = train_config or SentimentTrainConfig()
    language = language_of(examples)
    labels_present = sorted({e.label for e in examples}, key=("negative", "neutral",
                                                              "positive").index)
    if len(labels_present) < 2:
        raise DataError(f"training needs at least two classes, got only {labels_present}")
    has_scores = any(e.score is not None for e in examples)
    labels = tuple(labels_present) if language == "en" else ("negative", "positive")
    if language == "en" and "neutral" not in labels:
        labels = ("negative", "positive")
    mc = model_config or default_config(language, labels, has_scores)
    if mc.language != language:
        raise ConfigError(f"model language {mc.language!r} but the data is {language!r}")
    if mc.labels != labels:
        mc = SentimentConfig(**{**asdict(mc), "labels": labels})
    parts = split(examples, tc.split_seed)
    if not parts["train"]:
        raise DataError(f"no training rows after the hash split of {len(examples)} examples")
    val_rows = parts["val"] or parts["train"]  # tiny data sets: validate on train (said below)
    index = {id(e): i for i, e in enumerate(examples)}

    torch.manual_seed(tc.seed)
    if features is None:
        needed = parts["train"] + (parts["val"] if parts["val"] else [])
        feats = cached_features([e.text for e in needed], mc, cache_dir)
        train_idx = torch.arange(len(parts["train"]))
        val_idx = (torch.arange(len(parts["train"]), len(needed)) if parts["val"]
                   else train_idx)
    else:
        feats = features
        train_idx = torch.tensor([index[id(e)] for e in parts["train"]])
        val_idx = torch.tensor([index[id(e)] for e in val_rows])
    y_train, y_val = _targets(parts["train"], labels), _targets(val_rows, labels)
    counts = torch.bincount(y_train["label"], minlength=len(labels)).float()
    class_weight = (counts.sum() / (len(labels) * counts.clamp(min=1)))  # inverse frequency

    model = SentimentModel(mc)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    val_feats = select_rows(feats, val_idx)
    best, best_state, best_epoch, stale, history = -1.0, None, 0, 0, []
    start = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        model.train()
        order = torch.randperm(len(train_idx), generator=gen)
        total = 0.0
        for s in range(0, len(order), tc.batch_size):
            rows = order[s:s + tc.batch_size]
            batch = {"features": select_rows(feats, train_idx[rows]),
                     **{k: v[rows] for k, v in y_train.items()}, "class_weight": class_weight}
            loss = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        model.eval()
        with torch.no_grad():
            logits, _ = model(val_feats)
        f1 = macro_f1_from_predictions(y_val["label"], logits.argmax(-1), len(labels))
        history.append({"epoch": epoch, "train_loss": total / len(order), "val_macro_f1": f1})
        if log:
            log(f"epoch {epoch}: train loss {total / len(order):.4f}, val macro-F1 {f1:.4f}")
        if f1 > best:
            best, best_epoch, stale = f1, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= tc.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    summary = {
        "language": language, "labels": list(labels), "encoder": mc.encoder,
        "train_rows": len(parts["train"]), "val_rows": len(parts["val"]),
        "validated_on": "val" if parts["val"] else "train (no val rows)",
        "best_epoch": best_epoch, "best_val_macro_f1": best, "epochs_run": len(history),
        "seconds": round(time.perf_counter() - start, 2), "train_config": asdict(tc),
        "domains": sorted({e.domain for e in examples}),
        "history": history,
    }
    return model.eval(), summary
