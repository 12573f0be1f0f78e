"""Speech synthesis (espeak-ng, flite), recognition (PocketSphinx) and the audio checks of
aigc.apps.assistant.voice."""

from __future__ import annotations

import io
import shutil
import wave

import numpy as np
import pytest

from aigc.apps.assistant import voice
from aigc.apps.assistant.voice import AudioError, VoiceError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (Debian package espeak-ng)")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None,
                                 reason="flite is not installed (Debian package flite)")
SENTENCE = "You can install packages from the archive with the package manager."


def _wav(x: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return buf.getvalue()


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    return jiwer.wer(ref.lower().rstrip("."), hyp)


@pytest.fixture(scope="module")
def recognizer():
    pytest.importorskip("pocketsphinx", reason="PocketSphinx is not installed (aigc[apps])")
    return voice.Recognizer()


@needs_espeak
@pytest.mark.parametrize("v", ["espeak-ng:en-us", "espeak-ng:cmn"])
def test_espeak_synthesis_is_valid_wav(v):
    text = SENTENCE if v.endswith("en-us") else "您好，请问有什么可以帮您？"
    data = voice.synthesize(text, v)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        frames = w.getnframes()
        x = np.frombuffer(w.readframes(frames), "<i2")
    assert frames / 22050 > 1.0  # a sentence lasts seconds, not milliseconds
    assert np.abs(x).max() > 3000  # not silence


@needs_flite
def test_flite_synthesis_is_valid_wav_and_voices_are_listed():
    ids = [v.id for v in voice.list_voices("flite")]
    assert "flite:slt" in ids and "flite:kal" in ids
    assert "flite:awb_time" not in ids  # limited domain: only says the time
    data = voice.synthesize(SENTENCE, "flite:slt")
    audio = voice.read_wav(data)
    assert audio.sample_rate == 16000 and audio.seconds > 1.0


@needs_flite
def test_round_trip_flite_has_low_wer(recognizer):
    hyp = recognizer.transcribe(voice.synthesize(SENTENCE, "flite:slt")).text
    assert _wer(SENTENCE, hyp) <= 0.25, hyp


@needs_flite
def test_recognition_of_8khz_stereo_input_is_resampled(recognizer):
    """kal speaks at 8 kHz; duplicated into two channels and read back it still decodes."""
    mono = voice.read_wav(voice.synthesize(SENTENCE, "flite:kal"))
    assert mono.sample_rate == 8000
    pcm = (mono.samples * 32767).astype("<i2")
    stereo = _wav(np.stack([pcm, pcm], axis=1), 8000, channels=2)
    t = recognizer.transcribe(stereo)
    assert t.sample_rate == 8000
    assert _wer(SENTENCE, t.text) <= 0.4, t.text


def test_resample_keeps_a_tone_and_removes_what_would_alias():
    rate = 44100
    t = np.arange(rate) / rate  # 1 s
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = voice.resample(tone, rate, 16000)
    assert len(y) == 16000
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) == 440  # 1 Hz bins
    assert 0.95 < np.sqrt(np.mean(y[100:-100] ** 2)) / np.sqrt(0.5) < 1.05
    # 12 kHz is above the new Nyquist (8 kHz): it must be filtered out, not folded to 4 kHz
    high = np.sin(2 * np.pi * 12000 * t).astype(np.float32)
    assert np.sqrt(np.mean(voice.resample(high, rate, 16000)[100:-100] ** 2)) < 0.01


def test_read_wav_decodes_8_16_24_bit_alike():
    x = (np.sin(np.linspace(0, 200, 16000)) * 0.5).astype(np.float64)
    pcm16 = (x * 32767).astype("<i2")
    pcm8 = (x * 127 + 128).round().astype(np.uint8)
    v24 = (x * (2**23 - 1)).astype("<i4")
    pcm24 = np.frombuffer(v24.tobytes(), np.uint8).reshape(-1, 4)[:, :3].copy()
    a16 = voice.read_wav(_wav(pcm16, 16000)).samples
    a8 = voice.read_wav(_wav(pcm8, 16000, width=1)).samples
    a24 = voice.read_wav(_wav(pcm24, 16000, width=3)).samples
    np.testing.assert_allclose(a16, x, atol=1e-4)
    np.testing.assert_allclose(a8, x, atol=1e-2)
    np.testing.assert_allclose(a24, x, atol=1e-6)


