"""Music GPT: the project's GPT (:mod:`aigc.models.gpt`, unchanged) trained on music event tokens.

The network, its config and its loss are those of :class:`aigc.models.gpt.GPT`; this module only
adds what music needs around it:

* ``training_data(name)``: a music corpus (:mod:`aigc.data.music`) as windows that always start
  with the piece's header ``<eos> style key meter`` (:class:`aigc.data.music.MusicWindows`), the
  training split in all twelve transpositions, the validation split as it is;
* the event vocabulary in the checkpoint's ``meta["music_vocab"]``, so ``model.safetensors`` alone
  rebuilds model and vocabulary;
* :func:`compose`: grammar-constrained sampling of a piece of a given number of bars, conditioned
  on style, key and meter, optionally continuing a user's opening bars. The same loop samples the
  n-gram baseline (:class:`aigc.metrics.music.NGramModel`), so both are judged alike.

Train it with ``aigc train music-gpt --data bach-chorales`` (or ``folk-tunes``, ``bach-and-folk``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc.data.music import VOCAB
from aigc.errors import CheckpointError, ConfigError
from aigc.models.gpt import GPT, GPTConfig

CONFIG_CLASS = GPTConfig
MODEL_CLASS = GPT
DATA_KIND = "music"
TRAIN_DEFAULTS = {"lr": 1e-3, "batch_size": 32, "steps": 3000, "warmup_steps": 100,
                  "weight_decay": 0.1, "betas": (0.9, 0.95), "ema_decay": 0.0,
                  "eval_every": 250, "sample_every": 0}
DEFAULT_CONTEXT = 256
# The model-config values `aigc train` uses for music (shown by --help): the event vocabulary.
MODEL_DEFAULTS = {"vocab_size": VOCAB.vocab_size, "context_length": DEFAULT_CONTEXT}


class _LazyWindows:
    """Defers building the windows until the context length is known (see :func:`bind_data`)."""

    def __init__(self, pieces, transpositions, bar_stride, where):
        self.pieces, self.transpositions, self.bar_stride, self.where = \
            pieces, transpositions, bar_stride, where


def training_data(name: str):
    """``(train, val, meta, model_defaults)`` for a music corpus (see the module docstring)."""
    from aigc.data.music import TRANSPOSITIONS, load_music_corpus

    corpus = load_music_corpus(name)
    for line in corpus.report.lines()[:12]:
        print(line)
    train = _LazyWindows(corpus.split("train"), TRANSPOSITIONS, 1, f"{name} train split")
    val = _LazyWindows(corpus.split("val"), (0,), 4, f"{name} val split")
    meta = {"data": name, "music_vocab": VOCAB.to_dict(), "corpus_report": corpus.report.lines()[0]}
    return train, val, meta, dict(MODEL_DEFAULTS)


def bind_data(model_cfg: GPTConfig, train, val, meta: dict):
    """Cut the windows at the model's context length (called by ``aigc train``)."""
    from aigc.data.music import VOCAB, MusicWindows

    if model_cfg.vocab_size < VOCAB.vocab_size:
        raise ConfigError(f"vocab_size={model_cfg.vocab_size} is smaller than the music "
                          f"vocabulary ({VOCAB.vocab_size} tokens); leave it at its default")

    def windows(lazy):
        return MusicWindows(lazy.pieces, model_cfg.context_length, bar_stride=lazy.bar_stride,
                            transpositions=lazy.transpositions, where=lazy.where)

    return model_cfg, windows(train), (windows(val) if val.pieces else None), meta


def load_music_model(path, *, use_ema: bool = True):
    """``(model, vocab, checkpoint)`` from a music GPT checkpoint."""
    from aigc.data.music import MusicVocab
    from aigc.models import model_from_checkpoint

    model, ckpt = model_from_checkpoint(path, use_ema=use_ema)
    if "music_vocab" not in ckpt.meta:
        raise CheckpointError(f"{ckpt.path} is not a music model (no music_vocab in its metadata)")
    return model, MusicVocab.from_dict(ckpt.meta["music_vocab"]), ckpt


def is_music_checkpoint(path) -> bool:
    """True when ``path`` resolves to a checkpoint whose metadata holds a music vocabulary."""
    import json

    from aigc.checkpoints import read_metadata, resolve_checkpoint

    meta = read_metadata(resolve_checkpoint(path))
    return meta.get("family") == "music-gpt" or "music_vocab" in json.loads(meta.get("meta") or "{}")


# ------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class ComposeParams:
    """What to compose and how to sample it."""

    bars: int = 8  # bars to add after the opening
    style: str = "chorale"
    key: str = "C major"
    meter: str = "4/4"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh seed, reported in the result

    def __post_init__(self) -> None:
        if not 1 <= self.bars <= 256:
            raise ConfigError(f"bars must be in 1..256, got {self.bars}")


@dataclass
class Composition:
    piece: object  # aigc.data.music.Piece
    tokens: list[int]
    seed: int
    opening_bars: int


