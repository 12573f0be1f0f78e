"""Our MIDI writer/reader beside music21's MIDI import: same notes? how much faster?

For N chorales of the cached corpus: write our MIDI file, read it back with
:func:`aigc.data.music.piece_from_midi` and with ``music21.converter.parse`` (ties stripped),
check both see the same (onset, duration, pitch) notes, and print the time ratio.

    python benchmarks/music_midi.py --n 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="chorales to compare (default 20)")
    args = ap.parse_args()

    from music21 import converter

    from aigc.data.music import load_music_corpus, piece_from_midi, write_midi

    pieces = load_music_corpus("bach-chorales", progress=False).split("train")[: args.n]
    ours_s = theirs_s = 0.0
    same = 0
    with tempfile.TemporaryDirectory() as tmp:
        for p in pieces:
            path = write_midi(p, Path(tmp) / "p.mid")
            t = time.perf_counter()
            back = piece_from_midi(path)
            ours_s += time.perf_counter() - t
            t = time.perf_counter()
            score = converter.parse(str(path), forceSource=True)  # no music21 pickle cache
            theirs = sorted((round(float(n.offset) * 12), round(float(n.quarterLength) * 12), x.midi)
                            for part in score.parts for n in part.flatten().stripTies().notes
                            for x in n.pitches)
            theirs_s += time.perf_counter() - t
            ours = sorted((n.onset, n.duration, n.pitch) for n in back.notes)
            same += ours == theirs
    print(f"chorales: {len(pieces)}; identical notes: {same}/{len(pieces)}")
    print(f"aigc read_midi: {ours_s * 1000 / len(pieces):.1f} ms/file; music21: "
          f"{theirs_s * 1000 / len(pieces):.1f} ms/file; music21 / aigc = {theirs_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
