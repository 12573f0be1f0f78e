"""Music backends: :class:`MusicBackend` serves one music GPT checkpoint.

One piece per :class:`MusicSpec` (style, key, meter, bars, seed, temperature, tempo), composed
with the grammar-constrained sampler of :mod:`aigc.models.music_gpt` and rendered as MIDI, a WAV
from the built-in synthesiser (16-bit mono, 22.05 kHz: small, and the same bytes for the same
seed) and a piano-roll picture (:mod:`aigc.music`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aigc.media import png_bytes
from aigc.studio.backends.common import _metric_card, checkpoint_headers, log


@dataclass(frozen=True)
class MusicSpec:
    """One piece to compose (the conditions, the seed and how to sample and play it)."""

    style: str = "chorale"
    key: str = "C major"
    meter: str = "4/4"
    bars: int = 8
    seed: int = 0
    temperature: float = 1.0
    tempo: float = 90.0  # quarter notes per minute of the WAV and the MIDI file


@dataclass
class MusicPiece:
    """A composed piece as the studio stores it: MIDI, WAV and piano-roll PNG bytes."""

    midi: bytes
    wav: bytes
    roll: np.ndarray  # (H, W, 3) uint8 piano roll; PNG bytes are made with the record
    facts: dict[str, Any]  # notes, bars, key, meter, seconds, tokens, ... (for the record)


def quarters_per_bar(meter: str) -> float:
    """Quarter notes in one bar of ``"N/D"`` (6/8 -> 3.0); ``ValueError`` for a meter the
    tokenization does not know."""
    from aigc.data.music import TICKS_PER_QUARTER, meter_bar_ticks, parse_meter
    from aigc.errors import DataError

    try:
        return meter_bar_ticks(parse_meter(meter)) / TICKS_PER_QUARTER
    except DataError as exc:
        raise ValueError(str(exc)) from None


class MusicBackend:
    """Serves one music GPT checkpoint (:mod:`aigc.models.music_gpt`): grammar-constrained
    composing conditioned on style, key and meter, rendered with the built-in synthesiser
    (16-bit mono WAV at ``sample_rate``; the same seed gives the same bytes) and drawn as a
    piano roll. Thread-safety: called from the music worker thread only."""

    kind = "music"
    sample_rate = 22050
    px_per_tick = 2  # piano roll: 2 px per tick = 24 px per quarter note

    def __init__(self, name: str, model: torch.nn.Module, vocab, ckpt) -> None:
        self.name, self.model, self.vocab, self.ckpt = name, model, vocab, ckpt
        self.path = Path(ckpt.path)
        self.sha256 = ckpt.sha256
        self.family = ckpt.family
        self.card = _metric_card(self.path, self.sha256)

    def describe(self) -> dict[str, Any]:
        from aigc.data.music import METERS, MODES, STYLES, TONIC_NAMES

        return {
            "id": self.name, "kind": "music", "family": self.family, "sha256": self.sha256,
            "step": self.ckpt.step, "data": self.ckpt.meta.get("data"),
            "styles": list(STYLES), "keys": [f"{t} {m}" for m in MODES for t in TONIC_NAMES],
            "meters": [f"{n}/{d}" for n, d in METERS], "synth": "built-in",
            "sample_rate": self.sample_rate, "model_config": self.ckpt.model_config,
            "metric_card": self.card,
            "description": f"music GPT {self.path.name} trained on {self.ckpt.meta.get('data')} "
                           f"(step {self.ckpt.step})",
        }

    def check(self, spec: MusicSpec) -> None:
        """Raise ``ValueError`` naming a condition the tokenization cannot express."""
        from aigc.data.music import STYLES, parse_key
        from aigc.errors import DataError

        if spec.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {spec.style!r}")
        try:
            parse_key(spec.key)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        quarters_per_bar(spec.meter)

    @torch.no_grad()
    def compose(self, spec: MusicSpec) -> MusicPiece:
        """Compose one piece and render it (the caller makes the PNG, with its record)."""
        from aigc.data.music import TICKS_PER_QUARTER, midi_bytes
        from aigc.models.music_gpt import ComposeParams, compose
        from aigc.music import ROLL_LEFT_PX, piano_roll, wav_bytes

        comp = compose(self.model, ComposeParams(
            bars=spec.bars, style=spec.style, key=spec.key, meter=spec.meter,
            temperature=spec.temperature, seed=spec.seed), vocab=self.vocab)
        piece = comp.piece
        wav = wav_bytes(piece, tempo_qpm=spec.tempo, sample_rate=self.sample_rate)
        roll = piano_roll(piece, px_per_tick=self.px_per_tick)  # (H, W, 3) uint8
        ticks_per_second = spec.tempo / 60 * TICKS_PER_QUARTER
        facts = {
            "notes": len(piece.notes), "voices": piece.voices, "tokens": len(comp.tokens),
            "key": piece.key_name, "meter": f"{piece.meter[0]}/{piece.meter[1]}",
            "seconds": round((len(wav) - 44) / 2 / self.sample_rate, 3),
            # where the playhead of second t is: x = x0 + t * px_per_second, of width px
            "piano_roll": {"x0": ROLL_LEFT_PX, "px_per_second": self.px_per_tick * ticks_per_second,
                           "width": int(roll.shape[1]), "height": int(roll.shape[0])},
        }
        return MusicPiece(midi_bytes(piece, spec.tempo), wav, roll, facts)


def roll_png_bytes(roll: np.ndarray, record: dict[str, Any]) -> bytes:
    """A ``(H, W, 3)`` uint8 piano roll as PNG bytes with the provenance record embedded
    (:func:`aigc.media.png_bytes`)."""
    return png_bytes(roll, record)


def load_music_backends(paths: list[tuple[str, Path]]) -> tuple[dict[str, MusicBackend],
                                                                  dict[str, str]]:
    """The music GPT checkpoints among ``paths`` (found from their metadata, cheaply)."""
    from aigc.errors import AigcError

    backends: dict[str, MusicBackend] = {}
    skipped: dict[str, str] = {}
    for name, path, meta in checkpoint_headers(paths):
        if meta.get("family") != "music-gpt" and "music_vocab" not in (meta.get("meta") or ""):
            continue
        try:
            from aigc.models.music_gpt import load_music_model

            model, vocab, ckpt = load_music_model(path)
        except (AigcError, OSError, KeyError) as exc:
            skipped[name] = str(exc)
            continue
        backends[name] = MusicBackend(name, model.eval(), vocab, ckpt)
        log.info("studio: music model %s <- %s", name, ckpt.path)
    return backends, skipped
