"""Symbolic music: music21's corpus <-> pieces of notes <-> event tokens <-> MIDI / MusicXML.

Corpora (all inside the PyPI ``music21`` wheel, no network):

* ``bach-chorales``: the Bach chorales of music21's Riemenschneider list (350 distinct files),
  the four voices S, A, T, B; style token ``chorale``.
* ``folk-tunes``: a fixed subset of the Essen folksong collection (``altdeu10``, ``altdeu20``,
  ``kinder0``, ``erk5``, ``ballad10``: German songs) and the first 100 tunes of O'Neill's
  *Music of Ireland* (1850); one voice; style token ``folk``. music21 parses ABC slowly
  (about 0.1 s a tune), which is why the default is a subset.
* ``folk-tunes-all``: every Essen and O'Neill tune (about 10,000; the first parse takes long).
* ``bach-and-folk``: both default corpora together (style tokens tell them apart).
* ``midi:PATH``: your own MIDI files (a folder or one file), quantized to the tick grid.

A piece that fails to parse or to fit the tokenization is skipped and reported by name and
reason (:class:`MusicCorpusReport`); nothing is dropped silently. Parsed corpora are cached as
JSON under ``$AIGC_CACHE_DIR`` (default ``~/.cache/aigc``) keyed by the music21 version; music21's
own pickle cache is never used (:func:`parse_score`).

Splits are fixed: a piece goes to ``test`` / ``val`` / ``train`` by the SHA-256 of its name
(first 8 hex digits modulo 20: 0 -> test, 1 -> val, else train), as for text corpora.

**Event tokenization** (version 1). Time is counted in ticks of a twelfth of a quarter note
(:data:`TICKS_PER_QUARTER`), which holds sixteenths (3) and eighth-note triplets (4). A pickup
is shifted so that bar lines fall at multiples of the bar length. A piece is::

    style:chorale key:D_major meter:4/4          header: the conditions
    bar pos:0 pitch:62 dur:12 voice:1 pitch:57 dur:12 ... pos:12 ...   one bar
    bar ...                                      (an empty bar is a bare ``bar``)

* ``bar`` starts every bar (bar ``k`` spans ticks ``[k L, (k+1) L)``, ``L`` from the meter);
* ``pos:P`` is the onset of the notes that follow, in ticks from the start of the bar;
* ``voice:V`` (1..3) switches voice; the voice is 0 after every ``pos``, so a tune never
  needs a voice token; chorales use 0..3 for S, A, T, B;
* ``pitch:N`` is the MIDI note number, always followed by ``dur:D`` (ticks, 1..192).

Order is canonical: positions increase within a bar; at one position voices increase; within
a voice pitches increase. So a piece has exactly one token sequence, :func:`piece_to_tokens`
and :func:`tokens_to_piece` are inverse, and :class:`Grammar` says which tokens may come next
(the samplers use it to keep every generated sequence decodable, and each voice to one note at
a time: no voice starts a note while its previous one sounds). In a training stream each
piece is preceded by ``<eos>`` (id 0), like documents in a text stream.

MIDI files (:func:`write_midi`, :func:`read_midi`) store each voice on its own track and
channel, the key and meter as key- and time-signature meta events, and the style as a text
event, at 480 MIDI ticks per quarter; so ``tokens -> MIDI -> tokens`` is the identity
(``tests/test_music_data.py`` shows it on the corpus).
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from aigc.data.text import hash_split
from aigc.errors import DataError

SPLITS = ("train", "val", "test")
TICKS_PER_QUARTER = 12
MIDI_TICKS_PER_QUARTER = 480
MAX_DURATION = 192  # ticks (four whole notes)
MAX_VOICES = 4
STYLES = ("chorale", "folk")
MODES = ("major", "minor")
TONIC_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Meters with bars of at most 96 ticks (two whole notes); others are reported and skipped.
METERS = ((2, 4), (3, 4), (4, 4), (5, 4), (6, 4), (2, 2), (3, 2), (4, 2),
          (2, 8), (3, 8), (4, 8), (5, 8), (6, 8), (9, 8), (12, 8))
MAX_BAR = max(n * 4 * TICKS_PER_QUARTER // d for n, d in METERS)
TOKENIZATION_VERSION = 1
CACHE_VERSION = 2  # bump when what the cache holds changes (names, skipping rules)

CORPORA = {
    "bach-chorales": "Bach chorales, 4 voices (music21 corpus, Riemenschneider list)",
    "folk-tunes": "German folk songs (Essen subset) and 100 Irish tunes (O'Neill), 1 voice",
    "folk-tunes-all": "every Essen and O'Neill tune in music21 (slow first parse)",
    "bach-and-folk": "bach-chorales and folk-tunes together",
    "midi:PATH": "your MIDI files (a folder of .mid, or one file)",
}
_ESSEN_SUBSET = ("altdeu10", "altdeu20", "kinder0", "erk5", "ballad10")
_ONEILL_SUBSET = ("0001-0050", "0051-0100")


# ------------------------------------------------------------------------------ pieces


@dataclass(frozen=True, order=True)
class Note:
    """One note; ``onset`` counts ticks from the start of bar 0 (see the module docstring)."""

    onset: int
    voice: int
    pitch: int
    duration: int


@dataclass
class Piece:
    """A piece of music as the tokenization sees it: conditions plus canonical notes."""

    name: str
    style: str
    tonic: int  # pitch class 0..11 (0 = C)
    mode: str  # "major" or "minor"
    meter: tuple[int, int]
    notes: list[Note] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.notes = sorted(self.notes, key=lambda n: (n.onset, n.voice, n.pitch, n.duration))

    @property
    def bar_ticks(self) -> int:
        return meter_bar_ticks(self.meter)

    @property
    def key_name(self) -> str:
        return f"{TONIC_NAMES[self.tonic]} {self.mode}"

    @property
    def bars(self) -> int:
        return (max(n.onset for n in self.notes) // self.bar_ticks + 1) if self.notes else 0

    @property
    def voices(self) -> int:
        return max((n.voice for n in self.notes), default=-1) + 1

    def to_json(self) -> dict:
        return {"name": self.name, "style": self.style, "tonic": self.tonic, "mode": self.mode,
                "meter": list(self.meter),
                "notes": [[n.onset, n.voice, n.pitch, n.duration] for n in self.notes]}

    @classmethod
    def from_json(cls, d: dict) -> Piece:
        return cls(d["name"], d["style"], d["tonic"], d["mode"], tuple(d["meter"]),
                   [Note(*n) for n in d["notes"]])

    def transposed(self, semitones: int) -> Piece | None:
        """The piece moved by ``semitones`` (key too); ``None`` if a pitch leaves 0..127."""
        pitches = [n.pitch + semitones for n in self.notes]
        if pitches and (min(pitches) < 0 or max(pitches) > 127):
            return None
        return Piece(self.name, self.style, (self.tonic + semitones) % 12, self.mode, self.meter,
                     [Note(n.onset, n.voice, n.pitch + semitones, n.duration) for n in self.notes])

    def first_bars(self, bars: int) -> Piece:
        """The notes with onsets in the first ``bars`` bars (durations are kept)."""
        end = bars * self.bar_ticks
        return Piece(self.name, self.style, self.tonic, self.mode, self.meter,
                     [n for n in self.notes if n.onset < end])


def meter_bar_ticks(meter: tuple[int, int]) -> int:
    num, den = meter
    return num * 4 * TICKS_PER_QUARTER // den


def parse_key(text: str) -> tuple[int, str]:
    """``"D major"``, ``"f# minor"``, ``"Bb"`` (major), ``"Eb_minor"`` -> ``(tonic pc, mode)``."""
    parts = text.replace("_", " ").split()
    if not parts or len(parts) > 2:
        raise DataError(f"key {text!r}: expected a tonic and a mode, e.g. 'D major' or 'F# minor'")
    mode = parts[1].lower() if len(parts) == 2 else "major"
    if mode not in MODES:
        raise DataError(f"key {text!r}: mode must be major or minor, got {mode!r}")
    name = parts[0]
    letters = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
    if name[0].lower() not in letters or any(ch not in "#b-" for ch in name[1:]):
        raise DataError(f"key {text!r}: tonic {name!r} is not a note name like C, F#, Bb")
    pc = letters[name[0].lower()] + name[1:].count("#") - name[1:].count("b") - name[1:].count("-")
    return pc % 12, mode


def parse_meter(text: str) -> tuple[int, int]:
    try:
        num, den = (int(x) for x in text.split("/"))
    except ValueError:
        raise DataError(f"meter {text!r}: expected N/D like 3/4") from None
    if (num, den) not in METERS:
        raise DataError(f"meter {text!r} is not supported; supported: "
                        f"{', '.join(f'{n}/{d}' for n, d in METERS)}")
    return num, den


# ------------------------------------------------------------------------------ vocabulary


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


# ----------------------------------------------------------------------------------- MIDI


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, int, bytes]]) -> bytes:
    """A MTrk chunk from ``(abs_tick, order, event bytes)``; sorted by time, then order."""
    data, now = b"", 0
    for tick, _, ev in sorted(events, key=lambda e: (e[0], e[1])):
        data += _varlen(tick - now) + ev
        now = tick
    data += _varlen(0) + b"\xff\x2f\x00"  # end of track
    return b"MTrk" + struct.pack(">I", len(data)) + data


def _meta(kind: int, payload: bytes) -> bytes:
    return bytes([0xFF, kind]) + _varlen(len(payload)) + payload


_STYLE_PREFIX = "aigc-style:"


def midi_bytes(piece: Piece, tempo_qpm: float = 90.0) -> bytes:
    """A format-1 Standard MIDI File: track 0 holds tempo, meter, key and style; track ``1 + v``
    holds voice ``v`` on channel ``v`` (piano, program 0)."""
    scale = MIDI_TICKS_PER_QUARTER // TICKS_PER_QUARTER
    sharps = {0: 0, 7: 1, 2: 2, 9: 3, 4: 4, 11: 5, 6: 6, 1: -5, 8: -4, 3: -3, 10: -2, 5: -1}
    major_pc = piece.tonic if piece.mode == "major" else (piece.tonic + 3) % 12
    num, den = piece.meter
    conductor = [
        (0, 0, _meta(0x51, int(60_000_000 / tempo_qpm).to_bytes(3, "big"))),
        (0, 1, _meta(0x58, bytes([num, den.bit_length() - 1, 24, 8]))),
        (0, 2, _meta(0x59, struct.pack(">bB", sharps[major_pc], piece.mode == "minor"))),
        (0, 3, _meta(0x01, (_STYLE_PREFIX + piece.style).encode("ascii"))),
        (0, 4, _meta(0x03, piece.name.encode("utf-8")[:120])),
    ]
    tracks = [_track(conductor)]
    for v in range(max(piece.voices, 1)):
        events = [(0, 0, bytes([0xC0 | v, 0]))]
        for n in piece.notes:
            if n.voice == v:
                # Note-offs sort before note-ons at the same tick (order 0 < 1).
                events.append((n.onset * scale, 1, bytes([0x90 | v, n.pitch, 80])))
                events.append(((n.onset + n.duration) * scale, 0, bytes([0x80 | v, n.pitch, 0])))
        tracks.append(_track(events))
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), MIDI_TICKS_PER_QUARTER)
    return header + b"".join(tracks)


def write_midi(piece: Piece, path: str | Path, tempo_qpm: float = 90.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(midi_bytes(piece, tempo_qpm))
    return path


@dataclass
class MidiNotes:
    """What :func:`read_midi` found: notes in MIDI ticks plus the meta events we use."""

    ticks_per_quarter: int
    notes: list[tuple[int, int, int, int]]  # (onset, channel, pitch, duration) in MIDI ticks
    meter: tuple[int, int] | None = None
    key: tuple[int, str] | None = None  # (tonic pc, mode)
    style: str | None = None
    name: str | None = None


def read_midi(path: str | Path) -> MidiNotes:
    """Parse a Standard MIDI File (format 0 or 1). Notes keep their channel; note-ons with
    velocity 0 are note-offs; each note-off closes the earliest open note of its pitch."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != b"MThd":
        raise DataError(f"{path} is not a MIDI file (no MThd header)")
    _, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if division & 0x8000:
        raise DataError(f"{path}: SMPTE time division is not supported")
    out = MidiNotes(division, [])
    i = 8 + struct.unpack(">I", data[4:8])[0]
    for _ in range(ntracks):
        if data[i : i + 4] != b"MTrk":
            raise DataError(f"{path}: expected a MTrk chunk at byte {i}")
        (length,) = struct.unpack(">I", data[i + 4 : i + 8])
        _read_track(data[i + 8 : i + 8 + length], out, path)
        i += 8 + length
    out.notes.sort()
    return out


