"""Text generation shared by our GPT and the pretrained chat model: sampling controls, a KV-cached
token loop, stop strings, and a streaming iterator (used by ``aigc generate``, ``aigc chat`` and
the studio)::

    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=200, stop=("\\n\\n",), seed=1)
    stream = stream_text(model, tokenizer, "It is a truth", params)
    for piece in stream:          # text as it is produced
        print(piece, end="", flush=True)
    stream.finish_reason          # "stop" (a stop string), "end" (end-of-text), "length"

A model takes part through the two-method :class:`CachedLM` contract (``reset``, ``feed``);
:func:`as_cached_lm` wraps our :class:`aigc.models.gpt.GPT`, and
:class:`aigc.models.pretrained.HFCachedLM` wraps a transformers causal LM.

Order of the sampling transforms on the next-token logits (as in most libraries):
repetition penalty (Keskar et al. 2019: positive logits of seen tokens divided by the penalty,
negative ones multiplied) -> temperature -> top-k -> top-p (Holtzman et al. 2020: the smallest set
of tokens whose probability reaches p) -> one draw from the renormalised distribution.
Temperature 0 is greedy decoding.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from aigc.errors import AigcError, ConfigError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off
    max_tokens: int = 256
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    seed: int | None = None  # None: a fresh seed, reported in the result
    stop_at_end: bool = True  # end at the model's end-of-text token

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 is off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop strings must be non-empty strings, got {self.stop!r}")


def next_token(logits: torch.Tensor, params: SamplingParams, *,
               generator: torch.Generator | None = None,
               previous: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of ``logits: (B, V)``; ``previous: (B, T)`` ids for the repetition
    penalty. Returns ``(B,)`` int64 on the logits' device."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and previous is not None and previous.numel():
        seen = torch.gather(logits, 1, previous)
        seen = torch.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
        logits = logits.scatter(1, previous, seen)
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


# ------------------------------------------------------------------------ the model contract


class CachedLM(Protocol):
    """A language model with a key/value cache behind two methods."""

    context_length: int  # positions the model can attend to
    prefix_ids: list[int]  # ids put before every prompt (e.g. our GPT's <|endoftext|>)
    end_ids: set[int]  # ids that end a generation

    def reset(self) -> None:
        """Empty the cache."""

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Append ``ids`` to the cached sequence; return the next-token logits ``(V,)``."""


class GPTCachedLM:
    """:class:`CachedLM` over our GPT (documents in its training stream follow ``<|endoftext|>``,
    so a prompt does too)."""

    def __init__(self, model, eot_id: int = 0):
        self.model = model.eval()
        self.context_length = model.cfg.context_length
        self.prefix_ids = [eot_id]
        self.end_ids = {eot_id}
        self.cache = None

    def reset(self) -> None:
        self.cache = self.model.new_cache(1)

    @torch.no_grad()
    def feed(self, ids: list[int]) -> torch.Tensor:
        if self.cache is None:
            self.reset()
        x = torch.tensor([ids], dtype=torch.long, device=self.model.wte.weight.device)
        return self.model(x, self.cache)[0, -1]


def as_cached_lm(model, tokenizer=None) -> CachedLM:
    if hasattr(model, "feed") and hasattr(model, "reset"):
        return model
    if hasattr(model, "new_cache"):
        return GPTCachedLM(model, getattr(tokenizer, "eot_id", 0))
    raise TypeError(f"{type(model).__name__} is neither a CachedLM nor an aigc GPT")


# --------------------------------------------------------------------------------- streaming


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop", "end" or "length"
    tokens: list[int]
    seed: int
    prompt_tokens: int
    truncated_tokens: int = 0  # prompt tokens dropped from the left to fit the context


