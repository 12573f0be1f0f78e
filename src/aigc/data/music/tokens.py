"""Event tokens of a piece (tokenization version 1) and their fixed vocabulary.

A piece is::

    style:chorale key:D_major meter:4/4          header: the conditions
    bar pos:0 pitch:62 dur:12 voice:1 pitch:57 dur:12 ... pos:12 ...   one bar
    bar ...                                      (an empty bar is a bare ``bar``)

* ``bar`` starts every bar (bar ``k`` spans ticks ``[k L, (k+1) L)``, ``L`` from the meter);
* ``pos:P`` is the onset of the notes that follow, in ticks from the start of the bar;
* ``voice:V`` (1..3) switches voice; the voice is 0 after every ``pos``, so a tune never
  needs a voice token; chorales use 0..3 for S, A, T, B;
* ``pitch:N`` is the MIDI note number, always followed by ``dur:D`` (ticks, 1..192).

Order is canonical: positions increase within a bar; at one position voices increase; within
a voice pitches increase. So a piece has exactly one token sequence: :func:`piece_to_tokens`
and :func:`aigc.data.music.grammar.tokens_to_piece` are inverse. In a training stream each
piece is preceded by ``<eos>`` (id 0), like documents in a text stream (:func:`piece_ids`).
"""

from __future__ import annotations

from aigc.data.music.pieces import (
    MAX_BAR,
    MAX_DURATION,
    MAX_VOICES,
    METERS,
    MODES,
    STYLES,
    TONIC_NAMES,
    Piece,
)
from aigc.errors import DataError

TOKENIZATION_VERSION = 1


def _token_list() -> list[str]:
    tokens = ["<eos>", "bar"]
    tokens += [f"style:{s}" for s in STYLES]
    tokens += [f"key:{TONIC_NAMES[t]}_{m}" for m in MODES for t in range(12)]
    tokens += [f"meter:{n}/{d}" for n, d in METERS]
    tokens += [f"pos:{p}" for p in range(MAX_BAR)]
    tokens += [f"voice:{v}" for v in range(1, MAX_VOICES)]
    tokens += [f"pitch:{p}" for p in range(128)]
    tokens += [f"dur:{d}" for d in range(1, MAX_DURATION + 1)]
    return tokens


class MusicVocab:
    """The fixed event vocabulary (ids are stable for a tokenization version)."""

    kind = "music-events"

    def __init__(self, tokens: list[str] | None = None):
        self.tokens = tokens or _token_list()
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise DataError("a music vocabulary needs distinct tokens")
        self.eos_id = self.index["<eos>"]
        self.bar_id = self.index["bar"]

        def span(prefix: str) -> tuple[int, int]:
            ids = [i for t, i in self.index.items() if t.startswith(prefix)]
            return min(ids), max(ids) + 1

        self.style_ids = span("style:")
        self.key_ids = span("key:")
        self.meter_ids = span("meter:")
        self.pos_ids = span("pos:")
        self.voice_ids = span("voice:")
        self.pitch_ids = span("pitch:")
        self.dur_ids = span("dur:")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str]) -> list[int]:
        try:
            return [self.index[t] for t in tokens]
        except KeyError as exc:
            raise DataError(f"token {exc.args[0]!r} is not in the music vocabulary") from None

    def decode(self, ids: list[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": TOKENIZATION_VERSION, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict) -> MusicVocab:
        if d.get("kind") != cls.kind:
            raise DataError(f"not a music vocabulary (kind={d.get('kind')!r})")
        return cls(list(d["tokens"]))


VOCAB = MusicVocab()


# ------------------------------------------------------------------------- tokens <-> piece


def header_tokens(style: str, tonic: int, mode: str, meter: tuple[int, int]) -> list[str]:
    if style not in STYLES:
        raise DataError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if tuple(meter) not in METERS:
        raise DataError(f"meter {meter[0]}/{meter[1]} is not supported")
    return [f"style:{style}", f"key:{TONIC_NAMES[tonic % 12]}_{mode}", f"meter:{meter[0]}/{meter[1]}"]


def piece_to_tokens(piece: Piece) -> list[str]:
    """The canonical token sequence of ``piece`` (header and bars; no ``<eos>``)."""
    L = piece.bar_ticks
    out = header_tokens(piece.style, piece.tonic, piece.mode, piece.meter)
    bar, pos, voice = -1, -1, 0
    for n in piece.notes:
        if not (0 <= n.voice < MAX_VOICES and 0 <= n.pitch < 128 and 1 <= n.duration <= MAX_DURATION
                and n.onset >= 0):
            raise DataError(f"{piece.name}: note {n} is outside the tokenization's ranges")
        while bar < n.onset // L:
            out.append("bar")
            bar, pos = bar + 1, -1
        if n.onset % L != pos:
            pos, voice = n.onset % L, 0
            out.append(f"pos:{pos}")
        if n.voice != voice:
            voice = n.voice
            out.append(f"voice:{voice}")
        out += [f"pitch:{n.pitch}", f"dur:{n.duration}"]
    return out


def piece_ids(piece: Piece, vocab: MusicVocab = VOCAB) -> tuple[list[int], list[int]]:
    """``(ids, bar_starts)``: ``<eos>`` + tokens + ``<eos>``, and the index of every ``bar``."""
    ids = [vocab.eos_id] + vocab.encode(piece_to_tokens(piece)) + [vocab.eos_id]
    return ids, [i for i, t in enumerate(ids) if t == vocab.bar_id]


HEADER_LEN = 4  # <eos> style key meter
