"""Text corpora with fixed splits and a cleaning report: ``austen``, ``tang-poems``,
``tang-poems-full``, ``fortunes``, ``dialogues`` (also ``dialogues-en``, ``dialogues-zh``) and
``text:PATH``.

A corpus is a list of documents (strings) per split. Splits are fixed so that numbers are
comparable between runs:

* ``austen``: documents are chapters of the six novels (paragraphs unwrapped, one per line);
  chapter ``i`` of the concatenation (novels in alphabetical order) goes to ``test`` when
  ``i % 20 == 0``, to ``val`` when ``i % 20 == 1``, else to ``train`` (5% / 5% / 90%).
* every other corpus: a document goes to a split by the SHA-256 of its UTF-8 text (first 8 hex
  digits modulo 20: 0 -> test, 1 -> val, else train), so adding documents never moves others.

Cleaning (reported line by line, nothing dropped silently): documents that are not valid UTF-8
are dropped ("encoding errors"), empty documents are dropped, exact duplicates keep their first
occurrence. Sources (no network): Debian ``r-cran-janeaustenr`` (read with PyPI ``rdata``),
Debian ``fortunes`` and ``fortunes-zh`` (colour escape codes stripped), PyPI
``chatterbot-corpus``, and (optional, ``make data-extra``) the npm package ``chinese-poetry``.

``text:PATH`` reads a UTF-8 ``.txt`` file (documents separated by blank lines), a ``.jsonl`` file
(one JSON object per line with a ``"text"`` string, or ``"question"``/``"answer"``), or a folder
of such files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

from aigc.errors import DataError

SPLITS = ("train", "val", "test")
JANEAUSTENR_DIR = Path("/usr/lib/R/site-library/janeaustenr")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# English fortune files of Debian `fortunes` used for the `fortunes` corpus (fixed, so the corpus
# does not change when other fortune packages are installed).
FORTUNE_FILES = (
    "education", "food", "fortunes", "goedel", "humorists", "kids", "law", "literature", "love",
    "medicine", "men-women", "miscellaneous", "people", "pets", "platitudes", "politics",
    "riddles", "science", "sports", "wisdom", "work",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

CORPORA = {
    "austen": "six Jane Austen novels, one document per chapter (Debian r-cran-janeaustenr)",
    "tang-poems": "313 Tang poems with title and author (Debian fortunes-zh, tang300)",
    "tang-poems-full": "57,600 poems of the Complete Tang Poems, traditional characters, each "
                       "headed by its form (npm chinese-poetry; `make data-extra`)",
    "fortunes": "English fortune-cookie quotes (Debian fortunes)",
    "dialogues": "question/answer pairs, English and Chinese (PyPI chatterbot-corpus)",
    "dialogues-en": "the English part of `dialogues`",
    "dialogues-zh": "the Chinese part of `dialogues`",
    "text:PATH": "your UTF-8 .txt (blank-line separated) or .jsonl file, or a folder of them",
}


@dataclass
class TextCleaningReport:
    """What cleaning did to a corpus. Nothing is dropped without a count (and a line) here."""

    source: str
    kept: int = 0
    encoding_errors: list[str] = field(default_factory=list)  # where (file / document)
    empty: int = 0
    duplicates: list[str] = field(default_factory=list)  # first 60 characters of each

    def lines(self) -> list[str]:
        out = [
            f"cleaning {self.source}: kept {self.kept} documents, encoding errors "
            f"{len(self.encoding_errors)}, empty {self.empty}, duplicates {len(self.duplicates)}"
        ]
        out += [f"  encoding error: {where}" for where in self.encoding_errors[:20]]
        out += [f"  duplicate: {text!r}" for text in self.duplicates[:20]]
        if len(self.duplicates) > 20:
            out.append(f"  ... and {len(self.duplicates) - 20} more duplicates")
        return out


@dataclass
class TextCorpus:
    """A cleaned corpus: documents per split, plus question/answer pairs for dialogue corpora."""

    name: str
    source: str
    splits: dict[str, list[str]]
    report: TextCleaningReport
    pairs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def documents(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return self.splits[split]

    def characters(self, split: str) -> int:
        return sum(len(d) for d in self.documents(split))


# ----------------------------------------------------------------------------- cleaning + splits


def hash_split(text: str) -> str:
    """The split of a document, from the SHA-256 of its text (stable when documents are added)."""
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _clean(documents: list[str], report: TextCleaningReport) -> list[str]:
    seen: set[str] = set()
    out = []
    for doc in documents:
        doc = doc.strip()
        if not doc:
            report.empty += 1
            continue
        if doc in seen:
            report.duplicates.append(doc[:60])
            continue
        seen.add(doc)
        out.append(doc)
    report.kept = len(out)
    return out


def _by_hash(name: str, source: str, documents: list[str], report: TextCleaningReport) -> TextCorpus:
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for doc in _clean(documents, report):
        splits[hash_split(doc)].append(doc)
    return TextCorpus(name, source, splits, report)


def _decode(raw: bytes, where: str, report: TextCleaningReport) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.encoding_errors.append(f"{where}: {exc.reason} at byte {exc.start}")
        return None


# ----------------------------------------------------------------------------------- austen


def _austen_data_dir() -> Path:
    """janeaustenr's data folder; DataError naming what to install when it or rdata is missing."""
    data = JANEAUSTENR_DIR / "data"
    if not (data / "Rdata.rdx").is_file():
        raise DataError(
            f"the austen corpus needs the Debian package r-cran-janeaustenr "
            f"(apt-get install r-cran-janeaustenr); {data / 'Rdata.rdx'} not found"
        )
    if find_spec("rdata") is None:
        raise DataError("the austen corpus needs the PyPI package rdata (pip install rdata)")
    return data


