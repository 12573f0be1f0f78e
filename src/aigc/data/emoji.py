"""The ``emoji`` image set: about 10,000 colour emoji images, 64x64 RGB, captioned in English and
Chinese from Unicode CLDR, with splits that hold out whole concepts and caption strings.

Sources (npm packages, pinned in :data:`PACKAGES`; ``make data-emoji`` installs them under
``~/.cache/aigc/npm``, ``$AIGC_EMOJI_NPM_DIR`` points at another ``node_modules`` folder):

* ``emoji-datasource-google``: Google Noto emoji as 64 px PNGs (``img/google/64/<code points>.png``,
  Apache-2.0) and ``emoji.json`` (code points, names, category/subcategory, skin-tone variants).
* ``fluentui-emoji``: Microsoft Fluent emoji SVGs (MIT), styles ``flat`` and ``modern``
  (``icons/<style>/<name>[-<skin tone>].svg``; the package has no metadata files, so a file is
  matched to its emoji by name: the file name against the slug of the CLDR English name, and the
  committed alias table ``aigc/assets/emoji/fluent_aliases.tsv`` for the names that differ).
  The ``high-contrast`` style (monochrome outlines) is not used.
* ``cldr-annotations-full`` and ``cldr-annotations-derived-full`` (Unicode licence): the English
  and Chinese names (``tts``) and keywords (``default``) of each emoji and of its skin-tone and
  gender sequences.

Images: PNGs are decoded with Pillow, SVGs rasterised with cairosvg at 64x64 (``unsafe=False``:
no XML entities, and a fetcher that refuses every URL but ``data:``, so an SVG can neither reach
the network nor read a local file; a file that tries is rejected). Transparent pixels are
composited on white; the stored image is RGB. Per file: at most :data:`MAX_FILE_BYTES` bytes and
:data:`RENDER_SECONDS` seconds of rasterising. Skin-tone variants are kept as separate images of
the same concept (their captions name the tone).

Concepts and splits (fixed by hashing, so they never move between builds):

* a *concept* is one emoji of ``emoji.json`` with skin tones folded in (its code points, e.g.
  ``1F44B`` for "waving hand" and all five of its toned variants, in all three styles);
* concept split = first 8 hex digits of ``sha256("emoji-concept\\t" + concept)`` modulo 20:
  0-1 -> ``test``, 2 -> ``val``, else ``train``. Test and val concepts are never seen in
  training;
* held-out captions: for a ``train`` concept, each distinct caption string is held out when the
  first 8 hex digits of ``sha256("emoji-caption\\t" + lang + "\\t" + concept + "\\t" + caption)``
  modulo 10 is below 2 (about 20%), except that every image keeps at least one training caption
  per language it has. A held-out string is never a training caption of its concept.

The prepared set is cached as ``$AIGC_CACHE_DIR/emoji/<key>/`` (default ``~/.cache/aigc``):
``images.npz`` (``images``: (N, 64, 64, 3) uint8), ``records.jsonl`` (one JSON object per
image, same order), ``build.json`` (what was skipped and why, caption counts) and ``CARD.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import threading
import time
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from aigc.data.images import SPLITS, ImageDataset
from aigc.errors import DataError

# Exact versions: the cache key, the Makefile target and the dataset card all name these.
PACKAGES = {
    "emoji-datasource-google": "16.0.0",
    "fluentui-emoji": "1.3.0",
    "cldr-annotations-full": "48.2.0",
    "cldr-annotations-derived-full": "48.2.0",
}
MAKE_TARGET = "make data-emoji"
NPM_DIR_ENV = "AIGC_EMOJI_NPM_DIR"
FORMAT_VERSION = 1  # bump when the images, records or splits change for the same packages
IMAGE_SIZE = 64
FLUENT_STYLES = ("flat", "modern")
STYLES = ("noto", "fluent-flat", "fluent-modern")
LICENCES = {
    "emoji-datasource-google": "Apache-2.0 (Google Noto Emoji images)",
    "fluentui-emoji": "MIT (Microsoft Fluent Emoji)",
}
CAPTION_LICENCE = "Unicode-3.0 (Unicode CLDR annotations)"
MAX_FILE_BYTES = 2_000_000  # the largest Fluent SVG is 0.46 MB, a Noto PNG a few KB
RENDER_SECONDS = 10.0  # the slowest Fluent SVG takes about 1 s on one core
CONCEPT_BUCKETS = 20  # concept hash modulo this: 0-1 test, 2 val, else train
CAPTION_BUCKETS, CAPTION_HELDOUT = 10, 2  # caption hash modulo 10 below 2: held out
# Fluent's file-name suffix -> the skin-tone modifier (U+1F3FB..U+1F3FF); "default" = none.
SKIN_TONES = {"light": "1F3FB", "medium-light": "1F3FC", "medium": "1F3FD",
              "medium-dark": "1F3FE", "dark": "1F3FF"}
# emoji.json categories in Chinese (aigc's own translation; CLDR's annotations have no groups).
GROUPS_ZH = {
    "Smileys & Emotion": "笑脸和情感", "People & Body": "人物和身体", "Component": "组件",
    "Animals & Nature": "动物和自然", "Food & Drink": "食物和饮料", "Travel & Places": "旅行和地点",
    "Activities": "活动", "Objects": "物品", "Symbols": "符号", "Flags": "旗帜",
}
_SLUG = re.compile(r"[^a-z0-9]+")


def _hash_bucket(text: str, buckets: int) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % buckets


def concept_split(concept: str) -> str:
    """The split of a concept (its code points, e.g. ``"1F44B"``): ``train``, ``val`` or ``test``."""
    bucket = _hash_bucket(f"emoji-concept\t{concept}", CONCEPT_BUCKETS)
    return "test" if bucket < 2 else "val" if bucket == 2 else "train"


def caption_held_out(lang: str, concept: str, caption: str) -> bool:
    """Whether a caption string of a seen (``train``) concept is held out of training."""
    key = f"emoji-caption\t{lang}\t{concept}\t{caption}"
    return _hash_bucket(key, CAPTION_BUCKETS) < CAPTION_HELDOUT


def slug(name: str) -> str:
    """A name as Fluent spells its files: ASCII, lower case, apostrophes dropped, '-' between words.

    >>> slug("one o’clock"), slug("piñata"), slug("keycap: 1")
    ('one-oclock', 'pinata', 'keycap-1')
    """
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return _SLUG.sub("-", ascii_.replace("'", "")).strip("-")


def _chars(unified: str) -> str:
    """``"1F44B-1F3FD"`` -> the emoji string, without U+FE0F (CLDR keys mostly omit it)."""
    return "".join(chr(int(cp, 16)) for cp in unified.split("-")).replace("\ufe0f", "")


# ----------------------------------------------------------------------------- packages


def npm_modules_dir() -> Path:
    """The ``node_modules`` folder holding the four packages, or a one-line :class:`DataError`."""
    env = os.environ.get(NPM_DIR_ENV)
    candidates = [Path(env)] if env else [
        Path.home() / ".cache/aigc/npm/node_modules", Path("/usr/local/lib/node_modules"),
        Path("/usr/lib/node_modules"),
    ]
    for root in candidates:
        if all((root / name / "package.json").is_file() for name in PACKAGES):
            return root
    where = f"{NPM_DIR_ENV}={env}" if env else "~/.cache/aigc/npm/node_modules"
    raise DataError(
        "dataset 'emoji' needs the npm packages "
        + ", ".join(f"{n}@{v}" for n, v in PACKAGES.items())
        + f" (not found in {where}): run `{MAKE_TARGET}`, or set {NPM_DIR_ENV} to a node_modules "
        "folder holding them"
    )


def package_versions(root: Path) -> dict[str, str]:
    """The installed version of each package (read from its package.json)."""
    out = {}
    for name in PACKAGES:
        path = root / name / "package.json"
        try:
            out[name] = str(json.loads(path.read_text(encoding="utf-8"))["version"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path} could not be read as a package.json: {exc}") from None
    return out


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: the npm package is incomplete; reinstall it with "
                        f"`{MAKE_TARGET}`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} could not be read as JSON: {exc}") from None


def load_annotations(root: Path, lang: str) -> dict[str, tuple[str, list[str]]]:
    """CLDR names and keywords for one language: emoji string (no U+FE0F) -> (name, keywords).

    ``cldr-annotations-full`` gives single emoji; ``cldr-annotations-derived-full`` gives the
    sequences (skin tones, genders, flags, keycaps). Entries without a name are left out.
    """
    out: dict[str, tuple[str, list[str]]] = {}
    for package, folder, key in (("cldr-annotations-full", "annotations", "annotations"),
                                 ("cldr-annotations-derived-full", "annotationsDerived",
                                  "annotationsDerived")):
        path = root / package / folder / lang / "annotations.json"
        data = _read_json(path)
        try:
            entries = data[key]["annotations"]  # type: ignore[index]
        except (KeyError, TypeError):
            raise DataError(f"{path} is not a CLDR annotations file (no {key}.annotations)") from None
        for chars, entry in entries.items():
            if not isinstance(entry, dict) or not entry.get("tts"):
                continue
            keywords = [k for k in entry.get("default", []) if isinstance(k, str) and k.strip()]
            out.setdefault(chars.replace("\ufe0f", ""), (str(entry["tts"][0]), keywords))
    return out


def load_aliases(path: Path | None = None) -> dict[str, tuple[str, str]]:
    """The committed alias table: Fluent file name -> (code points, reason)."""
    if path is None:
        text = resources.files("aigc").joinpath("assets/emoji/fluent_aliases.tsv").read_text(
            encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 4 or not re.fullmatch(r"[0-9A-F]{4,6}(-[0-9A-F]{4,6})*", parts[1]):
            raise DataError(f"fluent alias table line {number} is not 'name<TAB>code points"
                            f"<TAB>cldr name<TAB>reason': {line!r}")
        out[parts[0]] = (parts[1], parts[3])
    return out


# ------------------------------------------------------------------------------ catalogue


@dataclass(frozen=True)
class Source:
    """One image file to read, and what it shows."""

    style: str  # one of STYLES
    package: str
    path: Path
    unified: str  # code points of what the image shows, e.g. "1F44B-1F3FD"
    concept: str  # code points of the concept (skin tones folded in)
    skin_tone: str | None  # "light" ... "dark", or None
    group: str
    subgroup: str
    alias: str | None = None  # the alias-table reason when the file name needed one


@dataclass
class Catalogue:
    sources: list[Source]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    aliased: list[tuple[str, str]] = field(default_factory=list)  # (file, alias-table name)
    concept_names: dict[str, str] = field(default_factory=dict)  # concept -> English name


def _tone_of(key: str) -> str:
    """emoji.json skin-variation key -> tone names: "1F3FD" -> "medium", "1F3FB-1F3FC" ->
    "light/medium-light" (people holding hands and other two-person emoji)."""
    names = {cp: name for name, cp in SKIN_TONES.items()}
    return "/".join(names.get(cp.upper(), cp) for cp in key.split("-"))


def catalogue(root: Path, en: dict[str, tuple[str, list[str]]],
              aliases: dict[str, tuple[str, str]]) -> Catalogue:
    """Every image file of the two image packages, matched to its emoji and concept."""
    google = root / "emoji-datasource-google"
    entries = _read_json(google / "emoji.json")
    if not isinstance(entries, list):
        raise DataError(f"{google / 'emoji.json'} is not a list of emoji")
    cat = Catalogue([])
    by_cldr: dict[str, dict] = {}  # slug of the CLDR English name -> entry (looked up first)
    by_other: dict[str, dict] = {}  # slug of emoji.json's name and short names -> entry
    by_unified: dict[str, dict] = {}
    png_dir = google / "img/google/64"
    for number, e in enumerate(entries):
        try:
            unified = e["unified"].upper()
            by_unified[unified] = e
            cldr = en[_chars(unified)][0] if _chars(unified) in en else None
            if cldr:
                by_cldr.setdefault(slug(cldr), e)
            for n in [e.get("name") or "", *(e.get("short_names") or [])]:
                if n:
                    by_other.setdefault(slug(n), e)
            cat.concept_names[unified] = cldr or (e.get("name") or unified).lower()
            group, subgroup = e.get("category") or "", e.get("subcategory") or ""
            variants = [(unified, None, e)] + [
                (v["unified"].upper(), k, v)
                for k, v in sorted((e.get("skin_variations") or {}).items())]
            for code, tone_key, v in variants:
                if not v.get("has_img_google"):
                    continue
                tone = None if tone_key is None else _tone_of(tone_key)
                cat.sources.append(Source("noto", "emoji-datasource-google", png_dir / v["image"],
                                          code, unified, tone, group, subgroup))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise DataError(f"{google / 'emoji.json'}: entry {number} is not an emoji record "
                            f"with 'unified' code points and 'image' names ({exc!r})") from None
    fluent = root / "fluentui-emoji" / "icons"
    for style in FLUENT_STYLES:
        folder = fluent / style
        if not folder.is_dir():
            raise DataError(f"{folder} is missing: fluentui-emoji@{PACKAGES['fluentui-emoji']} "
                            f"has icons/flat and icons/modern; reinstall it with `{MAKE_TARGET}`")
        stems = {p.stem for p in folder.glob("*.svg")}
        for stem in sorted(stems):
            base, tone = stem, None
            for name in sorted(("default", *SKIN_TONES), key=len, reverse=True):
                # only a real suffix: "traffic-light" stays whole, "woman-dark" has woman-default
                if stem.endswith("-" + name) and stem[: -len(name) - 1] + "-default" in stems:
                    base, tone = stem[: -len(name) - 1], (None if name == "default" else name)
                    break
            reason = None
            if base in aliases:
                code, reason = aliases[base]
                entry = by_unified.get(code)
                cat.aliased.append((f"fluentui-emoji/icons/{style}/{stem}.svg", base))
            else:
                entry = by_cldr.get(base) or by_other.get(base)
            if entry is None:
                cat.skipped.append((f"fluentui-emoji/icons/{style}/{stem}.svg",
                                    f"no emoji is named {base!r} in CLDR or emoji.json, and the "
                                    "alias table has no entry"))
                continue
            concept = entry["unified"].upper()
            code = concept
            if tone is not None:
                variation = (entry.get("skin_variations") or {}).get(SKIN_TONES[tone])
                if variation is None:
                    cat.skipped.append((f"fluentui-emoji/icons/{style}/{stem}.svg",
                                        f"emoji.json lists no {tone} skin tone for {concept}"))
                    continue
                code = variation["unified"].upper()
            cat.sources.append(Source(f"fluent-{style}", "fluentui-emoji",
                                      folder / f"{stem}.svg", code, concept, tone,
                                      entry.get("category") or "", entry.get("subcategory") or "",
                                      reason))
    return cat


# ------------------------------------------------------------------------------- captions


def captions_for(name: str, keywords: list[str], group: str, subgroup: str, lang: str) -> list[str]:
    """The caption strings of one image in one language: the name; name and keywords; keywords
    alone; name and group (and subgroup, English only). Duplicates dropped, order kept."""
    sep = ", " if lang == "en" else "，"
    extra = [k for k in keywords if k != name]
    out = [name]
    if extra:
        out += [name + sep + sep.join(extra), sep.join(keywords)]
    if lang == "en" and group:
        out.append(f"{name}, {group.lower()}, {subgroup.replace('-', ' ')}")
    elif lang == "zh" and group in GROUPS_ZH:
        out.append(f"{name}{sep}{GROUPS_ZH[group]}")
    return list(dict.fromkeys(c for c in out if c.strip()))


def assign_captions(records: list[dict]) -> None:
    """Fill ``captions_<lang>`` and ``heldout_captions_<lang>`` of each record (see the module
    docstring): held-out strings are decided per (concept, string), then released where an image
    would be left with no training caption, so a string is held out for all or none of a
    concept's images."""
    for lang in ("en", "zh"):
        by_concept: dict[str, list[dict]] = {}
        for r in records:
            by_concept.setdefault(r["concept"], []).append(r)
        for concept, group in by_concept.items():
            held: set[str] = set()
            if group[0]["split"] == "train":
                held = {c for r in group for c in r[f"_all_{lang}"]
                        if caption_held_out(lang, concept, c)}
                changed = True
                while changed:  # release strings until every image keeps a training caption
                    changed = False
                    for r in group:
                        mine = r[f"_all_{lang}"]
                        if mine and all(c in held for c in mine):
                            held.discard(mine[0])
                            changed = True
            for r in group:
                mine = r[f"_all_{lang}"]
                r[f"captions_{lang}"] = [c for c in mine if c not in held]
                r[f"heldout_captions_{lang}"] = [c for c in mine if c in held]
    for r in records:
        del r["_all_en"], r["_all_zh"]