@pytest.mark.parametrize("data, match", [
    (b"", "empty upload"),
    (b"OggS" + b"\0" * 100, r"unsupported audio format \(Ogg\); only WAV"),
    (b"ID3\x03" + b"\0" * 100, r"\(MP3\)"),
    (b"RIFF\0\0\0\0WAVEfmt garbage", "unsupported or damaged WAV"),
])
def test_bad_audio_is_refused_with_a_clear_error(data, match):
    with pytest.raises(AudioError, match=match):
        voice.read_wav(data)


def test_sample_rate_and_length_limits():
    one_second = np.zeros(16000, "<i2")
    with pytest.raises(AudioError, match=r"sample rate 4000 Hz; allowed 8000..96000 Hz"):
        voice.read_wav(_wav(np.zeros(4000, "<i2"), 4000))
    with pytest.raises(AudioError, match=r"sample rate 192000 Hz"):
        voice.read_wav(_wav(np.zeros(192000, "<i2"), 192000))
    with pytest.raises(AudioError, match="holds no samples"):
        voice.read_wav(_wav(np.zeros(0, "<i2"), 16000))
    with pytest.raises(AudioError, match=r"0.010 s of audio; at least 0.1 s"):
        voice.read_wav(_wav(one_second[:160], 16000))
    with pytest.raises(AudioError, match=r"61.0 s of audio; at most 60 s"):
        voice.read_wav(_wav(np.zeros(8000 * 61, "<i2"), 8000))
    float_wav = bytearray(_wav(one_second, 16000))
    float_wav[20:22] = (3).to_bytes(2, "little")  # WAVE_FORMAT_IEEE_FLOAT
    with pytest.raises(AudioError, match="only integer PCM WAV"):
        voice.read_wav(bytes(float_wav))


def test_chinese_recognition_is_refused_and_says_why(recognizer):
    wav = _wav(np.zeros(16000, "<i2"), 16000)
    with pytest.raises(VoiceError, match="no offline Chinese speech-recognition model"):
        recognizer.transcribe(wav, language="zh")


@needs_espeak
def test_bad_voice_and_text_are_refused():
    with pytest.raises(VoiceError, match=r"voice must be ENGINE:NAME"):
        voice.synthesize("hello", "festival:kal")
    with pytest.raises(VoiceError, match=r"voice 'espeak-ng:xx-nowhere' not found; espeak-ng "
                                         r"has: .*en-us"):
        voice.synthesize("hello", "espeak-ng:xx-nowhere")
    with pytest.raises(VoiceError, match="non-empty"):
        voice.synthesize("   ")
    with pytest.raises(VoiceError, match=r"2001 characters; at most 2000"):
        voice.synthesize("a" * 2001)
    # a text that looks like an option is spoken, not parsed as one
    assert voice.read_wav(voice.synthesize("--help me please")).seconds > 0.3


def test_what_a_text_expands_to_is_bounded_not_its_length():
    """2,000 zeros are 2,000 spoken words (flite: 11 minutes of audio): refused at once."""
    assert voice.spoken_units("You can install packages.") == 6  # 7 and 8 letters: 2 each
    assert voice.spoken_units("请问怎么安装？") == 6
    assert voice.spoken_units("a" * 12) == 2 and voice.spoken_units("[1] 42%") == 4
    with pytest.raises(VoiceError, match=r"about 2000 spoken words .* at most 300"):
        voice.synthesize("0" * 2000, "espeak-ng:en-us")


@needs_espeak
def test_text_within_the_speak_limits_is_spoken_past_a_minute():
    """280 short words are within MAX_SPEAK_UNITS (about 90 s of speech) but over the 60 s
    bound of *recognition*: the read-back of the engine's output must not apply it."""
    text = " ".join(["apple"] * 280)
    assert len(text) <= voice.MAX_SPEAK_CHARS and voice.spoken_units(text) <= voice.MAX_SPEAK_UNITS
    audio = voice.read_wav(voice.synthesize(text, "espeak-ng:en-us"), max_seconds=1e9)
    assert audio.seconds > voice.MAX_AUDIO_SECONDS