def _austen_novels() -> dict[str, list[str]]:
    """The six novels as lists of lines, read from the R lazy-load database of janeaustenr.

    ``Rdata.rdx`` (an RDS file) maps each variable to ``(offset, length)`` in ``Rdata.rdb``; each
    entry there is a 4-byte big-endian length followed by a zlib stream of one serialised R object.
    """
    data = _austen_data_dir()
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that .rdx is "RDS with a wrong extension"
        index = rdata.conversion.convert(rdata.parser.parse_file(data / "Rdata.rdx"))
    blob = (data / "Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in sorted(index["variables"].items()):
        chunk = blob[int(offset) : int(offset) + int(length)]
        (size,) = struct.unpack(">I", chunk[:4])
        raw = zlib.decompress(chunk[4:])
        assert len(raw) == size, f"janeaustenr {name}: {len(raw)} bytes, expected {size}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
        novels[str(name)] = [str(x) for x in lines]
    return novels


_CHAPTER = re.compile(r"^(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$")


def _chapters(lines: list[str]) -> list[str]:
    """Split a novel into chapters; paragraphs are unwrapped onto one line each."""
    chapters: list[list[str]] = [[]]
    for line in lines:
        if _CHAPTER.match(line.strip()):
            chapters.append([])
        chapters[-1].append(line)
    out = []
    for chapter in chapters[1:]:  # chapters[0] is the title page and front matter
        paragraphs, current = [], []
        for line in chapter:
            if line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        out.append("\n".join(paragraphs))
    return out


def _load_austen() -> TextCorpus:
    report = TextCleaningReport("Debian r-cran-janeaustenr")
    chapters = []
    for _, lines in _austen_novels().items():
        chapters += _chapters(lines)
    kept = _clean(chapters, report)
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, doc in enumerate(kept):
        splits["test" if i % 20 == 0 else "val" if i % 20 == 1 else "train"].append(doc)
    return TextCorpus("austen", report.source, splits, report)


# --------------------------------------------------------------------------- fortune files


def _fortune_file(path: Path, package: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"this corpus needs the Debian package {package} (apt-get install {package}); "
            f"{path} not found"
        )
    return path


def _fortune_entries(path: Path, package: str, report: TextCleaningReport) -> list[str]:
    _fortune_file(path, package)
    text = _decode(path.read_bytes(), str(path), report)
    if text is None:
        return []
    return [_ANSI.sub("", entry).strip("\n") for entry in re.split(r"^%\s*$", text, flags=re.M)]


def _load_tang() -> TextCorpus:
    report = TextCleaningReport("Debian fortunes-zh (tang300)")
    entries = _fortune_entries(FORTUNES_DIR / "tang300", "fortunes-zh", report)
    # Each entry: 《title》 / 作者：author / verse lines. Stray spaces inside lines are removed.
    poems = ["\n".join(line.strip() for line in e.strip().splitlines() if line.strip())
             for e in entries]
    return _by_hash("tang-poems", report.source, poems, report)


CHINESE_POETRY_VERSION = "2.0.1"


def chinese_poetry_dir() -> Path:
    """Where the npm package ``chinese-poetry`` is: ``$AIGC_CHINESE_POETRY_DIR``, else the folder
    ``make data-extra`` installs it to (``~/.cache/aigc/npm``), else a global npm install."""
    candidates = [Path(os.environ["AIGC_CHINESE_POETRY_DIR"])] \
        if os.environ.get("AIGC_CHINESE_POETRY_DIR") else []
    candidates += [Path.home() / ".cache/aigc/npm/node_modules/chinese-poetry",
                   Path("/usr/local/lib/node_modules/chinese-poetry"),
                   Path("/usr/lib/node_modules/chinese-poetry")]
    for path in candidates:
        if (path / "dist" / "quantangshi").is_dir():
            return path
    raise DataError(
        "tang-poems-full needs the npm package chinese-poetry: run `make data-extra` (npm install "
        f"--prefix ~/.cache/aigc/npm chinese-poetry@{CHINESE_POETRY_VERSION}) or set "
        "AIGC_CHINESE_POETRY_DIR to its folder; looked in " + ", ".join(str(c) for c in candidates)
    )


def _load_tang_full() -> TextCorpus:
    root = chinese_poetry_dir()
    report = TextCleaningReport(f"npm chinese-poetry ({root}/dist/quantangshi)")
    files = sorted((root / "dist" / "quantangshi").glob("poet.tang.*.json"),
                   key=lambda f: int(f.name.split(".")[2]))
    if not files:
        raise DataError(f"{root}/dist/quantangshi holds no poet.tang.*.json files")
    poems = []
    for file in files:
        text = _decode(file.read_bytes(), str(file), report)
        if text is None:
            continue
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file} is not valid JSON: {exc}") from None
        for entry in entries:
            lines = [str(x).strip().replace(" ", "") for x in entry.get("paragraphs") or []]
            body = "\n".join(line for line in lines if line)
            if not body:
                report.empty += 1
                continue
            title = str(entry.get("title") or "").strip()
            author = str(entry.get("author") or "").strip()
            # The form line first, so that a prompt can ask for a form (controlled generation).
            poems.append(f"{verse_form(body)}\n《{title}》\n作者：{author}\n{body}")
    return _by_hash("tang-poems-full", report.source, poems, report)


