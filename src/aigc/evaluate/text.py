"""Text evaluation runs: held-out perplexity, prompted continuations scored against the true
continuations, diversity, and a real-vs-real baseline.

:func:`evaluate_language_model` measures our GPT (anything with ``log_likelihood(batch)`` for
perplexity and usable by :func:`aigc.generation.generate_text` for sampling) together with the
tokenizer saved in its checkpoint: the corpus is encoded with that tokenizer, never with a
retrained one. The protocol, written in every card:

* **perplexity**: the reference split as one token stream scored in sliding windows, every token
  once (:mod:`aigc.evaluate.perplexity`); bits per character divides the same sum of negative
  log-likelihoods by the documents' characters (end-of-text tokens have none).
* **continuations** (``n`` of them): held-out documents are cut into pieces, a prompt and the
  true continuation (the reference). Prose: consecutive pieces of ``prompt_chars +
  continuation_chars`` characters, ``n`` of them evenly spaced over all pieces of the split.
  Poems (``《title》`` / ``作者：`` header lines, as in ``tang-poems``): the prompt is the header,
  the reference is the poem's body. When the split has fewer than ``n`` pieces they repeat, each
  repeat sampled afresh (the card records how many are distinct). Continuation ``i`` is sampled
  with seed ``seed + i`` (so each one can be reproduced alone), up to ``continuation_chars``
  characters, ending early at the model's end-of-text token.
* **text metrics**: corpus BLEU and chrF (sacrebleu) and mean ROUGE-1/2/L F (rouge-score) of the
  continuations against the references; distinct-1/2 and self-BLEU of the continuations; the
  regulated-verse form rate for poems.
* **baseline (real vs real)**: ``n`` real pieces of the ``train`` split, chosen by the same rule,
  take the place of the model's continuations: their continuations scored against the same
  references (what genuine text of the corpus that ignores the prompt scores), and their
  diversity and form rate. As for images, it tells the reader what "good" looks like.

:func:`evaluate_text_model` is the family-agnostic contract for any other text model:
``log_likelihood(batch) -> (sum log p per sequence (B,), tokens per sequence (B,))`` over a
dataset's batches (and optionally ``sample_texts(n, generator=...) -> list[str]`` for diversity).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from aigc.data.text import HAN
from aigc.distributed import context, gather_objects, shard_range
from aigc.errors import AigcError
from aigc.evaluate.perplexity import document_stream, stream_perplexity
from aigc.metrics.card import MetricCard


@dataclass
class TextEvaluation:
    """A text evaluation's card plus every continuation (for the report and a JSONL file)."""

    card: MetricCard
    samples: list[dict[str, Any]] = field(default_factory=list)  # prompt, reference, text, seed


def tokenizer_sha256(tokenizer) -> str:
    """SHA-256 of the tokenizer's saved form (canonical JSON): names the tokenizer in a card."""
    blob = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def detect_language(texts: list[str]) -> str:
    """``"zh"`` when most non-space characters are Han characters, else ``"en"``."""
    chars = [c for t in texts for c in t if not c.isspace()]
    han = sum(1 for c in chars if HAN.match(c))
    return "zh" if chars and han / len(chars) > 0.3 else "en"


# ------------------------------------------------------------------------ continuations


def split_poem(document: str) -> tuple[str, str] | None:
    """``(header, body)`` of a ``《title》`` / ``作者：author`` poem, else ``None``."""
    lines = document.strip().split("\n")
    head = 0
    while head < len(lines) and (lines[head].startswith("《") or lines[head].startswith("作者")):
        head += 1
    if head == 0 or head == len(lines):
        return None
    return "\n".join(lines[:head]) + "\n", "\n".join(lines[head:])


