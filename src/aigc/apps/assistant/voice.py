"""Speech in and out for the assistant, with established engines that install offline.

* **Synthesis** (text -> WAV bytes): Debian's ``espeak-ng`` (many languages, among them
  ``en-us``, ``en-gb`` and ``cmn`` for Mandarin Chinese) and ``flite`` (English only: ``slt``,
  ``kal``, ``awb``, ``rms``, ...), run as subprocesses without a shell. A voice is named
  ``ENGINE:VOICE``, e.g. ``espeak-ng:en-us`` or ``flite:slt``; :func:`list_voices` asks the
  engines which they have.
* **Recognition** (WAV bytes -> text): the PocketSphinx Python package (version 5), with the
  US-English acoustic model, dictionary and language model that ship inside its wheel.
  **There is no offline Chinese recognition model here**: PocketSphinx ships English only, so
  :meth:`Recognizer.transcribe` refuses ``language="zh"`` with an error that says so.
* **Input audio**: WAV files that Python's :mod:`wave` can decode (integer PCM, 8/16/24/32
  bit, any number of channels). They are mixed down to mono and resampled to 16 kHz (the
  acoustic model's rate) with a polyphase FIR resampler (:func:`scipy.signal.resample_poly`,
  whose Kaiser-windowed low-pass removes what would alias). Anything else — another container,
  float WAV, a sample rate outside 8-96 kHz, empty or silent-length audio, more than
  :data:`MAX_AUDIO_SECONDS` — is an :class:`AudioError` that says what was received and what is
  allowed.

Example::

    wav = synthesize("Debian is a free operating system.", voice="flite:slt")
    text = Recognizer().transcribe(wav).text   # "debian is a free operating system"

No MOS (mean opinion score) is measured anywhere: it needs human listeners. The round trip
synthesis -> recognition is measured as WER in ``benchmarks/assistant_voice_wer.py``.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from aigc.errors import AigcError

ENGINES = ("espeak-ng", "flite")
DEFAULT_VOICE = "espeak-ng:en-us"
ASR_RATE = 16_000  # the rate of PocketSphinx's en-us acoustic model
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 96_000
MIN_AUDIO_SECONDS = 0.1
MAX_AUDIO_SECONDS = 60.0
MAX_SPEAK_CHARS = 2000
# What a text costs to speak is what it expands to, not its length: 2,000 zeros are 2,000 words
# "zero" (flite: 11 minutes of audio, 48 s of CPU). :func:`spoken_units` counts words (one per
# 6 letters), digits, CJK characters and symbols; 300 units are about 90 s of English speech.
MAX_SPEAK_UNITS = 300
_SPOKEN = re.compile(r"(?P<cjk>[\u3400-\u9fff\uf900-\ufaff])|(?P<word>[^\W\d_]+)"
                     r"|(?P<other>[^\s.,;:!?'\"()\[\]。，、；：！？（）-])")
MAX_SPEAK_SECONDS = 600.0  # a sanity bound on what an engine returns
MAX_WAV_BYTES = 16 * 1024 * 1024  # 60 s of 16-bit stereo at 48 kHz is 11.5 MB
ASR_LANGUAGES = ("en",)
_ENGINE_TIMEOUT_S = 60.0
# flite's limited-domain voices only say what they were built for (``awb_time``: the time)
_FLITE_LIMITED_DOMAIN = ("_time",)
_VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class AudioError(AigcError):
    """Audio that cannot be used: its format, sample rate or length, named with the limit."""


class VoiceError(AigcError):
    """A voice or engine that does not exist here, or text that cannot be spoken."""


# ------------------------------------------------------------------------------ voices


@dataclass(frozen=True)
class Voice:
    """One synthesis voice: ``id`` is ``ENGINE:NAME``; ``language`` a BCP-47-like tag."""

    engine: str
    name: str
    language: str
    description: str

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


def engine_path(engine: str) -> str | None:
    """The executable of ``engine`` (``espeak-ng`` or ``flite``), or None when not installed."""
    if engine not in ENGINES:
        raise VoiceError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    return shutil.which(engine)


def _run(args: list[str], what: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, timeout=_ENGINE_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise VoiceError(f"{what}: {args[0]} did not finish in {_ENGINE_TIMEOUT_S:.0f}s") from None
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VoiceError(f"{what}: {args[0]} exited with {done.returncode}"
                         f"{': ' + err[-1] if err else ''}")
    return done.stdout


@lru_cache(maxsize=4)
def _engine_voices(engine: str) -> tuple[Voice, ...]:
    exe = engine_path(engine)
    if exe is None:
        return ()
    if engine == "espeak-ng":
        # "Pty Language Age/Gender VoiceName File Other Languages"; the language is the id
        out = _run([exe, "--voices"], "listing voices").decode("utf-8", "replace")
        voices = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 4 and parts[1] not in voices:
                voices[parts[1]] = Voice(engine, parts[1], parts[1],
                                         parts[3].replace("_", " "))
        return tuple(voices.values())
    # flite -lv: "Voices available: kal awb_time kal16 awb rms slt "
    out = _run([exe, "-lv"], "listing voices").decode("utf-8", "replace")
    names = out.split(":", 1)[1].split() if ":" in out else []
    return tuple(Voice(engine, n, "en-us" if n != "awb" else "en-gb-x-scotland",
                       f"flite {n} (English)") for n in names
                 if not n.endswith(_FLITE_LIMITED_DOMAIN))


def list_voices(engine: str | None = None) -> list[Voice]:
    """The voices the installed engines offer (an engine that is not installed has none)."""
    engines = ENGINES if engine is None else (engine,)
    return [v for e in engines for v in _engine_voices(e)]


def find_voice(voice: str) -> Voice:
    """The :class:`Voice` named ``ENGINE:NAME`` (e.g. ``espeak-ng:cmn``), or a VoiceError."""
    engine, _, name = voice.partition(":")
    if engine not in ENGINES or not name:
        raise VoiceError(f"voice must be ENGINE:NAME with ENGINE one of {', '.join(ENGINES)} "
                         f"(e.g. {DEFAULT_VOICE}, flite:slt); got {voice!r}")
    if engine_path(engine) is None:
        raise VoiceError(f"voice {voice!r}: {engine} is not installed (Debian package {engine})")
    for v in _engine_voices(engine):
        if v.name == name:
            return v
    names = ", ".join(v.name for v in _engine_voices(engine))
    raise VoiceError(f"voice {voice!r} not found; {engine} has: {names}")


# --------------------------------------------------------------------------- synthesis


def spoken_units(text: str) -> int:
    """An upper estimate of the words ``text`` is spoken as: a run of letters counts one per 6
    letters (at least one), a CJK character, a digit or any symbol but punctuation one each."""
    units = 0
    for m in _SPOKEN.finditer(text):
        units += math.ceil(len(m.group()) / 6) if m.lastgroup == "word" else 1
    return units


def synthesize(text: str, voice: str = DEFAULT_VOICE, *, words_per_minute: int | None = None
               ) -> bytes:
    """Speak ``text`` with ``voice`` (``ENGINE:NAME``); returns a WAV file's bytes (16-bit mono
    PCM at the engine's rate: 22.05 kHz for espeak-ng, 16 kHz for flite, 8 kHz for ``kal``).

    ``words_per_minute`` (espeak-ng only, 80-450) changes the speed.
    """
    if not isinstance(text, str) or not text.strip():
        raise VoiceError("text to speak must be a non-empty string")
    if len(text) > MAX_SPEAK_CHARS:
        raise VoiceError(f"text to speak has {len(text)} characters; at most {MAX_SPEAK_CHARS}")
    if "\x00" in text:
        raise VoiceError("text to speak contains a NUL character")
    units = spoken_units(text)
    if units > MAX_SPEAK_UNITS:
        raise VoiceError(f"text to speak is about {units} spoken words (a digit or symbol is "
                         f"one, a word one per 6 letters); at most {MAX_SPEAK_UNITS}")
    v = find_voice(voice)
    if words_per_minute is not None and not (80 <= words_per_minute <= 450):
        raise VoiceError(f"words_per_minute must be 80..450; got {words_per_minute}")
    if words_per_minute is not None and v.engine != "espeak-ng":
        raise VoiceError(f"words_per_minute is an espeak-ng option; voice {voice!r} is flite")
    exe = engine_path(v.engine)
    assert exe is not None and _VOICE_NAME.match(v.name)
    with tempfile.TemporaryDirectory(prefix="aigc-tts-") as tmp:
        out = Path(tmp) / "speech.wav"
        if v.engine == "espeak-ng":
            # text on stdin: a text that starts with "-" is never read as an option
            args = [exe, "-v", v.name, "-w", str(out), "--stdin"]
            if words_per_minute is not None:
                args[1:1] = ["-s", str(words_per_minute)]
            _run(args, f"speaking with {voice}", stdin=text.encode("utf-8"))
        else:
            src = Path(tmp) / "text.txt"
            src.write_text(text, encoding="utf-8")
            _run([exe, "-voice", v.name, "-f", str(src), "-o", str(out)],
                 f"speaking with {voice}")
        data = out.read_bytes()
    # the engine's output must be a WAV we can read back; the 60 s bound is recognition's,
    # not speech's (MAX_SPEAK_UNITS allows about 90 s)
    read_wav(data, name=f"the speech of {voice}", max_seconds=MAX_SPEAK_SECONDS)
    return data


# ------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class Audio:
    """Decoded audio: ``samples`` float32 in [-1, 1], shape ``(frames,)`` (mono)."""

    samples: np.ndarray
    sample_rate: int
    channels: int  # of the input, before mixing down

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def read_wav(data: bytes, *, name: str = "audio", max_seconds: float = MAX_AUDIO_SECONDS
             ) -> Audio:
    """Decode a WAV file's bytes (integer PCM) and mix it down to mono.

    Raises:
        AudioError: not a WAV that :mod:`wave` decodes (e.g. float or compressed WAV, MP3,
            WebM/Opus), a sample rate outside 8-96 kHz, no samples, or too long.
    """
    if not isinstance(data, bytes | bytearray):
        raise AudioError(f"{name}: expected WAV bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise AudioError(f"{name}: empty upload (0 bytes); send a WAV file")
    if len(data) > MAX_WAV_BYTES:
        raise AudioError(f"{name}: {len(data)} bytes; at most {MAX_WAV_BYTES} bytes of WAV")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        head = data[:4]
        hint = {b"OggS": "Ogg", b"\x1aE\xdf\xa3": "WebM/Matroska", b"fLaC": "FLAC",
                b"ID3\x03": "MP3", b"ID3\x04": "MP3"}.get(head, "")
        raise AudioError(f"{name}: unsupported audio format{' (' + hint + ')' if hint else ''}"
                         f"; only WAV (RIFF/WAVE, integer PCM) is accepted")
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"{name}: unsupported or damaged WAV ({exc}); only integer PCM WAV "
                         f"(8/16/24/32-bit) is accepted") from None
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz; allowed {MIN_SAMPLE_RATE}.."
                         f"{MAX_SAMPLE_RATE} Hz")
    if channels < 1 or channels > 8:
        raise AudioError(f"{name}: {channels} channels; allowed 1..8")
    frames = len(raw) // (width * channels)
    if frames == 0:
        raise AudioError(f"{name}: the WAV holds no samples")
    raw = raw[: frames * width * channels]
    if width == 1:  # unsigned 8-bit
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:  # little-endian 24-bit: sign-extend into int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    else:
        raise AudioError(f"{name}: {8 * width}-bit samples; allowed 8, 16, 24 or 32-bit PCM")
    x = x.reshape(frames, channels).mean(axis=1)  # (frames,)
    audio = Audio(x, rate, channels)
    if audio.seconds < MIN_AUDIO_SECONDS:
        raise AudioError(f"{name}: {audio.seconds:.3f} s of audio; at least "
                         f"{MIN_AUDIO_SECONDS} s is needed")
    if audio.seconds > max_seconds:
        raise AudioError(f"{name}: {audio.seconds:.1f} s of audio; at most "
                         f"{max_seconds:.0f} s")
    return audio


def resample(x: np.ndarray, rate: int, target: int = ASR_RATE) -> np.ndarray:
    """Resample mono ``x`` ``(frames,)`` from ``rate`` to ``target`` Hz: polyphase filtering
    by the reduced ratio up/down = target/rate (e.g. 22050 -> 16000 is 320/441), whose
    low-pass cuts at the lower of the two Nyquist frequencies."""
    if rate == target:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def to_pcm16(x: np.ndarray) -> bytes:
    """float samples in [-1, 1] -> 16-bit little-endian PCM bytes (clipped)."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def write_wav(x: np.ndarray, rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of float samples ``x`` ``(frames,)``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm16(x))
    return buf.getvalue()