# ------------------------------------------------------------------------------ decoding


class _Rejected(Exception):
    """A file that cannot become an image; the message is the reason recorded for it."""


def _on_white(img: Image.Image, size: int) -> np.ndarray:
    """Any Pillow image -> (size, size, 3) uint8, transparent pixels composited on white."""
    rgba = img.convert("RGBA")
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def decode_png(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """PNG bytes -> (size, size, 3) uint8 on white; raises ``_Rejected`` with the reason."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                raise _Rejected(f"not a PNG (Pillow reads it as {img.format})")
            if max(img.size) > 16 * size:
                raise _Rejected(f"{img.size[0]}x{img.size[1]} is larger than {16 * size} px")
            img.load()
            return _on_white(img, size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _Rejected(f"unreadable PNG: {exc}") from None


class _Timeout(Exception):
    pass


def _refuse_urls(referenced: list[str]):
    """A cairosvg ``url_fetcher`` that answers only ``data:`` URLs and notes every other one."""
    from cairosvg.url import fetch

    def fetcher(url: str, resource_type: str) -> bytes:
        if url and url.startswith("data:"):
            return fetch(url, resource_type)
        referenced.append(url)
        return b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>'
    return fetcher


def rasterise_svg(data: bytes, size: int = IMAGE_SIZE, seconds: float = RENDER_SECONDS) -> np.ndarray:
    """SVG bytes -> (size, size, 3) uint8 on white, with cairosvg (``unsafe=False``).

    Raises ``_Rejected`` for a malformed SVG, one that refers to anything but a ``data:`` URL or
    a fragment of itself (nothing is fetched or read), or one that takes over ``seconds``
    (interrupted by SIGALRM in the main thread; elsewhere, and when the alarm's exception is
    swallowed, rejected once it returns).
    """
    try:
        from cairosvg.surface import PNGSurface
    except (ImportError, OSError):  # OSError: cairocffi found no cairo library
        raise DataError("rasterising the Fluent emoji SVGs needs cairosvg: pip install "
                        "'aigc[emoji]' (and the cairo library, Debian libcairo2)") from None
    referenced: list[str] = []
    start = time.monotonic()
    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if timed:
        def _alarm(signum, frame):
            raise _Timeout()
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        # svg2png() takes no url_fetcher; PNGSurface.convert passes it on to the parser's Tree
        png = PNGSurface.convert(bytestring=data, output_width=size, output_height=size,
                                 unsafe=False, url_fetcher=_refuse_urls(referenced))
    except _Timeout:
        raise _Rejected(f"rasterising took over {seconds:g} s") from None
    except Exception as exc:  # cairosvg raises many types for bad input (XML, CSS, values)
        raise _Rejected(f"malformed SVG ({type(exc).__name__}: {str(exc)[:120]})") from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    # the alarm's exception is lost when it lands in a gc callback or __del__: check the clock too
    if time.monotonic() - start > seconds:
        raise _Rejected(f"rasterising took over {seconds:g} s")
    if referenced:
        raise _Rejected(f"refers to an external resource {referenced[0][:120]!r} (not fetched)")
    with Image.open(io.BytesIO(png)) as img:
        return _on_white(img, size)


def _read_bounded(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _Rejected(f"{size} bytes is over the {MAX_FILE_BYTES}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise _Rejected(f"unreadable: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------- building


def cache_root() -> Path:
    return Path(os.environ.get("AIGC_CACHE_DIR") or Path.home() / ".cache" / "aigc") / "emoji"


def cache_key(versions: dict[str, str]) -> str:
    return (f"v{FORMAT_VERSION}-google{versions['emoji-datasource-google']}"
            f"-fluent{versions['fluentui-emoji']}-cldr{versions['cldr-annotations-full']}"
            f"-{versions['cldr-annotations-derived-full']}")


def build(root: Path, out: Path, *, progress: bool = True,
          aliases: dict[str, tuple[str, str]] | None = None) -> dict:
    """Read, caption and split every image under the npm folder ``root``; write the prepared set
    into ``out`` (written to a temporary folder first, then renamed). Returns the build summary."""
    from tqdm.auto import tqdm

    versions = package_versions(root)
    for name, pinned in PACKAGES.items():
        if versions[name] != pinned:
            warnings.warn(f"npm {name} is {versions[name]}, aigc was checked with {pinned}; "
                          "the counts in docs/emoji.md may differ", stacklevel=2)
    en, zh = load_annotations(root, "en"), load_annotations(root, "zh")
    cat = catalogue(root, en, load_aliases() if aliases is None else aliases)
    images, records, skipped = [], [], list(cat.skipped)
    for src in tqdm(cat.sources, desc="emoji", unit="image", disable=not progress):
        rel = src.path.relative_to(root).as_posix()
        try:
            data = _read_bounded(src.path)
            pixels = decode_png(data) if src.style == "noto" else rasterise_svg(data)
        except _Rejected as exc:
            skipped.append((rel, str(exc)))
            continue
        chars = _chars(src.unified)
        name_en, kw_en = en.get(chars, (None, []))
        name_zh, kw_zh = zh.get(chars, (None, []))
        record = {
            "index": len(records), "concept": src.concept,
            "concept_name": cat.concept_names.get(src.concept, src.concept),
            "unified": src.unified, "emoji": "".join(chr(int(c, 16)) for c in src.unified.split("-")),
            "style": src.style, "skin_tone": src.skin_tone, "group": src.group,
            "subgroup": src.subgroup, "package": src.package, "version": versions[src.package],
            "file": rel, "licence": LICENCES[src.package], "caption_licence": CAPTION_LICENCE,
            "alias": src.alias, "split": concept_split(src.concept),
            "name_en": name_en, "keywords_en": kw_en, "name_zh": name_zh, "keywords_zh": kw_zh,
            "_all_en": captions_for(name_en, kw_en, src.group, src.subgroup, "en") if name_en else [],
            "_all_zh": captions_for(name_zh, kw_zh, src.group, src.subgroup, "zh") if name_zh else [],
        }
        records.append(record)
        images.append(pixels)
    if not records:
        raise DataError(f"dataset 'emoji': no image could be read under {root}")
    assign_captions(records)
    summary = summarise(records)
    summary.update(versions=versions, skipped=skipped, aliased=cat.aliased,
                   format_version=FORMAT_VERSION, image_size=IMAGE_SIZE)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez_compressed(tmp / "images.npz", images=np.stack(images))
    with open(tmp / "records.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    (tmp / "build.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1),
                                    encoding="utf-8")
    (tmp / "CARD.md").write_text(dataset_card(summary), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return summary


def summarise(records: list[dict]) -> dict:
    """Counts: images and concepts per split and style, and images by caption language."""
    def counts(rs: list[dict]) -> dict:
        en = sum(1 for r in rs if r["name_en"])
        zh = sum(1 for r in rs if r["name_zh"])
        both = sum(1 for r in rs if r["name_en"] and r["name_zh"])
        return {"images": len(rs), "concepts": len({r["concept"] for r in rs}),
                "captions_en": en, "captions_zh": zh, "captions_both": both,
                "captions_none": sum(1 for r in rs if not r["name_en"] and not r["name_zh"])}

    out = {"total": counts(records),
           "splits": {s: counts([r for r in records if r["split"] == s]) for s in SPLITS},
           "styles": {s: counts([r for r in records if r["style"] == s]) for s in STYLES}}
    train = [r for r in records if r["split"] == "train"]
    out["caption_strings"] = {
        lang: {"train": len({(r["concept"], c) for r in train for c in r[f"captions_{lang}"]}),
               "heldout": len({(r["concept"], c) for r in train
                               for c in r[f"heldout_captions_{lang}"]})}
        for lang in ("en", "zh")}
    out["skin_tones"] = dict(Counter(r["skin_tone"] or "none" for r in records))
    return out


def info_lines(summary: dict) -> list[str]:
    """The summary as the table ``aigc data info emoji`` prints."""
    head = f"{'':<14} {'images':>7} {'concepts':>8} {'en':>6} {'zh':>6} {'both':>6} {'none':>5}"
    lines = [head]
    rows = [(s, summary["splits"][s]) for s in SPLITS] + [("all", summary["total"])] + [
        (s, summary["styles"][s]) for s in STYLES]
    for label, c in rows:
        lines.append(f"{label:<14} {c['images']:>7} {c['concepts']:>8} {c['captions_en']:>6} "
                     f"{c['captions_zh']:>6} {c['captions_both']:>6} {c['captions_none']:>5}")
    for lang, c in summary["caption_strings"].items():
        lines.append(f"caption strings ({lang}) of train concepts: {c['train']} for training, "
                     f"{c['heldout']} held out")
    lines.append(f"skipped files: {len(summary['skipped'])}; Fluent files matched through the "
                 f"alias table: {len(summary['aliased'])}")
    lines.append("sources: " + ", ".join(f"{k}@{v}" for k, v in summary["versions"].items()))
    return lines


def dataset_card(summary: dict) -> str:
    """The dataset card written next to the prepared data (licences, sources, counts)."""
    notices = resources.files("aigc").joinpath("assets/emoji/NOTICES.md").read_text(encoding="utf-8")
    body = "\n".join(["# Dataset card: emoji", "",
                      "Built by aigc (aigc.data.emoji); see docs/emoji.md for the method.", "",
                      "```", *info_lines(summary), "```", ""])
    return body + "\n" + notices


# ------------------------------------------------------------------- retrieval evaluation pairs

RETRIEVAL_GROUP = 100  # captions a prompt competes with (100 distinct concepts)


def retrieval_pairs(records: list[dict], *, held_out: bool, langs: tuple[str, ...] = ("en",),
                    seed: int = 0, group: int = RETRIEVAL_GROUP
                    ) -> list[tuple[int, tuple[str, ...]]]:
    """``[(record index, (caption per language in langs))]``: one image per concept, in groups
    of ``group`` distinct concepts (the retrieval protocol of the emoji scorer and of the
    text-to-image evaluation).

    Concepts whose images have captions in every language of ``langs`` (the held-out strings
    ``heldout_captions_<lang>`` when ``held_out``, else ``captions_<lang>``) are shuffled with a
    generator seeded with ``seed`` and cut into groups (leftovers dropped); per concept one image
    is drawn, then one caption per language, in ``langs`` order. With one language this is the
    draw ``benchmarks/emoji_scorer.py`` has always made."""
    if not langs or any(lang not in ("en", "zh") for lang in langs):
        raise DataError(f"langs must be a non-empty tuple of 'en'/'zh', got {langs!r}")
    if group < 2:
        raise DataError(f"group must be >= 2 (a caption needs rivals), got {group}")
    gen = torch.Generator().manual_seed(seed)
    keys = [f"heldout_captions_{lang}" if held_out else f"captions_{lang}" for lang in langs]
    by_concept: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if all(r[k] for k in keys):
            by_concept.setdefault(r["concept"], []).append(i)
    concepts = sorted(by_concept)
    order = torch.randperm(len(concepts), generator=gen).tolist()
    out = []
    for c in (concepts[j] for j in order[: len(order) // group * group]):
        options = by_concept[c]
        i = options[int(torch.randint(len(options), (1,), generator=gen))]
        caps = []
        for k in keys:
            caps.append(records[i][k][int(torch.randint(len(records[i][k]), (1,), generator=gen))])
        out.append((i, tuple(caps)))
    return out


# ------------------------------------------------------------------------------- loading


@dataclass
class EmojiImages(ImageDataset):
    """One split of ``emoji``: ``labels`` index ``class_names`` (one English name per concept);
    ``records[i]`` holds image i's captions, source, licence and concept."""

    records: list[dict] = field(default_factory=list)


def prepared_dir(root: Path | None = None) -> Path:
    """The cache folder of the prepared set for the installed packages (built if missing)."""
    root = npm_modules_dir() if root is None else root
    out = cache_root() / cache_key(package_versions(root))
    if not (out / "records.jsonl").is_file():
        print(f"emoji: building the prepared set once into {out} (a few minutes)")
        build(root, out)
    return out


def _existing_prepared() -> Path | None:
    """A prepared set for the pinned versions, usable without the npm packages."""
    path = cache_root() / cache_key(PACKAGES)
    return path if (path / "records.jsonl").is_file() else None


def _locate() -> Path:
    found = _existing_prepared()
    return found if found is not None else prepared_dir()


_LOADED: dict[str, tuple[np.ndarray, list[dict]]] = {}


def load_prepared(path: Path) -> tuple[np.ndarray, list[dict]]:
    """``(images (N, 64, 64, 3) uint8, records)`` of a prepared folder, memoised per path."""
    key = str(path)
    if key not in _LOADED:
        try:
            with np.load(path / "images.npz", allow_pickle=False) as z:
                images = z["images"]
            with open(path / "records.jsonl", encoding="utf-8") as fh:
                records = [json.loads(line) for line in fh]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path} is not a complete prepared emoji set ({exc}); delete it and "
                            "run `aigc data prepare emoji`") from None
        if len(images) != len(records):
            raise DataError(f"{path}: {len(images)} images but {len(records)} records; delete it "
                            "and run `aigc data prepare emoji`")
        _LOADED.clear()
        _LOADED[key] = (images, records)
    return _LOADED[key]


