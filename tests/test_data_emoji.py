"""The ``emoji`` image set (aigc.data.emoji) on a tiny fixture laid out like the real npm packages,
plus checks on the real packages when they are installed."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from aigc.cli import main
from aigc.data import emoji
from aigc.data.images import load_images
from aigc.errors import DataError

SVG_NS = 'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'


def _svg(colour: str) -> str:
    return (f'<svg {SVG_NS} viewBox="0 0 32 32"><circle cx="16" cy="16" r="12" '
            f'fill="{colour}"/></svg>')


def _png(colour, size=64) -> bytes:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))  # transparent corners -> white
    img.paste(Image.new("RGBA", (size // 2, size // 2), colour), (size // 4, size // 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _cldr(root, package, folder, key, lang, entries):
    path = root / package / folder / lang / "annotations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({key: {"identity": {"language": lang}, "annotations": entries}},
                               ensure_ascii=False), encoding="utf-8")


def _entry(unified, name, category, subcategory, skins=()):
    e = {"name": name.upper(), "unified": unified, "image": unified.lower() + ".png",
         "short_name": name.replace(" ", "_"), "short_names": [name.replace(" ", "_")],
         "category": category, "subcategory": subcategory, "has_img_google": True}
    if skins:
        e["skin_variations"] = {
            tone: {"unified": f"{unified}-{tone}", "image": f"{unified}-{tone}".lower() + ".png",
                   "has_img_google": True} for tone in skins}
    return e


@pytest.fixture
def npm(tmp_path):
    """A node_modules folder with the four packages' layout and a handful of emoji:
    waving hand (+2 skin tones), gorilla, vertical traffic light, enraged face (Fluent calls it
    'pouting-face': an alias), melting face (English captions only), a test emoji with no
    captions, and a corrupt PNG."""
    root = tmp_path / "node_modules"
    for name, version in emoji.PACKAGES.items():
        (root / name).mkdir(parents=True)
        (root / name / "package.json").write_text(json.dumps({"name": name, "version": version}))
    g = root / "emoji-datasource-google"
    entries = [
        _entry("1F44B", "waving hand", "People & Body", "hand-fingers-open", ("1F3FB", "1F3FD")),
        _entry("1F98D", "gorilla", "Animals & Nature", "animal-mammal"),
        _entry("1F6A6", "vertical traffic light", "Travel & Places", "transport-ground"),
        _entry("1F621", "pouting face", "Smileys & Emotion", "face-negative"),
        _entry("1FAE0", "melting face", "Smileys & Emotion", "face-sleepy"),
        _entry("1F9EA", "test tube", "Objects", "science"),
        _entry("1F34E", "red apple", "Food & Drink", "food-fruit"),
    ]
    (g / "emoji.json").write_text(json.dumps(entries))
    (g / "img/google/64").mkdir(parents=True)
    for e in entries:
        for v in [e, *e.get("skin_variations", {}).values()]:
            (g / "img/google/64" / v["image"]).write_bytes(_png((200, 30, 30, 255)))
    (g / "img/google/64/1f34e.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"corrupt" * 10)
    for style in ("flat", "modern"):
        icons = root / "fluentui-emoji/icons" / style
        icons.mkdir(parents=True)
        for stem in ("waving-hand-default", "waving-hand-light", "gorilla",
                     "vertical-traffic-light", "pouting-face", "melting-face", "unknown-thing"):
            (icons / f"{stem}.svg").write_text(_svg("#3060c0"))
    (root / "fluentui-emoji/icons/modern/gorilla.svg").write_text("<svg><path d=")  # malformed
    en = {"👋": {"default": ["hand", "wave"], "tts": ["waving hand"]},
          "🦍": {"default": ["animal", "gorilla"], "tts": ["gorilla"]},
          "🚦": {"default": ["light", "signal"], "tts": ["vertical traffic light"]},
          "😡": {"default": ["angry", "face"], "tts": ["enraged face"]},
          "🫠": {"default": ["melt"], "tts": ["melting face"]},
          "🍎": {"default": ["apple"], "tts": ["red apple"]}}
    zh = {"👋": {"default": ["手", "挥手"], "tts": ["挥手"]},
          "🦍": {"default": ["动物", "大猩猩"], "tts": ["大猩猩"]},
          "🚦": {"default": ["信号灯"], "tts": ["竖直信号灯"]},
          "😡": {"default": ["生气"], "tts": ["怒火中烧"]},
          "🍎": {"default": ["苹果"], "tts": ["红苹果"]}}
    _cldr(root, "cldr-annotations-full", "annotations", "annotations", "en", en)
    _cldr(root, "cldr-annotations-full", "annotations", "annotations", "zh", zh)
    _cldr(root, "cldr-annotations-derived-full", "annotationsDerived", "annotationsDerived", "en", {
        "👋🏻": {"default": ["hand", "light skin tone"], "tts": ["waving hand: light skin tone"]},
        "👋🏽": {"default": ["hand", "medium skin tone"], "tts": ["waving hand: medium skin tone"]}})
    _cldr(root, "cldr-annotations-derived-full", "annotationsDerived", "annotationsDerived", "zh", {
        "👋🏻": {"default": ["手", "较浅肤色"], "tts": ["挥手: 较浅肤色"]}})
    return root


@pytest.fixture
def built(npm, tmp_path):
    out = tmp_path / "prepared"
    summary = emoji.build(npm, out, progress=False)
    records = [json.loads(line) for line in (out / "records.jsonl").open(encoding="utf-8")]
    return out, summary, records


def test_slug_matches_fluent_file_names():
    assert emoji.slug("one o’clock") == "one-oclock"
    assert emoji.slug("piñata") == "pinata"
    assert emoji.slug("keycap: *") == "keycap"  # why keycap-asterisk needs the alias table
    assert emoji.slug("man: blond hair") == "man-blond-hair"


def test_committed_alias_table_is_well_formed():
    aliases = emoji.load_aliases()
    assert len(aliases) == 33
    assert aliases["pouting-face"] == ("1F621", "CLDR renamed 'pouting face' (U+1F621)")
    assert all(reason.strip() for _, reason in aliases.values())


def test_alias_table_rejects_a_bad_line(tmp_path):
    bad = tmp_path / "a.tsv"
    bad.write_text("pouting-face\tnot-hex\tenraged face\twhy\n")
    with pytest.raises(DataError, match="line 1 is not"):
        emoji.load_aliases(bad)


def test_build_counts_sources_captions_and_skips(built):
    out, summary, records = built
    # noto: 6 readable entries + 2 skin tones (the corrupt apple is skipped) = 8;
    # fluent flat: 6 files matched (unknown-thing skipped); modern: 5 (gorilla malformed)
    assert summary["styles"]["noto"]["images"] == 8
    assert summary["styles"]["fluent-flat"]["images"] == 6
    assert summary["styles"]["fluent-modern"]["images"] == 5
    assert summary["total"]["images"] == len(records) == 19
    assert summary["total"]["concepts"] == 6
    # English: every image but the test tube's (1, noto only); Chinese: not the melting face
    # (3 images), not the test tube, not the medium-tone hand (CLDR zh fixture lacks it)
    t = summary["total"]
    assert (t["captions_en"], t["captions_zh"], t["captions_both"], t["captions_none"]) == (
        18, 14, 14, 1)
    skipped = dict(summary["skipped"])
    assert skipped["emoji-datasource-google/img/google/64/1f34e.png"].startswith("unreadable PNG")
    assert skipped["fluentui-emoji/icons/modern/gorilla.svg"].startswith("malformed SVG")
    assert "alias table has no entry" in skipped["fluentui-emoji/icons/flat/unknown-thing.svg"]
    assert len(summary["skipped"]) == 4
    # the "-light" of "vertical-traffic-light" is not a skin tone; "waving-hand-light" is
    traffic = [r for r in records if r["concept"] == "1F6A6" and r["style"] == "fluent-flat"]
    assert traffic[0]["skin_tone"] is None and traffic[0]["name_en"] == "vertical traffic light"
    light = [r for r in records if r["file"].endswith("flat/waving-hand-light.svg")][0]
    assert light["unified"] == "1F44B-1F3FB" and light["concept"] == "1F44B"
    assert light["name_en"] == "waving hand: light skin tone" and light["name_zh"] == "挥手: 较浅肤色"
    card = (out / "CARD.md").read_text(encoding="utf-8")
    assert "Apache License" in card and "MIT License" in card and "UNICODE LICENSE V3" in card


def test_every_record_names_its_source_and_licence(built):
    _, _, records = built
    for r in records:
        assert r["package"] in emoji.PACKAGES and r["version"] == emoji.PACKAGES[r["package"]]
        assert r["licence"] == emoji.LICENCES[r["package"]]
        assert r["caption_licence"].startswith("Unicode-3.0")
        assert r["file"].startswith(r["package"] + "/")
    noto = [r for r in records if r["style"] == "noto"]
    assert all(r["licence"].startswith("Apache-2.0") for r in noto)
    assert summary_aliases(built) == {("fluentui-emoji/icons/flat/pouting-face.svg", "pouting-face"),
                                      ("fluentui-emoji/icons/modern/pouting-face.svg",
                                       "pouting-face")}
    aliased = [r for r in records if r["alias"]]
    assert {r["file"].rsplit("/", 1)[1] for r in aliased} == {"pouting-face.svg"}
    assert {r["name_en"] for r in aliased} == {"enraged face"}


def summary_aliases(built):
    return {tuple(a) for a in built[1]["aliased"]}


def test_captions_in_both_languages_and_groups(built):
    _, _, records = built
    g = [r for r in records if r["concept"] == "1F98D"][0]
    every_en = g["captions_en"] + g["heldout_captions_en"]
    assert set(every_en) == {"gorilla", "gorilla, animal", "animal, gorilla",
                             "gorilla, animals & nature, animal mammal"}
    every_zh = g["captions_zh"] + g["heldout_captions_zh"]
    assert set(every_zh) == {"大猩猩", "大猩猩，动物", "动物，大猩猩", "大猩猩，动物和自然"}
    none = [r for r in records if r["concept"] == "1F9EA"][0]
    assert none["captions_en"] == none["captions_zh"] == [] and none["name_en"] is None


def test_images_are_rgb_on_white(built):
    out, _, records = built
    ds = emoji.load_emoji("train", path=out) if any(r["split"] == "train" for r in records) else None
    images, _ = emoji.load_prepared(out)
    assert images.shape == (19, 64, 64, 3) and images.dtype == np.uint8
    noto = [i for i, r in enumerate(records) if r["style"] == "noto"]
    assert (images[noto[0], 0, 0] == 255).all()  # transparent corner -> white
    assert tuple(images[noto[0], 32, 32]) == (200, 30, 30)
    flat = [i for i, r in enumerate(records) if r["style"] == "fluent-flat"]
    assert (images[flat[0], 0, 0] == 255).all() and images[flat[0], 32, 32, 2] > 150  # blue disc
    if ds is not None:
        untoned = emoji.load_emoji("train", path=out, skin_tones=False)
        assert all(r["skin_tone"] is None for r in untoned.records)
        assert len(untoned) == sum(1 for r in ds.records if r["skin_tone"] is None)
        assert ds.images.shape[1:] == (3, 64, 64) and len(ds.records) == len(ds)
        assert all(ds.class_names[label] == r["concept_name"]
                   for label, r in zip(ds.labels.tolist(), ds.records))


def test_concept_split_is_fixed_by_hash_and_proportions_hold():
    concepts = [f"{0x1F300 + i:X}" for i in range(4000)]
    first = [emoji.concept_split(c) for c in concepts]
    assert first == [emoji.concept_split(c) for c in concepts]  # a pure function of the concept
    share = {s: first.count(s) / len(first) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.10) < 0.02 and abs(share["val"] - 0.05) < 0.015
    assert emoji.concept_split("1F44B") == emoji.concept_split("1F44B")


def test_no_concept_or_caption_leak(built, npm, tmp_path):
    _, _, records = built
    split_of = {}
    for r in records:
        assert split_of.setdefault(r["concept"], r["split"]) == r["split"]  # one split per concept
    for lang in ("en", "zh"):
        by_concept: dict[str, tuple[set, set]] = {}
        for r in records:
            train, held = by_concept.setdefault(r["concept"], (set(), set()))
            train.update(r[f"captions_{lang}"])
            held.update(r[f"heldout_captions_{lang}"])
            if r[f"name_{lang}"]:
                assert r[f"captions_{lang}"], r  # every captioned image keeps a training caption
            if r["split"] != "train":
                assert r[f"heldout_captions_{lang}"] == []
        assert all(not (train & held) for train, held in by_concept.values())
    again = emoji.build(npm, tmp_path / "again", progress=False)
    assert (tmp_path / "again/records.jsonl").read_bytes() == (
        tmp_path / "prepared/records.jsonl").read_bytes()
    assert again["splits"] == emoji.summarise(records)["splits"]


def test_caption_holdout_on_many_concepts():
    records = []
    for i in range(300):
        concept = f"{0x1F400 + i:X}"
        for tone in (None, "light"):
            name = f"thing {i}" + (": light skin tone" if tone else "")
            caps = emoji.captions_for(name, ["kw", f"kw{i}"], "Objects", "tool", "en")
            records.append({"concept": concept, "split": "train", "_all_en": caps,
                            "_all_zh": []})
    emoji.assign_captions(records)
    held = sum(len(r["heldout_captions_en"]) for r in records)
    total = held + sum(len(r["captions_en"]) for r in records)
    assert 0.12 < held / total < 0.28  # about 20% of caption strings are held out
    assert all(r["captions_en"] for r in records)


def test_cairosvg_default_does_not_read_local_files(tmp_path):
    """The guard the dataset relies on: cairosvg's unsafe=False serves only data: URLs. The
    control (unsafe=True) shows that the same SVG would otherwise paint the local file."""
    import cairosvg

    red = tmp_path / "red.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(red)
    svg = (f'<svg {SVG_NS} width="16" height="16"><image xlink:href="file://{red}" '
           'width="16" height="16"/></svg>').encode()

    def red_pixels(png: bytes) -> int:
        a = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
        return int(((a[..., 0] > 200) & (a[..., 1] < 50) & (a[..., 3] > 200)).sum())

    assert red_pixels(cairosvg.svg2png(bytestring=svg)) == 0  # default: unsafe=False
    assert red_pixels(cairosvg.svg2png(bytestring=svg, unsafe=True)) > 100  # the control


@pytest.mark.parametrize("href", ["file:///etc/hostname", "/etc/hostname",
                                  "http://example.invalid/x.png", "other.svg#part"])
def test_svg_with_external_reference_is_rejected_unfetched(href):
    svg = (f'<svg {SVG_NS} width="8" height="8"><image xlink:href="{href}" width="8" '
           'height="8"/></svg>').encode()
    with pytest.raises(emoji._Rejected, match="refers to an external resource"):
        emoji.rasterise_svg(svg)


def test_svg_with_data_url_and_internal_refs_is_fine():
    inner = _png((0, 200, 0, 255), size=8)
    import base64

    data = base64.b64encode(inner).decode()
    svg = (f'<svg {SVG_NS} viewBox="0 0 8 8"><defs><linearGradient id="g"><stop offset="0" '
           'stop-color="#00f"/></linearGradient></defs><rect width="8" height="4" fill="url(#g)"/>'
           f'<image xlink:href="data:image/png;base64,{data}" y="4" width="8" height="4"/></svg>')
    img = emoji.rasterise_svg(svg.encode())
    assert img[10, 32, 2] > 200 and img[10, 32, 0] < 50  # the gradient's blue, top half
    assert img[50, 32, 1] > 150 and img[50, 32, 0] < 50  # the embedded PNG's green, bottom half


def test_svg_bad_inputs_are_rejected_with_a_reason(tmp_path, monkeypatch):
    with pytest.raises(emoji._Rejected, match="malformed SVG"):
        emoji.rasterise_svg(b"<svg><g>")
    xxe = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>')
    with pytest.raises(emoji._Rejected, match="EntitiesForbidden"):
        emoji.rasterise_svg(xxe)
    many = "".join(f'<circle cx="{i % 32}" cy="{i // 32}" r="3" fill="#f00"/>' for i in range(3000))
    with pytest.raises(emoji._Rejected, match="took over"):
        emoji.rasterise_svg(f'<svg {SVG_NS} viewBox="0 0 32 32">{many}</svg>'.encode(),
                            seconds=0.001)
    big = tmp_path / "big.svg"
    big.write_bytes(b" " * 100)
    monkeypatch.setattr(emoji, "MAX_FILE_BYTES", 50)
    with pytest.raises(emoji._Rejected, match="over the 50-byte limit"):
        emoji._read_bounded(big)


def test_png_bad_inputs_are_rejected_with_a_reason():
    with pytest.raises(emoji._Rejected, match="unreadable PNG"):
        emoji.decode_png(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    with pytest.raises(emoji._Rejected, match="not a PNG"):
        emoji.decode_png(buf.getvalue())
    assert emoji.decode_png(_png((1, 2, 3, 255), size=128)).shape == (64, 64, 3)


def test_missing_packages_give_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIGC_EMOJI_NPM_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError) as exc:
        load_images("emoji", "train")
    message = str(exc.value)
    assert "\n" not in message and "make data-emoji" in message
    assert all(f"{n}@{v}" in message for n, v in emoji.PACKAGES.items())
    assert main(["data", "info", "emoji"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make data-emoji" in err[0]
    assert main(["data", "prepare", "mnist"]) == 2
    assert "has no prepared cache" in capsys.readouterr().err


def test_cli_prepare_info_and_sheet_on_the_fixture(npm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIGC_EMOJI_NPM_DIR", str(npm))
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["data", "prepare", "emoji"]) == 0
    out = capsys.readouterr().out
    assert "fluent-flat" in out and "caption strings (zh)" in out
    sheet = tmp_path / "sheet.png"
    assert main(["data", "info", "emoji", "--sheet", str(sheet)]) == 0
    assert Image.open(sheet).size[0] == 6 * 150
    ds = load_images("emoji", "train")
    assert ds.name == "emoji" and ds.images.shape[1:] == (3, 64, 64)


# ------------------------------------------------------------------ the real npm packages


def _real_root():
    try:
        return emoji.npm_modules_dir()
    except DataError as exc:
        pytest.skip(f"npm packages absent ({exc})")


def test_real_packages_every_fluent_file_meets_an_emoji(monkeypatch):
    monkeypatch.delenv("AIGC_EMOJI_NPM_DIR", raising=False)
    root = _real_root()
    if emoji.package_versions(root) != emoji.PACKAGES:
        pytest.skip(f"installed versions {emoji.package_versions(root)} are not the pinned ones")
    en = emoji.load_annotations(root, "en")
    cat = emoji.catalogue(root, en, emoji.load_aliases())
    styles = {s: sum(1 for x in cat.sources if x.style == s) for s in emoji.STYLES}
    assert styles == {"noto": 3786, "fluent-flat": 3145, "fluent-modern": 3145}
    assert cat.skipped == []
    # every alias row is used by at least one file (a row that matches nothing is stale)
    assert {name for _, name in cat.aliased} == set(emoji.load_aliases())
    assert len(cat.aliased) == 214
    assert len({x.concept for x in cat.sources}) == 1911


def test_malformed_package_files_name_the_file(npm):
    emoji_json = npm / "emoji-datasource-google/emoji.json"
    emoji_json.write_text(json.dumps([{"name": "NO CODE POINTS"}]))
    with pytest.raises(DataError, match=r"emoji\.json: entry 0 is not an emoji record"):
        emoji.catalogue(npm, {}, {})
    zh = npm / "cldr-annotations-full/annotations/zh/annotations.json"
    zh.write_text("{not json")
    with pytest.raises(DataError, match="zh/annotations.json could not be read as JSON"):
        emoji.load_annotations(npm, "zh")
    zh.write_text(json.dumps({"something": {}}))
    with pytest.raises(DataError, match="is not a CLDR annotations file"):
        emoji.load_annotations(npm, "zh")