def _read_track(t: bytes, out: MidiNotes, path: Path) -> None:
    j, now, status = 0, 0, 0
    open_notes: dict[tuple[int, int], list[int]] = {}

    def varlen() -> int:
        nonlocal j
        value = 0
        while True:
            b = t[j]
            j += 1
            value = (value << 7) | (b & 0x7F)
            if not b & 0x80:
                return value

    while j < len(t):
        now += varlen()
        if t[j] & 0x80:
            status = t[j]
            j += 1
        if status == 0xFF:
            kind = t[j]
            j += 1
            n = varlen()
            payload = t[j : j + n]
            j += n
            if kind == 0x58 and out.meter is None:
                out.meter = (payload[0], 2 ** payload[1])
            elif kind == 0x59 and out.key is None:
                sf, minor = struct.unpack(">bB", payload[:2])
                major_pc = (7 * sf) % 12
                out.key = ((major_pc + 9) % 12, "minor") if minor else (major_pc, "major")
            elif kind == 0x01 and payload.startswith(_STYLE_PREFIX.encode()):
                out.style = payload[len(_STYLE_PREFIX):].decode("ascii", "replace")
            elif kind == 0x03 and out.name is None:
                out.name = payload.decode("utf-8", "replace")
            elif kind == 0x2F:
                break
        elif status in (0xF0, 0xF7):
            j += varlen()
        else:
            kind, ch = status & 0xF0, status & 0x0F
            nbytes = 1 if kind in (0xC0, 0xD0) else 2
            args = t[j : j + nbytes]
            j += nbytes
            if kind == 0x90 and args[1] > 0:
                open_notes.setdefault((ch, args[0]), []).append(now)
            elif kind == 0x80 or (kind == 0x90 and args[1] == 0):
                starts = open_notes.get((ch, args[0]))
                if starts:
                    start = starts.pop(0)
                    if now > start:
                        out.notes.append((start, ch, args[0], now - start))
    if any(open_notes.values()):
        raise DataError(f"{path}: notes without a note-off")