def load_emoji(split: str = "train", path: Path | None = None, *,
               skin_tones: bool = True) -> EmojiImages:
    """One split of the ``emoji`` set (building it once if the npm packages are there).

    ``skin_tones=False`` keeps only the untoned images (about half the set: the toned variants
    are almost all of group "People & Body", which they would otherwise dominate)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = _locate() if path is None else Path(path)
    images, records = load_prepared(path)
    concepts = sorted({r["concept"] for r in records})
    index = {c: i for i, c in enumerate(concepts)}
    names = {r["concept"]: r["concept_name"] for r in records}
    picked = [i for i, r in enumerate(records)
              if r["split"] == split and (skin_tones or r["skin_tone"] is None)]
    x = torch.from_numpy(images[picked]).permute(0, 3, 1, 2).contiguous()  # (N, 3, 64, 64)
    labels = torch.tensor([index[records[i]["concept"]] for i in picked], dtype=torch.int64)
    return EmojiImages("emoji", split, x, labels, [names[c] for c in concepts], source=str(path),
                       records=[records[i] for i in picked])


def emoji_available() -> tuple[bool, str]:
    """Whether ``emoji`` loads here: a prepared set exists, or the npm packages do."""
    if _existing_prepared() is not None:
        return True, ""
    try:
        npm_modules_dir()
        return True, ""
    except DataError as exc:
        return False, str(exc)


# ---------------------------------------------------------------------------- contact sheet


def contact_sheet(path: Path, out: Path, n: int = 24, columns: int = 6, seed: int = 0) -> Path:
    """A PNG of ``n`` images (spread over styles and groups) with their en/zh names beneath."""
    from PIL import ImageDraw, ImageFont

    images, records = load_prepared(path)
    rng = np.random.default_rng(seed)
    captioned = [i for i, r in enumerate(records) if r["name_en"] and r["name_zh"]
                 and not r["skin_tone"]]
    picks = sorted(rng.choice(captioned, size=min(n, len(captioned)), replace=False).tolist())
    font_path = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
    try:
        font = ImageFont.truetype(font_path, 11)
    except OSError:
        raise DataError(f"the contact sheet needs the CJK font {font_path} (Debian "
                        "fonts-noto-cjk)") from None
    cell_w, cell_h = 150, IMAGE_SIZE + 48
    rows = (len(picks) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(picks):
        r, x, y = records[i], (k % columns) * cell_w, (k // columns) * cell_h
        sheet.paste(Image.fromarray(images[i]), (x + (cell_w - IMAGE_SIZE) // 2, y + 2))
        for line, text in enumerate((r["name_en"], r["name_zh"], r["style"])):
            while draw.textlength(text, font=font) > cell_w - 6 and len(text) > 3:
                text = text[:-2] + "…"
            draw.text((x + 3, y + IMAGE_SIZE + 4 + 14 * line), text, fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out
