"""Speech round trip of the assistant: synthesis (espeak-ng, flite) -> recognition (PocketSphinx
en-us) over sentences of the knowledge base, WER per voice (jiwer).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/assistant_voice_wer.py \
        --n 50 --out benchmarks/results/assistant-voice-wer.json

The sentences are answers of the shipped demo knowledge base, the English Debian FAQ
(/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz): every sentence of 6-20 words written only
with letters and ``,.;'?!-`` (no digits, paths or URLs, which a speaker spells out in ways a
reference cannot predict), de-duplicated, then every k-th one to keep ``--n``. References and
hypotheses are normalised alike: lower case, punctuation but apostrophes removed, hyphens to
spaces. The share of reference words missing from PocketSphinx's dictionary is reported: such
a word can never be recognised, whatever the voice.

This measures intelligibility to one recogniser, not naturalness. **MOS (mean opinion score)
needs human listeners and is not measured.** English only: PocketSphinx ships no Chinese model,
so the Chinese voice (espeak-ng ``cmn``) has no round trip here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, machine_line  # noqa: E402

FAQ = Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")
VOICES = ("espeak-ng:en-us", "espeak-ng:en-gb", "flite:slt", "flite:rms", "flite:awb",
          "flite:kal16", "flite:kal")
_PLAIN = re.compile(r"[A-Za-z ,.;'?!-]+")
MOS_NOTE = "MOS needs human listeners and is not measured."


def faq_sentences(path: Path = FAQ, n: int = 50) -> tuple[list[str], int]:
    """``n`` sentences spread evenly over the FAQ's plain sentences, and how many there were."""
    text = gzip.open(path, "rt", encoding="utf-8").read()
    seen: dict[str, None] = {}
    for para in re.split(r"\n\s*\n", text):
        for s in re.split(r"(?<=[.?!])\s+", " ".join(para.split())):
            if 6 <= len(s.split()) <= 20 and _PLAIN.fullmatch(s) and s[0].isupper() \
                    and s[-1] in ".?!":
                seen.setdefault(s)
    plain = list(seen)
    step = max(1, len(plain) // n)
    return plain[::step][:n], len(plain)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split())


def dictionary_words() -> set[str]:
    import pocketsphinx

    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    with path.open(encoding="utf-8") as f:
        return {line.split(maxsplit=1)[0].split("(")[0] for line in f if line.strip()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50, help="sentences per voice")
    p.add_argument("--voices", nargs="+", default=list(VOICES))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/assistant-voice-wer.json"))
    args = p.parse_args()

    import jiwer

    from aigc.apps.assistant.voice import Recognizer, list_voices, synthesize

    available = {v.id for v in list_voices()}
    missing = [v for v in args.voices if v not in available]
    if missing:
        sys.exit(f"assistant_voice_wer: voices not installed: {', '.join(missing)}")
    sentences, pool = faq_sentences(n=args.n)
    refs = [normalise(s) for s in sentences]
    vocab = dictionary_words()
    ref_words = [w for r in refs for w in r.split()]
    oov = sorted({w for w in ref_words if w not in vocab})
    recognizer = Recognizer()
    print(machine_line())
    print(f"{len(sentences)} sentences (of {pool} plain FAQ sentences), {len(ref_words)} words; "
          f"{sum(w not in vocab for w in ref_words) / len(ref_words):.1%} of words not in the "
          f"recogniser's dictionary: {', '.join(oov)}")
    results = []
    for v in args.voices:
        hyps, synth_s, decode_s, audio_s = [], 0.0, 0.0, 0.0
        for s in sentences:
            t0 = time.perf_counter()
            wav = synthesize(s, v)
            synth_s += time.perf_counter() - t0
            t = recognizer.transcribe(wav)
            decode_s += t.decode_seconds
            audio_s += t.seconds
            hyps.append(normalise(t.text))
        out = jiwer.process_words(refs, hyps)
        row = {"voice": v, "wer": out.wer, "substitutions": out.substitutions,
               "deletions": out.deletions, "insertions": out.insertions, "hits": out.hits,
               "sentences": len(refs), "audio_s": round(audio_s, 2),
               "synthesis_s": round(synth_s, 2), "recognition_s": round(decode_s, 2),
               "recognition_real_time_factor": round(decode_s / audio_s, 3),
               "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]],
               "hypotheses": hyps}
        results.append(row)
        print(f"{v:18s} WER {out.wer:6.3f}  (S {out.substitutions}, D {out.deletions}, "
              f"I {out.insertions} of {len(ref_words)} words)  audio {audio_s:6.1f} s  "
              f"recognition x{decode_s / audio_s:.2f} real time")
    print(MOS_NOTE)
    from importlib.metadata import version

    record = {"benchmark": "assistant_voice_wer", "machine": machine(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "recogniser": f"pocketsphinx {version('pocketsphinx')} en-us "
                            "(model inside the wheel), default config",
              "source": str(FAQ), "pool": pool, "references": refs,
              "oov_share": sum(w not in vocab for w in ref_words) / len(ref_words),
              "oov_words": oov, "results": results, "mos": MOS_NOTE,
              "chinese": "not measured: PocketSphinx ships no Chinese model (no offline zh ASR)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