class _GPTLM:
    """Our GPT behind ``reset()`` / ``feed(ids) -> logits (V,)`` with a KV cache."""

    def __init__(self, model: GPT):
        from aigc.generation import GPTCachedLM

        self.inner = GPTCachedLM(model, eot_id=0)
        self.context_length = model.cfg.context_length

    def reset(self) -> None:
        self.inner.reset()

    def feed(self, ids: list[int]) -> torch.Tensor:
        return self.inner.feed(ids)


def as_music_lm(model):
    """Our GPT, or anything with ``reset``, ``feed`` and ``context_length`` (an n-gram model)."""
    if isinstance(model, GPT):
        return _GPTLM(model)
    if hasattr(model, "feed") and hasattr(model, "reset"):
        return model
    raise TypeError(f"{type(model).__name__} cannot compose music")


def compose(model, params: ComposeParams, *, opening=None, vocab=None) -> Composition:
    """Sample a piece of ``params.bars`` bars (after the ``opening`` piece's bars, if given).

    Every token is drawn from the model's distribution restricted to the tokens the grammar
    allows next (:class:`aigc.data.music.Grammar`), so the result always decodes and no voice
    starts a note while its previous note sounds. When the sequence outgrows the context, the
    context restarts from the header plus the most recent bars (the conditions stay in view).
    """
    from aigc.data.music import (
        HEADER_LEN,
        VOCAB,
        Grammar,
        header_tokens,
        parse_key,
        parse_meter,
        piece_to_tokens,
    )
    from aigc.generation import SamplingParams, next_token

    vocab = vocab or VOCAB
    lm = as_music_lm(model)
    sampling = SamplingParams(temperature=params.temperature, top_k=params.top_k,
                              top_p=params.top_p, max_tokens=1)
    if opening is not None:
        tokens = piece_to_tokens(opening)
        tokens[0] = f"style:{params.style}"  # the requested style; key and meter are the opening's
        opening_bars = opening.bars
    else:
        tonic, mode = parse_key(params.key)
        tokens = header_tokens(params.style, tonic, mode, parse_meter(params.meter)) + ["bar"]
        opening_bars = 0
    ids = [vocab.eos_id] + vocab.encode(tokens)
    # The opening is taken as given (a user's MIDI channel may hold overlapping notes); every
    # token sampled after it keeps each voice to one note at a time.
    grammar = Grammar(vocab, one_note_per_voice=False)
    for i in ids[1:]:
        grammar.advance(i)
    grammar.one_note_per_voice = True
    total_bars = opening_bars + params.bars
    seed = params.seed if params.seed is not None else secrets.randbits(31)
    generator = torch.Generator().manual_seed(seed)
    T = lm.context_length
    lm.reset()
    context = list(ids)
    if len(ids) >= T:  # a long opening: header + its most recent bars
        context = ids[:HEADER_LEN] + _recent_bars(ids, vocab, T * 3 // 4 - HEADER_LEN)
    logits = lm.feed(context)
    max_tokens = 400 * params.bars
    for _ in range(max_tokens):
        mask = grammar.allowed()
        if grammar.bar < total_bars - 1:
            mask[vocab.eos_id] = False  # not finished yet
        logits = logits.float().masked_fill(~mask.to(logits.device), float("-inf"))
        token = int(next_token(logits[None], sampling, generator=generator)[0])
        if token == vocab.eos_id or (token == vocab.bar_id and grammar.bar == total_bars - 1):
            break
        grammar.advance(token)
        ids.append(token)
        if len(context) + 1 > T:  # slide: header + recent bars
            context = ids[:HEADER_LEN] + _recent_bars(ids, vocab, T * 3 // 4 - HEADER_LEN)
            lm.reset()
            logits = lm.feed(context)
        else:
            context.append(token)
            logits = lm.feed([token])
    while grammar.stage in ("note", "pitch", "dur"):  # ran out of tokens mid-note: finish it
        mask = grammar.allowed()
        token = int(mask.nonzero()[0])
        grammar.advance(token)
        ids.append(token)
    return Composition(grammar.piece(), ids, seed, opening_bars)


def _recent_bars(ids: list[int], vocab, room: int) -> list[int]:
    """The longest suffix of ``ids`` that starts at a ``bar`` token and has at most ``room``
    tokens (or the last ``room`` tokens when a single bar is longer)."""
    start = len(ids) - room
    for i in range(max(start, 1), len(ids)):
        if ids[i] == vocab.bar_id:
            return ids[i:]
    return ids[-room:]


def preview(model: GPT, step: int, run_dir) -> None:
    """``run_dir/samples/step-N.mid``: 4 bars of a chorale in C major (seed 0)."""
    from aigc.data.music import write_midi

    comp = compose(model, ComposeParams(bars=4, seed=0))
    write_midi(comp.piece, Path(run_dir) / "samples" / f"step-{step:08d}.mid")
