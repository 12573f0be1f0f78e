"""One interface over every sentiment scorer: the baselines and aigc's trained models.

Stable API (the monitor and the studio build on it)::

    from aigc.apps.sentiment.scorer import load_scorer

    scorer = load_scorer("vader")        # or "snownlp", "sentiment-en", "sentiment-zh",
                                         # or the path of a trained checkpoint folder
    scorer.language                      # "en" or "zh"
    scorer.labels                        # the labels it can return
    results = scorer.score(["great results, shares up", "profit warning"])
    results[0].label                     # "negative" | "neutral" | "positive"
    results[0].score                     # float in [-1, 1]; > 0 positive

* ``load_scorer(name) -> Scorer``; ``name`` is ``"vader"`` (English, rule-based),
  ``"snownlp"`` (Chinese, naive Bayes), ``"sentiment-en"`` / ``"sentiment-zh"`` (the trained
  starters shipped in ``aigc/assets/starters``), or a folder written by ``aigc sentiment train``
  (``model.safetensors`` + ``config.json``). Anything else raises :class:`aigc.errors.AigcError`.
* ``Scorer.score(texts: list[str]) -> list[Sentiment]``, one result per text, in order; an empty
  list gives an empty list; a bare string (not a list) or a non-string item is refused.
* ``Sentiment`` is a frozen dataclass ``(label: str, score: float)``. ``score`` is in [-1, 1]:
  VADER's compound; ``2 P(positive) - 1`` for snownlp; a trained model's regression head
  (English, fitted to the human mean ratings / 4) or ``P(positive) - P(negative)``.
* Chinese scorers are two-class (``labels == ("negative", "positive")``): the only Chinese
  training corpus has no neutral texts, so they never return ``"neutral"``.
* Scorers are safe to share between threads for reading (``score`` holds no state), and load
  their weights once, at ``load_scorer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aigc.errors import AigcError

STARTERS = {"sentiment-en": "sentiment-en", "sentiment-zh": "sentiment-zh"}


@dataclass(frozen=True)
class Sentiment:
    """The sentiment of one text: a label and a score in [-1, 1] (> 0 positive)."""

    label: str
    score: float


class Scorer:
    """Base of all scorers: ``name``, ``language``, ``labels`` and :meth:`score`."""

    name: str = ""
    language: str = "en"
    labels: tuple[str, ...] = ("negative", "neutral", "positive")

    def score(self, texts: list[str]) -> list[Sentiment]:
        """The sentiment of each of ``texts``, in order."""
        texts = _check_texts(texts)
        if not texts:
            return []
        return self._score(texts)

    def _score(self, texts: list[str]) -> list[Sentiment]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, language={self.language!r})"


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, list | tuple):
        raise AigcError(f"score() takes a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise AigcError(f"score(): texts[{i}] is {type(t).__name__}, not a string")
    return list(texts)


class VaderScorer(Scorer):
    """VADER's compound score with its authors' ±0.05 cut-offs (English)."""

    name, language = "vader", "en"

    def _score(self, texts):
        from aigc.apps.sentiment.baselines import vader_compound, vader_label

        return [Sentiment(vader_label(c), c) for c in vader_compound(texts)]


class SnowNLPScorer(Scorer):
    """snownlp's shipped naive Bayes (Chinese, two classes)."""

    name, language, labels = "snownlp", "zh", ("negative", "positive")

    def _score(self, texts):
        from aigc.apps.sentiment.baselines import snownlp_label, snownlp_positive_probability

        return [Sentiment(snownlp_label(p), 2.0 * p - 1.0)
                for p in snownlp_positive_probability(texts)]


class ModelScorer(Scorer):
    """A model trained by ``aigc sentiment train`` (see :mod:`aigc.apps.sentiment.model`)."""

    def __init__(self, folder: str | Path, name: str | None = None, batch_size: int = 256):
        from aigc.apps.sentiment.model import load_model

        self.folder = Path(folder)
        self.model, self.info = load_model(self.folder)
        self.name = name or str(self.folder)
        self.language = self.model.config.language
        self.labels = self.model.config.labels
        self.batch_size = batch_size

    @torch.no_grad()
    def _score(self, texts):
        from aigc.apps.sentiment.model import featurize

        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            logits, score = self.model(featurize(chunk, self.model.config))
            for k, s in zip(logits.argmax(-1).tolist(), score.tolist(), strict=True):
                out.append(Sentiment(self.labels[k], float(min(1.0, max(-1.0, s)))))
        return out

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Class probabilities ``(N, len(labels))`` in the order of :attr:`labels`."""
        from aigc.apps.sentiment.model import featurize

        texts = _check_texts(texts)
        logits, _ = self.model(featurize(texts, self.model.config))
        return logits.softmax(-1)


def starter_dir(name: str) -> Path:
    """Folder of a shipped starter checkpoint (``sentiment-en``, ``sentiment-zh``)."""
    return Path(__file__).resolve().parents[2] / "assets" / "starters" / STARTERS[name]


def load_scorer(name: str) -> Scorer:
    """A scorer by name: ``vader``, ``snownlp``, ``sentiment-en``, ``sentiment-zh`` or the path
    of a trained checkpoint folder.

    Example:
        >>> load_scorer("vader").score(["I love it!"])[0].label
        'positive'
    """
    if not isinstance(name, str) or not name:
        raise AigcError(f"scorer name must be a non-empty string, got {name!r}")
    if name == "vader":
        return VaderScorer()
    if name == "snownlp":
        return SnowNLPScorer()
    if name in STARTERS:
        folder = starter_dir(name)
        if not folder.is_dir():
            raise AigcError(f"the starter {name!r} is not shipped in this install ({folder}); "
                            f"train one with `aigc sentiment train` (see docs/sentiment.md)")
        return ModelScorer(folder, name=name)
    path = Path(name)
    if path.exists():
        return ModelScorer(path)
    raise AigcError(f"unknown sentiment scorer {name!r}: use vader, snownlp, "
                    f"{', '.join(STARTERS)} or the folder of a trained checkpoint")
