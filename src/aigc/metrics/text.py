"""Text metrics: perplexity, BLEU / chrF (sacrebleu), ROUGE-1/2/L (rouge-score), distinct-n and
self-BLEU for diversity, and a form check for Chinese regulated verse.

Library implementations are used where they exist; this module keeps their settings in one place
so that a metric card can state them. Everything runs offline: rouge-score needs only nltk's
Porter stemmer (code, no data download), and Chinese is tokenised by character.

    bleu = BLEU(language="en")
    bleu.update(["the cat sat"], [["the cat sat down"]])
    bleu.compute()  # {"bleu": ..., "signature": "nrefs:1|case:mixed|eff:no|tok:13a|..."}
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Literal

import torch

from aigc.data.text import regulated_verse_form
from aigc.errors import AigcError

Language = Literal["en", "zh"]


def _check_language(language: str) -> None:
    if language not in ("en", "zh"):
        raise AigcError(f"language must be 'en' or 'zh', got {language!r}")


def tokenize(text: str, language: Language = "en") -> list[str]:
    """Words (lower-cased, punctuation split off) for English; characters for Chinese."""
    _check_language(language)
    if language == "zh":
        return [c for c in text if not c.isspace()]
    return re.findall(r"\w+|[^\w\s]", text.lower())


# ------------------------------------------------------------------------ perplexity


class Perplexity:
    """``exp(-sum log p(token) / #tokens)`` over a corpus, from a model's log-likelihoods.

    ``update(log_likelihood, num_tokens)`` takes per-sequence sums of natural-log token
    probabilities and token counts (tensors of equal shape, or floats/ints). Running sums are
    float64, so the value does not depend on how the corpus was batched.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.log_likelihood = 0.0
        self.tokens = 0

    def update(self, log_likelihood: torch.Tensor | float, num_tokens: torch.Tensor | int) -> None:
        ll = torch.as_tensor(log_likelihood, dtype=torch.float64)
        nt = torch.as_tensor(num_tokens, dtype=torch.float64)
        if not torch.isfinite(ll).all():
            raise AigcError("log-likelihoods contain NaN or infinite values")
        if (ll > 1e-9).any():
            raise AigcError("log-likelihoods must be <= 0 (natural-log probabilities)")
        if (nt < 0).any() or ll.shape != nt.shape:
            raise AigcError("num_tokens must be >= 0 and shaped like log_likelihood")
        self.log_likelihood += float(ll.sum())
        self.tokens += int(nt.sum())

    def compute(self) -> dict[str, float]:
        if self.tokens == 0:
            raise AigcError("perplexity needs at least one token")
        nll = -self.log_likelihood / self.tokens
        return {"perplexity": math.exp(nll), "nll_per_token": nll, "tokens": self.tokens}


def token_log_likelihoods(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``(sum log p(target), #tokens)`` from logits ``(B, T, V)``, targets ``(B, T)``.

    Positions whose target is ``ignore_index`` are left out.
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    mask = targets != ignore_index
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * mask).sum(1), mask.sum(1)


# ------------------------------------------------------------------------ sacrebleu


class _CorpusMetric:
    """Collects hypotheses and references; the score is computed over the whole corpus."""

    def __init__(self, language: Language = "en") -> None:
        _check_language(language)
        self.language = language
        self.reset()

    def reset(self) -> None:
        self.hypotheses: list[str] = []
        self.references: list[list[str]] = []

    def update(self, hypotheses: list[str], references: list[list[str]]) -> None:
        """``references[i]`` is the list of reference texts for ``hypotheses[i]``."""
        if len(hypotheses) != len(references):
            raise AigcError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
        if any(not refs for refs in references):
            raise AigcError("every hypothesis needs at least one reference")
        self.hypotheses += list(hypotheses)
        self.references += [list(r) for r in references]

    def _streams(self) -> list[list[str]]:
        """sacrebleu's layout: one stream per reference slot (equal counts required)."""
        if not self.hypotheses:
            raise AigcError("corpus metric computed before any update")
        counts = {len(r) for r in self.references}
        if len(counts) != 1:
            raise AigcError(f"every hypothesis must have the same number of references, got "
                            f"{sorted(counts)}")
        return [list(s) for s in zip(*self.references, strict=True)]


class BLEU(_CorpusMetric):
    """Corpus BLEU from sacrebleu (tokeniser ``13a`` for English, ``zh`` for Chinese)."""

    def compute(self) -> dict[str, float | str]:
        from sacrebleu.metrics import BLEU as SacreBLEU

        metric = SacreBLEU(tokenize="zh" if self.language == "zh" else "13a")
        score = metric.corpus_score(self.hypotheses, self._streams())
        return {"bleu": float(score.score), "signature": str(metric.get_signature())}


class CHRF(_CorpusMetric):
    """Corpus chrF (character n-gram F-score, beta=2) from sacrebleu."""

    def compute(self) -> dict[str, float | str]:
        from sacrebleu.metrics import CHRF as SacreCHRF

        metric = SacreCHRF()
        score = metric.corpus_score(self.hypotheses, self._streams())
        return {"chrf": float(score.score), "signature": str(metric.get_signature())}


class _ListTokenizer:
    """rouge-score tokenizer interface (``tokenize(text) -> list[str]``)."""

    def __init__(self, language: Language):
        self.language = language

    def tokenize(self, text: str) -> list[str]:
        return [t for t in tokenize(text, self.language) if re.match(r"\w", t)]


class ROUGE(_CorpusMetric):
    """ROUGE-1/2/L F-measures from rouge-score, averaged over pairs (best over references).

    English uses rouge-score's own tokenizer (no stemming); Chinese is split into characters,
    since rouge-score's default tokenizer drops non-ASCII text.
    """

    types = ("rouge1", "rouge2", "rougeL")

    def compute(self) -> dict[str, float]:
        from rouge_score.rouge_scorer import RougeScorer

        if not self.hypotheses:
            raise AigcError("ROUGE computed before any update")
        tok = _ListTokenizer("zh") if self.language == "zh" else None
        scorer = RougeScorer(list(self.types), use_stemmer=False, tokenizer=tok)
        totals = Counter()
        for hyp, refs in zip(self.hypotheses, self.references, strict=True):
            for t, s in scorer.score_multi(refs, hyp).items():
                totals[t] += s.fmeasure
        return {t: totals[t] / len(self.hypotheses) for t in self.types}


# ------------------------------------------------------------------------ diversity


def distinct_n(texts: list[str], n: int, language: Language = "en") -> float:
    """Distinct n-grams / all n-grams over the corpus (Li et al., 2016). 0 when no n-grams."""
    grams = Counter()
    for text in texts:
        toks = tokenize(text, language)
        grams.update(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def self_bleu(texts: list[str], language: Language = "en", max_texts: int = 500) -> float:
    """Mean sentence BLEU of each text against all the others (Zhu et al., 2018); lower = more
    diverse. Uses the first ``max_texts`` texts (cost is quadratic)."""
    from sacrebleu.metrics import BLEU as SacreBLEU

    texts = texts[:max_texts]
    if len(texts) < 2:
        raise AigcError(f"self-BLEU needs at least 2 texts, got {len(texts)}")
    metric = SacreBLEU(tokenize="zh" if language == "zh" else "13a", effective_order=True)
    scores = [metric.sentence_score(t, texts[:i] + texts[i + 1:]).score
              for i, t in enumerate(texts)]
    return sum(scores) / len(scores)


# ------------------------------------------------------------------------ regulated verse
# The check itself is aigc.data.text.regulated_verse_form (one implementation for the corpus
# loader, this metric and benchmarks/tang_form_check.py).


def verse_form_rate(poems: list[str]) -> float:
    """Share of poems that pass :func:`regulated_verse_form`."""
    if not poems:
        raise AigcError("verse form rate needs at least one poem")
    return sum(regulated_verse_form(p)["ok"] for p in poems) / len(poems)