def piece_from_midi(path: str | Path, *, style: str | None = None, key: str | None = None,
                    meter: str | None = None, quantize: bool = False) -> Piece:
    """A :class:`Piece` from a MIDI file. Key, meter and style come from the file's meta events
    (our own files carry all three) or from the arguments, which win.

    Voices are MIDI channels (at most 4, numbered in order of appearance). Times must fall on
    the tick grid unless ``quantize`` is true, in which case they are rounded to it.
    """
    m = read_midi(path)
    if not m.notes:
        raise DataError(f"{path} holds no notes")
    grid = Fraction(m.ticks_per_quarter, TICKS_PER_QUARTER)
    channels = sorted({c for _, c, _, _ in m.notes})
    if len(channels) > MAX_VOICES:
        raise DataError(f"{path} uses {len(channels)} MIDI channels; at most {MAX_VOICES} voices")
    notes: dict[tuple[int, int, int], int] = {}  # (onset, voice, pitch) -> duration
    for onset, ch, pitch, dur in m.notes:
        t0, t1 = Fraction(onset) / grid, Fraction(onset + dur) / grid
        if not quantize and (t0.denominator != 1 or t1.denominator != 1):
            raise DataError(f"{path}: a note at MIDI tick {onset} is off the grid of "
                            f"{TICKS_PER_QUARTER} ticks per quarter; pass quantize=True")
        a, b = round(t0), round(t1)
        if not quantize and b - a > MAX_DURATION:
            raise DataError(f"{path}: a note of {b - a} ticks at MIDI tick {onset} is longer "
                            f"than {MAX_DURATION}")
        # Quantizing: at least one tick, at most MAX_DURATION; notes that land on the same
        # onset and pitch in one voice merge into the longest.
        key_ = (a, channels.index(ch), pitch)
        notes[key_] = max(notes.get(key_, 0), min(max(b - a, 1), MAX_DURATION))
    notes = [Note(a, v, p, d) for (a, v, p), d in notes.items()]
    tonic, mode = parse_key(key) if key else (m.key or (None, None))
    if tonic is None:
        tonic, mode = _estimate_key(notes)
    meter_t = parse_meter(meter) if meter else (m.meter or (4, 4))
    if meter_t not in METERS:
        raise DataError(f"{path}: meter {meter_t[0]}/{meter_t[1]} is not supported")
    return Piece(m.name or Path(path).stem, style or m.style or "folk", tonic, mode, meter_t, notes)


