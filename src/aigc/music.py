"""Rendering symbolic music for people: WAV audio, a piano-roll PNG, MusicXML and a score.

* :func:`write_wav`: FluidSynth with a General MIDI SoundFont when both are installed (Debian
  ``fluidsynth`` + ``fluid-soundfont-gm``), else a small built-in additive synthesiser (numpy +
  the stdlib ``wave`` module): a few harmonics per note under an attack/decay/release envelope.
* :func:`save_piano_roll`: one row per semitone, one column per tick, a colour per voice, bar
  lines, and the piece's conditions in the title; the PNG carries a provenance record.
* :func:`write_musicxml`: through music21 (measures, ties and rests made by music21).
* :func:`write_score_png`: an engraved score through Debian ``lilypond`` when it is installed.

:func:`save_piece` writes whichever of these a file name asks for (``.mid``, ``.wav``, ``.png``,
``.musicxml``/``.xml``; ``NAME.score.png`` is the engraved score, any other ``.png`` the piano
roll).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from aigc.data.music import TICKS_PER_QUARTER, Piece, write_midi
from aigc.errors import AigcError

SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/default-GM.sf2"))
VOICE_COLOURS = ((200, 40, 40), (230, 140, 20), (40, 150, 60), (40, 80, 200))
ROLL_LEFT_PX = 4  # piano roll: x of tick 0 (a player draws its playhead from here)


# --------------------------------------------------------------------------------- audio


def synthesize(piece: Piece, *, tempo_qpm: float = 90.0, sample_rate: int = 22050) -> np.ndarray:
    """Mono float32 audio in [-1, 1] from the built-in synthesiser.

    Each note: harmonics ``k = 1..4`` with amplitudes ``1 / k^1.5``, a 10 ms linear attack, an
    exponential decay (time constant 0.8 s) while held and a 60 ms release after its end.
    """
    seconds_per_tick = 60.0 / tempo_qpm / TICKS_PER_QUARTER
    release = 0.06
    end = max((n.onset + n.duration for n in piece.notes), default=0) * seconds_per_tick
    out = np.zeros(int((end + release + 0.2) * sample_rate) + 1)
    for n in piece.notes:
        start = int(n.onset * seconds_per_tick * sample_rate)
        held = n.duration * seconds_per_tick
        t = np.arange(int((held + release) * sample_rate)) / sample_rate
        freq = 440.0 * 2 ** ((n.pitch - 69) / 12)
        wave_ = sum(np.sin(2 * np.pi * k * freq * t) / k**1.5 for k in range(1, 5)
                    if k * freq < sample_rate / 2)
        env = np.minimum(t / 0.01, 1.0) * np.exp(-t / 0.8)
        env = np.where(t > held, env * np.clip(1 - (t - held) / release, 0, 1), env)
        out[start : start + len(t)] += 0.2 * wave_ * env
    peak = np.abs(out).max()
    return (out / peak * 0.9 if peak > 0 else out).astype(np.float32)


def fluidsynth_available() -> Path | None:
    """The SoundFont to use when the ``fluidsynth`` program and a GM SoundFont are installed."""
    if shutil.which("fluidsynth") is None:
        return None
    return next((sf for sf in SOUNDFONTS if sf.is_file()), None)


def write_wav(piece: Piece, path: str | Path, *, tempo_qpm: float = 90.0,
              synth: str = "auto", sample_rate: int = 22050) -> tuple[Path, str]:
    """Write 16-bit PCM WAV; returns ``(path, "fluidsynth" or "built-in")``.

    ``synth`` is ``"auto"`` (FluidSynth when available), ``"fluidsynth"`` or ``"builtin"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if synth not in ("auto", "fluidsynth", "builtin"):
        raise AigcError(f"synth must be auto, fluidsynth or builtin, got {synth!r}")
    soundfont = fluidsynth_available() if synth != "builtin" else None
    if synth == "fluidsynth" and soundfont is None:
        raise AigcError("--synth fluidsynth needs the Debian packages fluidsynth and "
                        "fluid-soundfont-gm (apt-get install fluidsynth fluid-soundfont-gm)")
    if soundfont is not None:
        with tempfile.TemporaryDirectory() as tmp:
            mid = write_midi(piece, Path(tmp) / "piece.mid", tempo_qpm)
            subprocess.run(["fluidsynth", "-ni", "-q", "-F", str(path), "-r", str(sample_rate),
                            str(soundfont), str(mid)], check=True, capture_output=True)
        return path, "fluidsynth"
    path.write_bytes(wav_bytes(piece, tempo_qpm=tempo_qpm, sample_rate=sample_rate))
    return path, "built-in"


