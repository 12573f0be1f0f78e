"""Pieces of music as the tokenization sees them: notes on a tick grid, a style, a key and a meter.

Time is counted in ticks of a twelfth of a quarter note (:data:`TICKS_PER_QUARTER`), which holds
sixteenths (3) and eighth-note triplets (4). A pickup is shifted so that bar lines fall at
multiples of the bar length. A :class:`Piece` keeps its notes in canonical order (onset, voice,
pitch, duration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aigc.errors import DataError

TICKS_PER_QUARTER = 12
MAX_DURATION = 192  # ticks (four whole notes)
MAX_VOICES = 4
STYLES = ("chorale", "folk")
MODES = ("major", "minor")
TONIC_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Meters with bars of at most 96 ticks (two whole notes); others are reported and skipped.
METERS = ((2, 4), (3, 4), (4, 4), (5, 4), (6, 4), (2, 2), (3, 2), (4, 2),
          (2, 8), (3, 8), (4, 8), (5, 8), (6, 8), (9, 8), (12, 8))
MAX_BAR = max(n * 4 * TICKS_PER_QUARTER // d for n, d in METERS)


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
