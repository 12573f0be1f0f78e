"""The two reference scorers every aigc sentiment model is compared with, unchanged from their
packages.

* **VADER** (English; ``vaderSentiment``): the rule-based lexicon scorer of Hutto & Gilbert. Its
  ``compound`` score in [-1, 1] is the score; the label follows the authors' recommended cut-offs:
  positive when ``compound >= 0.05``, negative when ``compound <= -0.05``, else neutral.
* **snownlp** (Chinese): the naive Bayes classifier snownlp ships, ``SnowNLP(text).sentiments`` =
  P(positive). It loads its own ``sentiment.marshal`` file from inside the installed package (a
  file of the package, never one a user gives). The score is ``2 P - 1``; the label is positive
  when ``P >= 0.5``, else negative (two classes: the corpus it learnt from has no neutral).
  Caveat for evaluation: that model was trained on snownlp's whole ``pos.txt``/``neg.txt``, so on
  our held-out split of the same corpus it has seen the test texts; its numbers there are an
  optimistic ceiling for the baseline, not a fair held-out score.
"""

from __future__ import annotations

from functools import lru_cache

from aigc.errors import AigcError

VADER_THRESHOLD = 0.05  # the vaderSentiment README's cut-off for compound scores


def vader_label(compound: float) -> str:
    """The VADER authors' three-way rule on a compound score."""
    if compound >= VADER_THRESHOLD:
        return "positive"
    if compound <= -VADER_THRESHOLD:
        return "negative"
    return "neutral"


@lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise AigcError("the VADER baseline needs vaderSentiment: pip install 'aigc[apps]'") \
            from None
    return SentimentIntensityAnalyzer()


def vader_compound(texts: list[str]) -> list[float]:
    """VADER's compound score of each text, in [-1, 1]."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def vader_features(texts: list[str]) -> list[list[float]]:
    """VADER's four numbers per text: ``[neg, neu, pos, compound]``."""
    analyzer = _vader()
    out = []
    for t in texts:
        s = analyzer.polarity_scores(t)
        out.append([float(s["neg"]), float(s["neu"]), float(s["pos"]), float(s["compound"])])
    return out


def snownlp_positive_probability(texts: list[str]) -> list[float]:
    """snownlp's shipped naive Bayes P(positive) for each text (about 30 ms a review on one
    core: it segments each text with its own pure-Python tagger)."""
    try:
        from snownlp import sentiment  # type: ignore[import-untyped]
    except ImportError:
        raise AigcError("the snownlp baseline needs snownlp: pip install 'aigc[apps]'") from None
    return [float(sentiment.classify(t)) for t in texts]


def snownlp_label(p_positive: float) -> str:
    """snownlp's two-way rule: positive when P(positive) >= 0.5."""
    return "positive" if p_positive >= 0.5 else "negative"