def continuation_pieces(documents: list[str], *, prompt_chars: int, continuation_chars: int,
                        kind: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """``(kind, [(prompt, reference), ...])`` for a split (see the module docstring).

    ``kind`` is ``"poem"`` when every document is a poem with a header, else ``"prose"``; given,
    it is kept (documents that are not poems are then skipped).
    """
    poems = [split_poem(d) for d in documents]
    if kind is None:
        kind = "poem" if documents and all(p is not None for p in poems) else "prose"
    if kind == "poem":
        return kind, [p for p in poems if p is not None]
    span = prompt_chars + continuation_chars
    pieces = []
    for doc in documents:
        for start in range(0, len(doc) - span + 1, span):
            pieces.append((doc[start:start + prompt_chars],
                           doc[start + prompt_chars:start + span]))
    return kind, pieces


def pick(items: list, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (repeating them in order when there are fewer)."""
    if not items:
        raise AigcError("no held-out pieces to prompt with (documents shorter than prompt + "
                        "continuation?)")
    if len(items) < n:
        return [items[i % len(items)] for i in range(n)]
    return [items[i * len(items) // n] for i in range(n)]


def generate_continuations(model, tokenizer, prompts: list[str], *, seed: int,
                           max_chars: int, temperature: float, top_k: int, top_p: float,
                           progress: bool = True) -> list[str]:
    """Continuation ``i`` of ``prompts[i]``, sampled with seed ``seed + i``, at most
    ``max_chars`` characters (fewer when the model ends the text)."""
    import warnings

    from aigc.generation import SamplingParams, generate_text

    out = []
    for i, prompt in enumerate(tqdm(prompts, desc="sampling", unit="text",
                                    disable=not progress)):
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                max_tokens=max_chars, seed=seed + i)
        with warnings.catch_warnings():  # long prompts slide the window; the card says so
            warnings.simplefilter("ignore")
            out.append(generate_text(model, tokenizer, prompt, params).text[:max_chars])
    return out


def text_scores(hypotheses: list[str], references: list[str], language: str, *,
                poems: bool) -> dict[str, float]:
    """BLEU/chrF/ROUGE against the references, plus diversity (and verse form) of hypotheses."""
    from aigc.metrics.text import BLEU, CHRF, ROUGE, distinct_n, self_bleu, verse_form_rate

    refs = [[r] for r in references]
    values: dict[str, float] = {}
    for metric in (BLEU(language), CHRF(language), ROUGE(language)):
        metric.update(hypotheses, refs)
        values.update({k: v for k, v in metric.compute().items() if k != "signature"})
    values["distinct_1"] = distinct_n(hypotheses, 1, language)
    values["distinct_2"] = distinct_n(hypotheses, 2, language)
    values["self_bleu"] = self_bleu(hypotheses, language) if len(hypotheses) > 1 else math.nan
    if poems:
        values["verse_form_rate"] = verse_form_rate(hypotheses)
    values["mean_chars"] = sum(len(h) for h in hypotheses) / len(hypotheses)
    return values


def _signatures(language: str) -> dict[str, str]:
    from aigc.metrics.text import BLEU, CHRF

    out = {}
    for name, metric in (("bleu", BLEU(language)), ("chrf", CHRF(language))):
        metric.update(["a"], [["a"]])
        out[name] = str(metric.compute()["signature"])
    return out


# ------------------------------------------------------------------------ the evaluation


def evaluate_language_model(model, tokenizer, corpus, *, n: int = 200, seed: int = 0,
                            split: str = "test", stride: int | None = None,
                            prompt_chars: int = 200, continuation_chars: int = 200,
                            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                            language: str | None = None, batch_size: int = 32,
                            baseline: bool = True, subject: dict | None = None,
                            extra_protocol: dict | None = None,
                            progress: bool = True) -> TextEvaluation | None:
    """Measure a language model on ``corpus`` (a :class:`aigc.data.text.TextCorpus`).

    Under torchrun every process calls it: the perplexity windows and the continuations are
    shared out, and rank 0 alone returns the evaluation (``None`` on the others); the figures are
    those of one process (perplexity up to float64 summation order).

    Args:
        model: our GPT (``log_likelihood``, ``cfg.context_length``, generation).
        tokenizer: the tokenizer saved with the model.
        n: continuations to sample (and real pieces for the baseline).
        stride: perplexity window step, default ``context_length // 2``.
        prompt_chars, continuation_chars: prose piece sizes; ``continuation_chars`` also caps
            the length of every continuation (poems included).
        language: ``"en"`` or ``"zh"`` for tokenising BLEU/ROUGE/distinct-n; default: detected.
    """
    t0 = time.perf_counter()
    if n < 2:
        raise AigcError(f"n must be >= 2 (self-BLEU compares texts), got {n}")
    if min(prompt_chars, continuation_chars) < 1:
        raise AigcError(f"prompt_chars and continuation_chars must be >= 1, got {prompt_chars}, "
                        f"{continuation_chars}")
    T = model.cfg.context_length
    stride = stride or max(1, T // 2)
    documents = corpus.documents(split)
    if not documents:
        raise AigcError(f"{corpus.name} has no documents in its {split} split")
    language = language or detect_language(documents)

    # Perplexity: documents as in training, after one leading <eot> so the first token is scored.
    stream = document_stream(tokenizer, documents)
    values: dict[str, Any] = stream_perplexity(model, stream, context_length=T, stride=stride,
                                               batch_size=batch_size, progress=progress)
    windows = values.pop("windows")
    characters = sum(len(d) for d in documents)
    values["bits_per_character"] = values["nll_per_token"] * values["tokens"] / characters \
        / math.log(2)

    # Continuations of held-out prompts, scored against the true continuations.
    kind, pieces = continuation_pieces(documents, prompt_chars=prompt_chars,
                                       continuation_chars=continuation_chars)
    chosen = pick(pieces, n)
    prompts, references = [p for p, _ in chosen], [r for _, r in chosen]
    # Under torchrun each process samples a contiguous block of the continuations (continuation
    # i still with seed + i, so the texts do not depend on the number of processes).
    ctx = context()
    lo, hi = shard_range(n, ctx.rank, ctx.world_size)
    texts = gather_objects(generate_continuations(
        model, tokenizer, prompts[lo:hi], seed=seed + lo, max_chars=continuation_chars,
        temperature=temperature, top_k=top_k, top_p=top_p, progress=progress and ctx.is_main))
    if not ctx.is_main:  # rank 0 scores, writes and reports
        return None
    values.update(text_scores(texts, references, language, poems=kind == "poem"))

    base: dict[str, Any] = {}
    base_distinct = None
    if baseline:
        _, train_pieces = continuation_pieces(corpus.documents("train"), prompt_chars=prompt_chars,
                                              continuation_chars=continuation_chars, kind=kind)
        # Real poems are cut at max_chars as the model's continuations are.
        real = [r[:continuation_chars] for _, r in pick(train_pieces, n)]
        base_distinct = min(len(train_pieces), n)
        base = text_scores(real, references, language, poems=kind == "poem")

    protocol: dict[str, Any] = {
        "data": corpus.name, "reference_split": split, "baseline_split": "train" if baseline
        else None, "language": language,
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "sha256": tokenizer_sha256(tokenizer)},
        "perplexity": {"context_length": T, "stride": stride, "windows": windows,
                       "tokens": values["tokens"], "characters": characters,
                       "documents": len(documents),
                       "stream": "<eot> doc_1 <eot> doc_2 <eot> ...; each token after the first "
                       "scored once, eot included; natural log, float64"},
        "continuations": {
            "n": n, "kind": kind, "distinct_prompts": min(len(pieces), n),
            "pieces_in_split": len(pieces),
            "prompt": "poem header (title, author)" if kind == "poem" else
            f"{prompt_chars} characters of a held-out piece",
            "reference": "the poem body" if kind == "poem" else
            f"the next {continuation_chars} characters",
            "max_chars": continuation_chars, "prompt_tokens": "<eot> + prompt, its first "
            "tokens dropped when longer than context_length - 1",
            "selection": "evenly spaced over the split's "
            "pieces, repeated in order when fewer than n",
            "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                         "repetition_penalty": 1.0, "stop": "end-of-text token"},
            "seeds": f"continuation i: seed + i (seed {seed})",
        },
        "baseline": "n real pieces of the train split chosen by the same rule, in place of the "
        f"model's continuations ({base_distinct} distinct)" if baseline else None,
        "seed": seed,
        "metrics": {**_signatures(language),
                    "rouge": "rouge-score F-measure, mean over pairs, no stemming" +
                    (", Han characters as tokens" if language == "zh" else ""),
                    "distinct_n": "distinct n-grams / all n-grams over the n texts",
                    "self_bleu": "mean sacrebleu sentence BLEU of each text against the others "
                    "(first 500 texts)",
                    **({"verse_form": "4 or 8 verses (split at punctuation and white space), all "
                        "of 5 or all of 7 Han characters (tones and rhyme not checked)"} if kind == "poem" else {})},
        **(extra_protocol or {}),
    }
    card = MetricCard(kind="text", subject=subject or {}, protocol=protocol, values=values,
                      baseline=base)
    card.notes.append(
        "Perplexity depends on the tokenizer: compare perplexities only between cards with the "
        "same tokenizer hash; bits per character is comparable across tokenizers of one corpus.")
    card.notes.append(
        "BLEU/chrF/ROUGE of sampled continuations against the one true continuation are low "
        "even for genuine text: read them beside the baseline column (real text of the corpus "
        "that ignores the prompt).")
    card.notes.append(
        "distinct-n counts invented words as new n-grams: a model that misspells scores above "
        "real text. Read it together with self-BLEU, chrF and the baseline.")
    card.environment["wall_seconds"] = round(time.perf_counter() - t0, 1)
    samples = [{"i": i, "seed": seed + i, "prompt": p, "reference": r, "text": t}
               for i, (p, r, t) in enumerate(zip(prompts, references, texts, strict=True))]
    return TextEvaluation(card=card, samples=samples)


# ------------------------------------------------------------------------ any text model


@torch.no_grad()
def evaluate_text_model(model, dataset, *, n: int | None = None, batch_size: int = 32,
                        seed: int = 0, language: str = "en", n_samples: int = 100,
                        subject: dict | None = None, extra_protocol: dict | None = None,
                        progress: bool = True) -> MetricCard:
    """Perplexity on a held-out split and, when the model can sample, diversity metrics."""
    from aigc.metrics.text import Perplexity, distinct_n, self_bleu, verse_form_rate

    if not hasattr(model, "log_likelihood"):
        raise AigcError(f"{type(model).__name__} has no log_likelihood(batch) method, which "
                        "text evaluation needs (sum of log p per sequence, tokens per sequence)")
    total = len(dataset) if n is None else min(n, len(dataset))
    if total < 1:
        raise AigcError("the held-out text split is empty")
    ppl = Perplexity()
    for start in tqdm(range(0, total, batch_size), desc="perplexity", disable=not progress,
                      unit="batch"):
        batch = dataset.get_batch(torch.arange(start, min(start + batch_size, total)))
        ll, tokens = model.log_likelihood(batch)
        ppl.update(ll, tokens)
    values: dict[str, Any] = ppl.compute()
    protocol: dict[str, Any] = {"n_sequences": total, "seed": seed, "language": language,
                                "perplexity": "exp(-sum log p / tokens), natural log, float64"}
    if hasattr(model, "sample_texts"):
        texts = model.sample_texts(n_samples, generator=torch.Generator().manual_seed(seed))
        values["distinct_1"] = distinct_n(texts, 1, language)
        values["distinct_2"] = distinct_n(texts, 2, language)
        values["self_bleu"] = self_bleu(texts, language)
        if language == "zh":
            values["verse_form_rate"] = verse_form_rate(texts)
        protocol["n_generated"] = len(texts)
    protocol.update(extra_protocol or {})
    return MetricCard(kind="text", subject=subject or {}, protocol=protocol, values=values)