def _load_fortunes() -> TextCorpus:
    report = TextCleaningReport("Debian fortunes")
    entries = []
    for name in FORTUNE_FILES:
        entries += _fortune_entries(FORTUNES_DIR / name, "fortunes", report)
    return _by_hash("fortunes", report.source, entries, report)


# ------------------------------------------------------------------------------- dialogues


def _chatterbot_dir() -> Path:
    try:
        import chatterbot_corpus  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            "the dialogues corpus needs the PyPI package chatterbot-corpus "
            "(pip install chatterbot-corpus)"
        ) from None
    return Path(chatterbot_corpus.__file__).parent / "data"


def dialogue_document(question: str, answer: str) -> str:
    """The text a language model trains on for one pair (and the prompt format it learns)."""
    return f"Q: {question}\nA: {answer}"


def _load_dialogues(name: str, languages: tuple[str, ...]) -> TextCorpus:
    import yaml

    # libyaml's parser where PyYAML has it (its wheels do): the same values from these files
    # (all 237 compared), 15x faster (3.0 s -> 0.2 s for the lot)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    root = _chatterbot_dir()
    report = TextCleaningReport(f"PyPI chatterbot-corpus ({', '.join(languages)})")
    pairs: list[tuple[str, str]] = []
    for lang in languages:
        for path in sorted((root / lang).glob("*.yml")):
            text = _decode(path.read_bytes(), str(path), report)
            if text is None:
                continue
            for conv in yaml.load(text, Loader=loader).get("conversations") or []:
                turns = [str(t).strip() for t in conv if t is not None]
                # A conversation [a, b, c] gives the pairs (a, b) and (b, c).
                pairs += [(q, a) for q, a in zip(turns, turns[1:], strict=False) if q and a]
                report.empty += sum(1 for q, a in zip(turns, turns[1:], strict=False) if not (q and a))
    seen: set[tuple[str, str]] = set()
    split_pairs: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for q, a in pairs:
        if (q, a) in seen:
            report.duplicates.append(dialogue_document(q, a)[:60])
            continue
        seen.add((q, a))
        # Pairs sharing a question go to the same split, so a held-out question is truly unseen.
        split_pairs[hash_split(q)].append((q, a))
    report.kept = len(seen)
    splits = {s: [dialogue_document(q, a) for q, a in split_pairs[s]] for s in SPLITS}
    return TextCorpus(name, report.source, splits, report, pairs=split_pairs)