# ------------------------------------------------------------------------- recognition


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    seconds: float  # of audio
    sample_rate: int  # of the input, before resampling to 16 kHz
    decode_seconds: float


class Recognizer:
    """PocketSphinx (US English) speech recognition; load once, reuse (a lock serialises
    requests: one decoder is not safe to share between threads).

    Example:
        >>> Recognizer().transcribe(synthesize("hello world")).text   # doctest: +SKIP
        'hello world'
    """

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise AigcError("speech recognition needs PocketSphinx: pip install 'aigc[apps]'"
                            ) from None
        self._decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
        self._lock = threading.Lock()

    def transcribe(self, wav: bytes, language: str = "en", *, name: str = "audio"
                   ) -> Transcript:
        """The words spoken in ``wav`` (lower case, no punctuation).

        Raises:
            AudioError: see :func:`read_wav`.
            VoiceError: a ``language`` without a model (Chinese: none offline here).
        """
        if language not in ASR_LANGUAGES:
            why = (" (PocketSphinx ships an English model only; there is no offline Chinese "
                   "speech-recognition model on this installation)" if language.startswith("zh")
                   else "")
            raise VoiceError(f"language must be one of {', '.join(ASR_LANGUAGES)} for speech "
                             f"recognition; got {language!r}{why}")
        audio = read_wav(wav, name=name)
        pcm = to_pcm16(resample(audio.samples, audio.sample_rate))
        t0 = time.perf_counter()
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        return Transcript(text, language, audio.seconds, audio.sample_rate,
                          time.perf_counter() - t0)
