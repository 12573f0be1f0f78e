"""Music corpora: music21's corpus (and a user's MIDI files) as pieces, split and cached.

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
own pickle cache is never used (:func:`aigc.data.music.scores.parse_score`).

Splits are fixed: a piece goes to ``test`` / ``val`` / ``train`` by the SHA-256 of its name
(first 8 hex digits modulo 20: 0 -> test, 1 -> val, else train), as for text corpora.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from aigc.data.music.midi import piece_from_midi
from aigc.data.music.pieces import Piece
from aigc.data.music.scores import SkipPiece, parse_score, piece_from_score
from aigc.data.music.tokens import TOKENIZATION_VERSION, piece_to_tokens
from aigc.data.text import hash_split
from aigc.errors import DataError

SPLITS = ("train", "val", "test")
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