# ------------------------------------------------------------------------------ user files


def _load_user(spec: str) -> TextCorpus:
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"text:{spec}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file()) \
        if path.is_dir() else [path]
    if not files:
        raise DataError(f"text:{spec}: the folder holds no .txt or .jsonl files")
    report = TextCleaningReport(str(path))
    documents: list[str] = []
    pairs: list[tuple[str, str]] = []
    for file in files:
        if file.suffix == ".jsonl":
            for n, raw in enumerate(file.read_bytes().splitlines(), 1):
                line = _decode(raw, f"{file}:{n}", report)
                if line is None or not line.strip():
                    report.empty += line is not None
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{file}:{n} is not valid JSON: {exc}") from None
                if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                    documents.append(obj["text"])
                elif isinstance(obj, dict) and isinstance(obj.get("question"), str) \
                        and isinstance(obj.get("answer"), str):
                    pairs.append((obj["question"].strip(), obj["answer"].strip()))
                    documents.append(dialogue_document(pairs[-1][0], pairs[-1][1]))
                else:
                    raise DataError(
                        f"{file}:{n}: expected an object with a \"text\" string or "
                        f"\"question\" and \"answer\" strings"
                    )
        else:
            # Decode paragraph by paragraph so one bad byte costs one paragraph, not the file.
            for n, raw in enumerate(re.split(rb"\r?\n\s*\r?\n", file.read_bytes())):
                text = _decode(raw, f"{file} paragraph {n + 1}", report)
                if text is not None:
                    documents.append(text.replace("\r\n", "\n"))
    corpus = _by_hash(f"text:{spec}", str(path), documents, report)
    if pairs:
        corpus.pairs = {s: [p for p in pairs if hash_split(p[0]) == s] for s in SPLITS}
    return corpus


# ---------------------------------------------------------------------------------- public


def _check_fortunes() -> None:
    for file in FORTUNE_FILES:
        _fortune_file(FORTUNES_DIR / file, "fortunes")


# Each named corpus: (raise the DataError its loader would for a missing source, without reading
# one; load it). Names are looked up when called, so the module's folders and loaders can be
# replaced (the tests do).
_NAMED: dict[str, tuple] = {
    "austen": (lambda: _austen_data_dir(), lambda: _load_austen()),
    "tang-poems": (lambda: _fortune_file(FORTUNES_DIR / "tang300", "fortunes-zh"),
                   lambda: _load_tang()),
    "tang-poems-full": (lambda: chinese_poetry_dir(), lambda: _load_tang_full()),
    "fortunes": (lambda: _check_fortunes(), lambda: _load_fortunes()),
    "dialogues": (lambda: _chatterbot_dir(),
                  lambda: _load_dialogues("dialogues", ("english", "chinese"))),
    "dialogues-en": (lambda: _chatterbot_dir(),
                     lambda: _load_dialogues("dialogues-en", ("english",))),
    "dialogues-zh": (lambda: _chatterbot_dir(),
                     lambda: _load_dialogues("dialogues-zh", ("chinese",))),
}


@lru_cache(maxsize=8)
def load_corpus(name: str) -> TextCorpus:
    """Load a named corpus (see :data:`CORPORA`), cleaned and split.

    Example:
        >>> corpus = load_corpus("tang-poems")
        >>> corpus.documents("train")[0].splitlines()[1].startswith("作者")
        True
    """
    if name in _NAMED:
        return _NAMED[name][1]()
    if name.startswith("text:"):
        return _load_user(name[5:])
    raise DataError(f"unknown text corpus {name!r}; known: {', '.join(CORPORA)}")


def corpus_available(name: str) -> tuple[bool, str]:
    """``(True, "")`` when the corpus's sources are installed, else ``(False, what to do)``;
    checks that the files are there without parsing them (parsing the seven took ``aigc data
    list`` 4-5 s); a source that is there but damaged says so when it is loaded."""
    try:
        if name in _NAMED:
            _NAMED[name][0]()
        else:  # user files and unknown names: their loader's own checks
            load_corpus(name)
    except DataError as exc:
        return False, str(exc)
    return True, ""