@dataclass
class TextStream:
    """Iterator over text pieces; after it is exhausted ``text``, ``tokens`` and
    ``finish_reason`` describe the whole generation."""

    _pieces: Iterator[str]
    seed: int
    prompt_tokens: int
    truncated_tokens: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self.text += piece
        return piece

    def result(self) -> Generation:
        for _ in self:
            pass
        return Generation(self.text, self.finish_reason or "length", self.tokens, self.seed,
                          self.prompt_tokens, self.truncated_tokens)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def stream_text(model, tokenizer, prompt: str, params: SamplingParams, *,
                prompt_ids: list[int] | None = None, truncate: bool = True) -> TextStream:
    """Stream the continuation of ``prompt`` (see the module docstring).

    Args:
        model: our GPT or any :class:`CachedLM`.
        tokenizer: has ``encode(text) -> ids`` and ``decode(ids) -> text``.
        prompt: the text to continue (ignored when ``prompt_ids`` is given).
        params: sampling controls.
        prompt_ids: already tokenized prompt (chat templates), used as is.
        truncate: a prompt longer than the context is cut from the left with a warning; when
            False (a chat template must stay whole) it is refused with an error.
    """
    lm = as_cached_lm(model, tokenizer)
    ids = list(prompt_ids) if prompt_ids is not None else lm.prefix_ids + tokenizer.encode(prompt)
    room = lm.context_length - 1  # at least one position left for a new token
    dropped = max(0, len(ids) - room)
    if dropped:
        if not truncate:
            raise AigcError(
                f"the prompt has {len(ids)} tokens but the model's context holds "
                f"{lm.context_length}; shorten it"
            )
        warnings.warn(
            f"the prompt has {len(ids)} tokens, more than the context of {lm.context_length}; "
            f"the first {dropped} tokens were dropped", stacklevel=2,
        )
        ids = ids[dropped:]
    seed = params.seed if params.seed is not None else secrets.randbits(31)
    stream = TextStream(iter(()), seed, len(ids), dropped)
    stream._pieces = _pieces(lm, tokenizer, ids, params, torch.Generator().manual_seed(seed), stream)
    return stream


def _pieces(lm: CachedLM, tokenizer, ids: list[int], params: SamplingParams,
            generator: torch.Generator, stream: TextStream) -> Iterator[str]:
    lm.reset()
    context = list(ids)  # what the cache holds (for re-feeding when the window slides)
    logits = lm.feed(context)
    new: list[int] = []
    emitted = 0  # characters of decode(new) already yielded
    keep = max(1, lm.context_length * 3 // 4)  # tokens kept when the window slides
    longest_stop = max((len(s) for s in params.stop), default=0)
    for _ in range(params.max_tokens):
        previous = (torch.tensor([context], dtype=torch.long, device=logits.device)
                    if params.repetition_penalty != 1.0 else None)
        token = int(next_token(logits[None], params, generator=generator, previous=previous)[0])
        if params.stop_at_end and token in lm.end_ids:
            stream.finish_reason = "end"
            break
        new.append(token)
        stream.tokens = new
        text = tokenizer.decode(new)
        if params.stop:
            search_from = max(0, emitted - longest_stop)
            hits = [i for i in (text.find(s, search_from) for s in params.stop) if i >= 0]
            if hits:
                cut = min(hits)
                if cut > emitted:
                    yield text[emitted:cut]
                stream.finish_reason = "stop"
                return
        # Hold back an incomplete UTF-8 sequence (byte-level BPE) and a possible stop prefix.
        safe = len(text) - _held_back(text, params.stop)
        while safe > emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
        if len(context) + 1 > lm.context_length:  # slide the window: re-feed the recent tokens
            context = (context + [token])[-keep:]
            lm.reset()
            logits = lm.feed(context)
        else:
            context.append(token)
            logits = lm.feed([token])
    else:
        stream.finish_reason = "length"
    text = tokenizer.decode(new)
    if len(text) > emitted:
        yield text[emitted:]


def generate_text(model, tokenizer, prompt: str, params: SamplingParams, **kwargs) -> Generation:
    """The whole continuation at once (see :func:`stream_text` for the arguments)."""
    return stream_text(model, tokenizer, prompt, params, **kwargs).result()