def _estimate_key(notes: list[Note]) -> tuple[int, str]:
    """Krumhansl-Kessler key profiles correlated with the duration-weighted pitch classes."""
    major = torch.tensor([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
    minor = torch.tensor([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
    hist = torch.zeros(12, dtype=torch.float64)
    for n in notes:
        hist[n.pitch % 12] += n.duration
    best = (-2.0, 0, "major")
    for mode, prof in (("major", major), ("minor", minor)):
        for t in range(12):
            r = torch.corrcoef(torch.stack([hist, prof.roll(t).double()]))[0, 1].item()
            if r > best[0]:
                best = (r, t, mode)
    return best[1], best[2]


# -------------------------------------------------------------------------- music21 input


class SkipPiece(Exception):
    """A corpus piece that cannot be tokenized; the message is the reason."""


def parse_score(path: str | Path, *, from_corpus: bool = False):
    """Parse a score with music21 from its source, never through music21's pickle cache.

    By default music21 stores every parsed file as a pickle in a shared temporary folder
    (``/tmp/music21``) and, next time, loads that pickle instead of the file: anyone who can
    write there could make aigc unpickle their data. ``forceSource=True`` makes music21 neither
    read nor write those pickles (``tests/test_bad_input.py`` checks both).

    Args:
        path: a file, or with ``from_corpus`` a path inside music21's corpus
            (``bach/bwv66.6.mxl``).
        from_corpus: look ``path`` up in music21's corpus.
    """
    if from_corpus:
        from music21 import corpus

        return corpus.parse(str(path), forceSource=True)
    from music21 import converter

    return converter.parse(str(path), forceSource=True)


def _ticks(ql) -> int:
    t = Fraction(ql).limit_denominator(1 << 16) * TICKS_PER_QUARTER
    if t.denominator != 1:
        raise SkipPiece(f"a time of {float(ql):g} quarters is off the 1/{TICKS_PER_QUARTER} grid")
    return int(t)


def piece_from_score(score, name: str, style: str) -> tuple[Piece, int]:
    """Tokenizable :class:`Piece` from a music21 score; returns ``(piece, grace notes dropped)``.

    Raises :class:`SkipPiece` with the reason when the score does not fit (meter changes, an
    unsupported meter, off-grid times, more than four voices, overlapping unisons in a voice).
    """
    from music21 import chord, harmony, key, meter

    parts = list(score.parts) if hasattr(score, "parts") else [score]
    if style == "chorale":
        named = {}
        for p in parts:
            label = (p.partName or p.id or "").lower()
            for voice in ("soprano", "alto", "tenor", "bass"):
                if voice in label and voice not in named:
                    named[voice] = p
        if len(named) == 4:
            parts = [named[v] for v in ("soprano", "alto", "tenor", "bass")]
        elif len(parts) != 4:
            raise SkipPiece(f"{len(parts)} parts without S/A/T/B names")
    elif len(parts) > MAX_VOICES:
        raise SkipPiece(f"{len(parts)} parts (at most {MAX_VOICES})")
    sigs = {ts.ratioString for ts in score.recurse().getElementsByClass(meter.TimeSignature)}
    if len(sigs) != 1:
        raise SkipPiece("no time signature" if not sigs else f"meter changes ({', '.join(sorted(sigs))})")
    num, den = (int(x) for x in sigs.pop().split("/"))
    if (num, den) not in METERS:
        raise SkipPiece(f"meter {num}/{den} is not supported")
    bar = meter_bar_ticks((num, den))
    keys = list(score.recurse().getElementsByClass(key.Key))
    k = keys[0] if keys and keys[0].mode in MODES else score.analyze("key")
    if k.mode not in MODES:
        raise SkipPiece(f"mode {k.mode!r}")
    measures = list(parts[0].getElementsByClass("Measure"))
    shift = 0
    if measures:
        m0 = measures[0]
        pad = _ticks(m0.paddingLeft or 0)
        if pad:
            shift = pad
        elif len(measures) > 1 and _ticks(m0.duration.quarterLength) < bar:
            shift = bar - _ticks(m0.duration.quarterLength)
    notes: set[Note] = set()
    graces = 0
    for v, part in enumerate(parts):
        open_until: dict[int, int] = {}
        for el in part.flatten().stripTies().notes:
            if isinstance(el, harmony.ChordSymbol):
                continue
            if el.duration.isGrace or el.quarterLength == 0:
                graces += 1
                continue
            onset, dur = _ticks(el.offset) + shift, _ticks(el.quarterLength)
            if dur > MAX_DURATION:
                raise SkipPiece(f"a note of {dur} ticks (longest allowed {MAX_DURATION})")
            pitches = el.pitches if isinstance(el, chord.Chord) else [el.pitch]
            for p in pitches:
                if open_until.get(p.midi, -1) > onset:
                    raise SkipPiece(f"overlapping {p.nameWithOctave} in voice {v}")
                open_until[p.midi] = onset + dur
                notes.add(Note(onset, v, p.midi, dur))
    if not notes:
        raise SkipPiece("no notes")
    return Piece(name, style, k.tonic.pitchClass, k.mode, (num, den), sorted(notes)), graces


# ------------------------------------------------------------------------------- corpora


@dataclass
class MusicCorpusReport:
    """What became of each source piece: kept, or skipped with a reason."""

    source: str
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (piece name, reason)
    grace_notes_dropped: int = 0

    def lines(self) -> list[str]:
        out = [f"parsing {self.source}: kept {self.kept} pieces, skipped {len(self.skipped)}, "
               f"grace notes dropped {self.grace_notes_dropped}"]
        out += [f"  skipped {name}: {why}" for name, why in self.skipped[:30]]
        if len(self.skipped) > 30:
            out.append(f"  ... and {len(self.skipped) - 30} more")
        return out

    def to_json(self) -> dict:
        return {"source": self.source, "kept": self.kept, "skipped": self.skipped,
                "grace_notes_dropped": self.grace_notes_dropped}


@dataclass
class MusicCorpus:
    name: str
    pieces: dict[str, list[Piece]]  # per split
    report: MusicCorpusReport

    def split(self, split: str) -> list[Piece]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return self.pieces[split]


def cache_dir() -> Path:
    return Path(os.environ.get("AIGC_CACHE_DIR") or Path.home() / ".cache" / "aigc") / "music"


def cache_path(name: str) -> Path:
    """The parse cache of a music21 corpus (keyed by music21's version and the tokenization)."""
    from importlib.metadata import version

    return cache_dir() / (f"{name}-music21-{version('music21')}-tok{TOKENIZATION_VERSION}"
                          f"-v{CACHE_VERSION}.json")


def cached_split_counts(name: str) -> dict[str, int] | None:
    """Pieces per split of a named corpus read from its parse cache, without parsing anything;
    ``None`` when it has not been parsed yet (or is not a cached corpus, e.g. ``midi:PATH``).

    Example:
        >>> cached_split_counts("bach-chorales")   # doctest: +SKIP
        {'train': 310, 'val': 17, 'test': 17}
    """
    if name == "bach-and-folk":
        parts = [cached_split_counts(n) for n in ("bach-chorales", "folk-tunes")]
        if any(p is None for p in parts):
            return None
        return {s: sum(p[s] for p in parts) for s in SPLITS}
    if name not in CORPORA or name.startswith("midi:"):
        return None
    path = cache_path(name)
    if not path.is_file():
        return None
    counts = _cache_counts(str(path), path.stat().st_mtime_ns)
    return dict(counts) if counts is not None else None


@functools.lru_cache(maxsize=16)
def _cache_counts(path: str, mtime_ns: int) -> tuple[tuple[str, int], ...] | None:
    try:
        names = [p["name"] for p in json.loads(Path(path).read_text(encoding="utf-8"))["pieces"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache is re-made by the next parse
    counts = {s: 0 for s in SPLITS}
    for n in names:
        counts[hash_split(n)] += 1
    return tuple(counts.items())


def _sources(name: str) -> list[tuple[str, str]]:
    """``(music21 corpus path, style)`` of each source file of a corpus."""
    from music21 import corpus

    if name == "bach-chorales":
        files = sorted(set(corpus.chorales.Iterator(returnType="filename")))
        return [(f, "chorale") for f in files]
    if name == "folk-tunes":
        return ([(f"essenFolksong/{f}.abc", "folk") for f in _ESSEN_SUBSET]
                + [(f"oneills1850/{f}.abc", "folk") for f in _ONEILL_SUBSET])
    if name == "folk-tunes-all":
        root = Path(corpus.__file__).parent
        return [(f"{d}/{p.name}", "folk") for d in ("essenFolksong", "oneills1850")
                for p in sorted((root / d).glob("*.abc")) if not p.stem.startswith("test")]
    raise DataError(f"unknown music corpus {name!r}; known: {', '.join(CORPORA)}")


def _parse_source(path: str, style: str, report: MusicCorpusReport) -> list[Piece]:
    try:
        parsed = parse_score(path, from_corpus=True)
    except Exception as exc:  # music21 raises many exception types for bad files
        report.skipped.append((path, f"music21 could not parse it: {type(exc).__name__}: {exc}"[:200]))
        return []
    scores = list(parsed.scores) if hasattr(parsed, "scores") and parsed.scores else [parsed]
    pieces = []
    for i, score in enumerate(scores):
        number = getattr(score.metadata, "number", None) if score.metadata else None
        stem = path.rsplit(".", 1)[0] if path.endswith((".abc", ".mxl", ".xml", ".krn")) else path
        name = stem + (f"#{number or i + 1}" if len(scores) > 1 else "")
        try:
            piece, graces = piece_from_score(score, name, style)
        except SkipPiece as exc:
            report.skipped.append((name, str(exc)))
            continue
        except Exception as exc:  # a malformed score in the corpus: report it, go on
            report.skipped.append((name, f"{type(exc).__name__}: {exc}"[:200]))
            continue
        report.grace_notes_dropped += graces
        pieces.append(piece)
    return pieces


def _load_collection(name: str, progress: bool = True) -> tuple[list[Piece], MusicCorpusReport]:
    import music21

    path = cache_path(name)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        report = MusicCorpusReport(**{**data["report"],
                                      "skipped": [tuple(s) for s in data["report"]["skipped"]]})
        return [Piece.from_json(p) for p in data["pieces"]], report
    from tqdm.auto import tqdm

    sources = _sources(name)
    report = MusicCorpusReport(f"music21 {music21.__version__} corpus: {name}")
    pieces: list[Piece] = []
    seen: set[str] = set()
    for src, style in tqdm(sources, desc=f"parse {name}", disable=not progress, unit="file"):
        for piece in _parse_source(src, style, report):
            if piece.name in seen:
                report.skipped.append((piece.name, "duplicate name"))
                continue
            seen.add(piece.name)
            pieces.append(piece)
    report.kept = len(pieces)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"report": report.to_json(),
                               "pieces": [p.to_json() for p in pieces]}), encoding="utf-8")
    os.replace(tmp, path)
    return pieces, report


_LOADED: dict[str, MusicCorpus] = {}


def load_music_corpus(name: str, progress: bool = True) -> MusicCorpus:
    """A named music corpus (see :data:`CORPORA`), split by piece name.

    Example:
        >>> corpus = load_music_corpus("bach-chorales")   # doctest: +SKIP
        >>> corpus.split("train")[0].voices
        4
    """
    if name in _LOADED:
        return _LOADED[name]
    if name.startswith("midi:"):
        return _load_midi_folder(name)  # not cached: a user's files may change
    if name == "bach-and-folk":
        a, b = load_music_corpus("bach-chorales", progress), load_music_corpus("folk-tunes", progress)
        report = MusicCorpusReport(f"{a.report.source} + {b.report.source}", a.report.kept + b.report.kept,
                                   a.report.skipped + b.report.skipped,
                                   a.report.grace_notes_dropped + b.report.grace_notes_dropped)
        corpus = MusicCorpus(name, {s: a.pieces[s] + b.pieces[s] for s in SPLITS}, report)
    else:
        pieces, report = _load_collection(name, progress)
        splits: dict[str, list[Piece]] = {s: [] for s in SPLITS}
        for p in pieces:
            splits[hash_split(p.name)].append(p)
        corpus = MusicCorpus(name, splits, report)
    _LOADED[name] = corpus
    return corpus


def _load_midi_folder(name: str) -> MusicCorpus:
    """``midi:PATH``: every ``.mid``/``.midi`` file under a folder (or one file), quantized to
    the tick grid; key, meter and style from the files' meta events where present."""
    root = Path(name[5:]).expanduser()
    if not root.exists():
        raise DataError(f"{name}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".mid", ".midi")) \
        if root.is_dir() else [root]
    if not files:
        raise DataError(f"{name}: the folder holds no .mid files")
    report = MusicCorpusReport(str(root))
    splits: dict[str, list[Piece]] = {s: [] for s in SPLITS}
    for f in files:
        try:
            piece = piece_from_midi(f, quantize=True)
            piece.name = str(f.relative_to(root)) if root.is_dir() else f.name
            piece_to_tokens(piece)  # in range?
        except (DataError, IndexError, struct.error) as exc:
            report.skipped.append((str(f), str(exc) or type(exc).__name__))
            continue
        splits[hash_split(piece.name)].append(piece)
        report.kept += 1
    return MusicCorpus(name, splits, report)


# ------------------------------------------------------------------------- training data


def piece_ids(piece: Piece, vocab: MusicVocab = VOCAB) -> tuple[list[int], list[int]]:
    """``(ids, bar_starts)``: ``<eos>`` + tokens + ``<eos>``, and the index of every ``bar``."""
    ids = [vocab.eos_id] + vocab.encode(piece_to_tokens(piece)) + [vocab.eos_id]
    return ids, [i for i, t in enumerate(ids) if t == vocab.bar_id]


HEADER_LEN = 4  # <eos> style key meter


class MusicWindows:
    """Training windows that always begin with their piece's header.

    Example ``(p, b)`` is ``<eos> style key meter`` followed by piece ``p`` from its bar ``b``,
    cut to ``context_length + 1`` tokens; a piece that ends early is padded with ``<eos>`` and
    the padding is left out of the loss (``loss_mask``). So the conditions (key, meter, style)
    are in the context of every prediction, in training as in generation.
    """

    def __init__(self, pieces: list[Piece], context_length: int, *, bar_stride: int = 1,
                 transpositions: tuple[int, ...] = (0,), vocab: MusicVocab = VOCAB,
                 where: str = "music"):
        self.T = context_length
        self.docs: list[list[int]] = []
        self.examples: list[tuple[int, int]] = []  # (doc, start index)
        for piece in pieces:
            for k in transpositions:
                moved = piece.transposed(k)
                if moved is None or not moved.notes:
                    continue
                ids, bars = piece_ids(moved, vocab)
                self.docs.append(ids)
                self.examples += [(len(self.docs) - 1, b) for b in bars[::bar_stride]]
        if not self.examples:
            raise DataError(f"{where}: no pieces to make training windows from")

    def __len__(self) -> int:
        return len(self.examples)

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        B, T = len(indices), self.T
        tokens = torch.zeros(B, T + 1, dtype=torch.long)  # <eos> = 0 pads
        mask = torch.zeros(B, T, dtype=torch.bool)
        for row, i in enumerate(indices.tolist()):
            d, start = self.examples[i]
            doc = self.docs[d]
            seq = (doc[:HEADER_LEN] + doc[start:])[: T + 1]
            tokens[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq) - 1] = True
        return {"tokens": tokens, "loss_mask": mask}


def token_stream(pieces: list[Piece], transpositions: tuple[int, ...] = (0,),
                 vocab: MusicVocab = VOCAB) -> list[int]:
    """``<eos> piece <eos> piece ... <eos>`` as one id list (for n-gram baselines)."""
    out: list[int] = []
    for piece in pieces:
        for k in transpositions:
            moved = piece.transposed(k)
            if moved is not None and moved.notes:
                out += piece_ids(moved, vocab)[0][:-1]
    return out + [vocab.eos_id]


TRANSPOSITIONS = tuple(range(-5, 7))  # every key once: a fourth down to a tritone up
