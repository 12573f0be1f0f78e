"""Which token may come next: the state machine of the tokenization, and decoding with it.

:class:`Grammar` says which tokens may follow a prefix (the samplers use it to keep every
generated sequence decodable, and each voice to one note at a time: no voice starts a note while
its previous one sounds); :func:`tokens_to_piece` decodes a token sequence into a
:class:`~aigc.data.music.pieces.Piece`.
"""

from __future__ import annotations

import torch

from aigc.data.music.pieces import (
    MAX_VOICES,
    TONIC_NAMES,
    Note,
    Piece,
    meter_bar_ticks,
    parse_meter,
)
from aigc.data.music.tokens import VOCAB, MusicVocab
from aigc.errors import DataError


class Grammar:
    """Which tokens may come next; the state machine of the tokenization (module docstring).

    ``advance(id)`` raises :class:`DataError` for a token that may not come next; ``allowed()``
    is a boolean mask over the vocabulary (used to constrain sampling).

    With ``one_note_per_voice`` (the default, what the composers sample under) a voice sounds one
    note at a time, as in every chorale voice and folk tune of the corpora: a voice may start a
    note only once its earlier notes have ended (notes of one voice that start together, a
    chord, stay allowed). A position is open when a voice that has sounded in the piece (voice 0
    always counts) is free there, so a rest never forces a new voice in; any free voice may then
    play. :func:`tokens_to_piece` decodes without the rule, so a user's MIDI whose channel holds
    overlapping notes still decodes (and still primes a composition).
    """

    def __init__(self, vocab: MusicVocab = VOCAB, *, one_note_per_voice: bool = True):
        self.vocab = vocab
        self.one_note_per_voice = one_note_per_voice
        self.stage = "style"  # style, key, meter, first-bar, body, note, pitch, dur, end
        self.style, self.tonic, self.mode, self.meter = "", 0, "major", (4, 4)
        self.bar, self.pos, self.voice, self.pitch = -1, -1, 0, -1
        self.notes: list[Note] = []
        # per voice, the tick where its notes so far end; and the same over the notes that
        # start before the current position (a chord's notes start at it)
        self.ends = [0] * MAX_VOICES
        self.ends_before = [0] * MAX_VOICES
        self.voices_used = {0}

    @property
    def bar_ticks(self) -> int:
        return meter_bar_ticks(self.meter)

    def allowed(self) -> torch.Tensor:
        v = self.vocab
        mask = torch.zeros(v.vocab_size, dtype=torch.bool)

        def on(span: tuple[int, int], lo: int = 0, hi: int | None = None) -> None:
            a, b = span
            mask[a + lo : (b if hi is None else a + hi)] = True

        def free_voices(lo: int) -> None:  # voice:lo .. voice:(MAX_VOICES-1), the free ones
            for w in range(max(lo, 1), MAX_VOICES):
                if self._free(w):
                    mask[v.voice_ids[0] + w - 1] = True  # voice:1 is the span's first token

        if self.stage == "style":
            on(v.style_ids)
        elif self.stage == "key":
            on(v.key_ids)
        elif self.stage == "meter":
            on(v.meter_ids)
        elif self.stage == "first-bar":
            mask[v.bar_id] = True
        elif self.stage == "note":  # after pos: any voice above 0, or a pitch of voice 0
            free_voices(lo=1)
            if self._free(0):
                on(v.pitch_ids)
        elif self.stage == "pitch":
            on(v.pitch_ids)
        elif self.stage == "dur":
            on(v.dur_ids)
        elif self.stage == "body":
            mask[v.bar_id] = mask[v.eos_id] = True
            first = self.pos + 1
            if self.one_note_per_voice:  # the first tick where a voice in use is free
                bar_start = self.bar * self.bar_ticks
                first = max(first, min(self.ends[w] for w in self.voices_used) - bar_start)
            if first < self.bar_ticks:
                on(v.pos_ids, lo=first, hi=self.bar_ticks)
            if self.pos >= 0:  # after a note: a higher voice, or a higher pitch in this voice
                free_voices(lo=self.voice + 1)
                on(v.pitch_ids, lo=self.pitch + 1)
        return mask

    def _free(self, voice: int) -> bool:
        """May ``voice`` start a note at the current position?"""
        onset = self.bar * self.bar_ticks + self.pos
        return not self.one_note_per_voice or self.ends_before[voice] <= onset

    def advance(self, token_id: int) -> None:
        v, tok = self.vocab, self.vocab.tokens[token_id]
        if not self.allowed()[token_id]:
            raise DataError(f"token {tok!r} may not come here (state {self.stage}, bar {self.bar}, "
                            f"pos {self.pos}, voice {self.voice}, pitch {self.pitch})")
        kind, _, value = tok.partition(":")
        if self.stage == "style":
            self.style, self.stage = value, "key"
        elif self.stage == "key":
            name, mode = value.split("_")
            self.tonic, self.mode, self.stage = TONIC_NAMES.index(name), mode, "meter"
        elif self.stage == "meter":
            self.meter, self.stage = parse_meter(value), "first-bar"
        elif token_id == v.eos_id:
            self.stage = "end"
        elif token_id == v.bar_id:
            self.bar, self.pos, self.voice, self.pitch, self.stage = self.bar + 1, -1, 0, -1, "body"
        elif kind == "pos":
            self.pos, self.voice, self.pitch, self.stage = int(value), 0, -1, "note"
            self.ends_before = list(self.ends)  # every note so far starts before this position
        elif kind == "voice":
            self.voice, self.pitch, self.stage = int(value), -1, "pitch"
        elif kind == "pitch":
            self.pitch, self.stage = int(value), "dur"
        elif kind == "dur":
            onset = self.bar * self.bar_ticks + self.pos
            self.notes.append(Note(onset, self.voice, self.pitch, int(value)))
            self.ends[self.voice] = max(self.ends[self.voice], onset + int(value))
            self.voices_used.add(self.voice)
            self.stage = "body"

    def piece(self, name: str = "generated") -> Piece:
        if self.stage in ("style", "key", "meter"):
            raise DataError("the token sequence ends inside its header (style, key, meter)")
        if self.stage in ("note", "pitch", "dur"):
            raise DataError(f"the token sequence ends inside a note (expecting {self.stage})")
        return Piece(name, self.style, self.tonic, self.mode, self.meter, list(self.notes))


def tokens_to_piece(tokens: list[str] | list[int], name: str = "generated",
                    vocab: MusicVocab = VOCAB) -> Piece:
    """Decode a token sequence (strings or ids; a leading/trailing ``<eos>`` is allowed)."""
    ids = vocab.encode(tokens) if tokens and isinstance(tokens[0], str) else list(tokens)
    if ids and ids[0] == vocab.eos_id:
        ids = ids[1:]
    g = Grammar(vocab, one_note_per_voice=False)  # decode what is given (module docstring)
    for i in ids:
        if g.stage == "end":
            raise DataError("tokens continue after <eos>")
        g.advance(i)
    return g.piece(name)