def wav_bytes(piece: Piece, *, tempo_qpm: float = 90.0, sample_rate: int = 22050) -> bytes:
    """16-bit mono PCM WAV from the built-in synthesiser, as bytes (the same for the same
    piece: the studio stores it under its content hash)."""
    audio = synthesize(piece, tempo_qpm=tempo_qpm, sample_rate=sample_rate)
    pcm = (audio * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


# --------------------------------------------------------------------------------- pictures


def piano_roll(piece: Piece, *, px_per_tick: int = 3, px_per_pitch: int = 6) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 piano roll: time to the right, pitch upwards, voices coloured."""
    from PIL import Image, ImageDraw

    pitches = [n.pitch for n in piece.notes] or [60]
    lo, hi = min(pitches) - 2, max(pitches) + 2
    bars = max(piece.bars, 1)
    top, left = 18, ROLL_LEFT_PX
    width = left * 2 + bars * piece.bar_ticks * px_per_tick
    height = top + (hi - lo + 1) * px_per_pitch + 4
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)

    def y_of(p: int) -> int:
        return top + (hi - p) * px_per_pitch

    for p in range(lo, hi + 1):
        if p % 12 in (1, 3, 6, 8, 10):  # black keys: a light band
            draw.rectangle([left, y_of(p), width - left, y_of(p) + px_per_pitch - 1], fill=(243, 243, 243))
        if p % 12 == 0:  # every C
            draw.line([left, y_of(p) + px_per_pitch - 1, width - left, y_of(p) + px_per_pitch - 1],
                      fill=(200, 200, 220))
    for b in range(bars + 1):
        x = left + b * piece.bar_ticks * px_per_tick
        draw.line([x, top, x, height - 4], fill=(150, 150, 150))
    for n in piece.notes:
        x0 = left + n.onset * px_per_tick
        x1 = x0 + max(n.duration * px_per_tick - 2, 1)
        colour = VOICE_COLOURS[n.voice % len(VOICE_COLOURS)]
        draw.rectangle([x0, y_of(n.pitch) + 1, x1, y_of(n.pitch) + px_per_pitch - 1], fill=colour)
    title = f"{piece.style} | {piece.key_name} | {piece.meter[0]}/{piece.meter[1]} | {bars} bars"
    draw.text((left, 3), title, fill=(0, 0, 0))
    return np.asarray(img)


def save_piano_roll(piece: Piece, path: str | Path, record: dict | None = None) -> Path:
    from aigc.media import save_png

    return save_png(path, piano_roll(piece), record=record)


def to_music21(piece: Piece):
    """A music21 ``Score``: one part per voice, with the key and time signature."""
    from music21 import clef, key, meter, note, stream

    score = stream.Score()
    names = ("Soprano", "Alto", "Tenor", "Bass") if piece.voices == 4 else None
    end = max(piece.bars, 1) * piece.bar_ticks / TICKS_PER_QUARTER
    for v in range(max(piece.voices, 1)):
        part = stream.Part()
        part.partName = names[v] if names else f"Voice {v + 1}"
        mine = [n.pitch for n in piece.notes if n.voice == v] or [60]
        middle = sorted(mine)[len(mine) // 2]  # a clef for the voice's middle pitch
        part.insert(0, clef.TrebleClef() if middle >= 60 else clef.Treble8vbClef()
                    if middle >= 53 else clef.BassClef())
        part.insert(0, meter.TimeSignature(f"{piece.meter[0]}/{piece.meter[1]}"))
        part.insert(0, key.Key(piece.key_name.split()[0].replace("b", "-"), piece.key_name.split()[1]))
        for n in piece.notes:
            if n.voice == v:
                m = note.Note(n.pitch)
                m.quarterLength = n.duration / TICKS_PER_QUARTER
                part.insert(n.onset / TICKS_PER_QUARTER, m)
        # explicit rests from 0 (a pickup bar starts with rests) through every gap
        part.makeRests(refStreamOrTimeRange=[0.0, end], fillGaps=True, inPlace=True)
        score.insert(0, part)
    return score


def write_musicxml(piece: Piece, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_music21(piece).write("musicxml", fp=str(path))
    return path


def lilypond_available() -> bool:
    return shutil.which("lilypond") is not None


def write_score_png(piece: Piece, path: str | Path) -> Path:
    """An engraved score (PNG) through music21's LilyPond export and the ``lilypond`` program."""
    if not lilypond_available():
        raise AigcError("an engraved score needs the Debian package lilypond "
                        "(apt-get install lilypond); the piano roll needs nothing")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ly = Path(tmp) / "score.ly"
        to_music21(piece).write("lily", fp=str(ly))
        subprocess.run(["lilypond", "--png", "-dresolution=110", "-dno-point-and-click",
                        "-o", str(Path(tmp) / "score"), str(ly)], check=True, capture_output=True)
        pngs = sorted(Path(tmp).glob("score*.png"),
                      key=lambda f: int("".join(ch for ch in f.stem if ch.isdigit()) or 0))
        if not pngs:
            raise AigcError("lilypond ran but wrote no PNG")
        from PIL import Image, ImageOps

        crops = []
        for page_file in pngs:  # whole pages: crop each to its music, then stack them
            with Image.open(page_file) as page:
                page = page.convert("L")
                box = ImageOps.invert(page).getbbox()
                if box:
                    crops.append(page.crop((max(box[0] - 12, 0), max(box[1] - 12, 0),
                                            min(box[2] + 12, page.width), min(box[3] + 12, page.height))))
        if not crops:
            raise AigcError("lilypond wrote only empty pages")
        sheet = Image.new("L", (max(c.width for c in crops), sum(c.height for c in crops)), 255)
        y = 0
        for c in crops:
            sheet.paste(c, (0, y))
            y += c.height
        sheet.save(path)
    return path


def save_piece(piece: Piece, path: str | Path, *, record: dict | None = None,
               tempo_qpm: float = 90.0, synth: str = "auto") -> str:
    """Write ``piece`` in the format the suffix of ``path`` names; returns what was written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".mid", ".midi"):
        write_midi(piece, path, tempo_qpm)
        return f"MIDI {path}"
    if suffix == ".wav":
        _, how = write_wav(piece, path, tempo_qpm=tempo_qpm, synth=synth)
        return f"WAV {path} ({how} synthesiser)"
    if suffix == ".png" and path.name.lower().endswith(".score.png"):
        write_score_png(piece, path)
        return f"score {path} (lilypond)"
    if suffix == ".png":
        save_piano_roll(piece, path, record=record)
        return f"piano roll {path}"
    if suffix in (".musicxml", ".xml"):
        write_musicxml(piece, path)
        return f"MusicXML {path}"
    raise AigcError(f"{path}: unknown music format {suffix!r}; use .mid, .wav, .png or .musicxml")
