"""MIDI files: write a piece as a Standard MIDI File, read one back, and make a piece of any.

MIDI files (:func:`write_midi`, :func:`read_midi`) store each voice on its own track and
channel, the key and meter as key- and time-signature meta events, and the style as a text
event, at 480 MIDI ticks per quarter; so ``tokens -> MIDI -> tokens`` is the identity
(``tests/test_music_data.py`` shows it on the corpus).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from aigc.data.music.pieces import (
    MAX_DURATION,
    MAX_VOICES,
    METERS,
    TICKS_PER_QUARTER,
    Note,
    Piece,
    parse_key,
    parse_meter,
)
from aigc.errors import DataError

MIDI_TICKS_PER_QUARTER = 480


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