# ------------------------------------------------------------------- regulated-verse check
# The one regulated-verse check of aigc: the corpus loader (form lines of tang-poems-full), the
# text evaluation (verse_form_rate in aigc.metrics.text) and benchmarks/tang_form_check.py use it.

# Han characters: 〇, CJK Unified Ideographs with extension A, the compatibility ideographs, and
# the supplementary planes' extensions B-H and compatibility supplement (rare characters of the
# Complete Tang Poems live there).
HAN = re.compile(r"[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                 r"\U00020000-\U0003134f\U0002f800-\U0002fa1f]")
# What fills a character slot of a verse: a Han character, □ or ● (the sources' marks for a
# character lost from the text: 444 and 4 of them in the verses that decide a form in the Complete
# Tang Poems) or a private-use code point (rare characters the sources encode privately). Letters,
# digits and other symbols do not.
_VERSE_CHAR = re.compile(HAN.pattern[:-1] + r"\u25a1\u25cf\ue000-\uf8ff]")

# A verse ends at any punctuation mark or white space, 、 and ： included: in the tang300 corpus a
# 、 stands where a ， belongs (韦应物《长安遇冯著》: "冥冥花正开、扬扬燕新乳"), and a regulated
# verse of 5 or 7 characters holds no punctuation inside it.
_VERSE_BREAK = re.compile(r"[，。？！；、：,.?!;:\s]+")


# The form line that heads each ``tang-poems-full`` document: 5- or 7-character quatrains (绝句)
# and octaves (律诗) by :func:`is_regulated_verse`, every other poem 古诗.
VERSE_FORMS = ("五言绝句", "七言绝句", "五言律诗", "七言律诗", "古诗")


def split_verses(body: str) -> list[str]:
    """The verses of a poem body: split at Chinese and Western punctuation and white space."""
    return [v for v in _VERSE_BREAK.split(body) if v]


def regulated_verse_form(body: str) -> dict[str, object]:
    """Check the outer form of a jueju/lüshi: 4 or 8 verses, all of 5 or all of 7 Han characters.

    Verses are split at punctuation and white space (a printed line of a Tang poem usually holds
    a couplet: two verses). A verse holding anything but Han characters (Latin letters, digits,
    symbols) fails: ``"abcde"`` is not a 5-character verse; □ and ●, the sources' marks for a lost
    character, fill a slot. Tones and rhyme are not checked.

    Returns ``{"ok": bool, "verses": int, "verse_lengths": [...], "reason": str}`` where the
    lengths count characters (as above) and ``reason`` is empty when ``ok``.

    Example:
        >>> regulated_verse_form("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。")["ok"]
        True
    """
    verses = split_verses(body)
    lengths = [len(_VERSE_CHAR.findall(v)) for v in verses]
    foreign = [v for v, n in zip(verses, lengths, strict=True) if n != len(v)]
    if len(verses) not in (4, 8):
        reason = f"{len(verses)} verses (need 4 or 8)"
    elif foreign:
        reason = f"non-Han characters in verse {foreign[0]!r}"
    elif len(set(lengths)) != 1 or lengths[0] not in (5, 7):
        reason = f"verse lengths {lengths} (need all 5 or all 7)"
    else:
        reason = ""
    return {"ok": not reason, "verses": len(verses), "verse_lengths": lengths, "reason": reason}


def verse_form(body: str) -> str:
    """The :data:`VERSE_FORMS` name of a poem body (by verse count and length only)."""
    form = regulated_verse_form(body)
    if not form["ok"]:
        return "古诗"
    return (("五言" if form["verse_lengths"][0] == 5 else "七言")
            + ("绝句" if form["verses"] == 4 else "律诗"))


def poem_body(poem: str) -> str:
    """The verse lines of a ``tang-poems`` document (drops the form, 《title》 and 作者 lines)."""
    lines = [line.strip() for line in poem.strip().splitlines() if line.strip()]
    return "\n".join(line for line in lines if not (
        line.startswith("《") or line.startswith("作者") or line in VERSE_FORMS))


def is_regulated_verse(body: str) -> bool:
    """True when ``body`` passes :func:`regulated_verse_form` (4 or 8 verses, all of 5 or all of 7
    Han characters; the form of 绝句 and 律诗, tones and rhyme not checked)."""
    return bool(regulated_verse_form(body)["ok"])
