"""Scores read with music21 (MusicXML, ABC, Humdrum, ...) as pieces, without its pickle cache."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from aigc.data.music.pieces import (
    MAX_DURATION,
    MAX_VOICES,
    METERS,
    MODES,
    TICKS_PER_QUARTER,
    Note,
    Piece,
    meter_bar_ticks,
)


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
