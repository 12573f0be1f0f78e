"""`tang-poems-full` (npm chinese-poetry): reading, form lines, splits, and the form check."""

import json

import pytest

from aigc.data.text import (
    VERSE_FORMS,
    chinese_poetry_dir,
    is_regulated_verse,
    load_corpus,
    poem_body,
    verse_form,
)
from aigc.errors import DataError

QUATRAIN = "白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。"
OCTAVE7 = "\n".join(["一二三四五六七，一二三四五六七。"] * 4)
OLD_STYLE = "君不見黃河之水天上來，奔流到海不復回。"


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    root = tmp_path / "chinese-poetry"
    (root / "dist" / "quantangshi").mkdir(parents=True)
    poems = [
        {"title": "登鸛雀樓", "author": "王之渙", "paragraphs": QUATRAIN.split("\n")},
        {"title": "八句", "author": "某", "paragraphs": OCTAVE7.split("\n")},
        {"title": "將進酒", "author": "李白", "paragraphs": [OLD_STYLE]},
        {"title": "空", "author": "無", "paragraphs": []},  # empty: counted, dropped
        {"title": "登鸛雀樓", "author": "王之渙", "paragraphs": QUATRAIN.split("\n")},  # duplicate
    ]
    (root / "dist" / "quantangshi" / "poet.tang.0.json").write_text(
        json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setenv("AIGC_CHINESE_POETRY_DIR", str(root))
    load_corpus.cache_clear()
    yield root
    load_corpus.cache_clear()


def test_forms_are_named_by_line_count_and_length():
    assert verse_form(QUATRAIN) == "五言绝句"
    assert verse_form(OCTAVE7) == "七言律诗"
    assert verse_form(OLD_STYLE) == "古诗"
    assert set(VERSE_FORMS) >= {verse_form(QUATRAIN), verse_form(OCTAVE7), verse_form(OLD_STYLE)}


def test_corpus_heads_each_poem_with_its_form_and_reports_cleaning(fake_package):
    corpus = load_corpus("tang-poems-full")
    docs = [d for s in ("train", "val", "test") for d in corpus.documents(s)]
    assert len(docs) == 3
    assert corpus.report.empty == 1 and len(corpus.report.duplicates) == 1
    first = next(d for d in docs if "登鸛雀樓" in d)
    assert first.splitlines()[:3] == ["五言绝句", "《登鸛雀樓》", "作者：王之渙"]
    assert poem_body(first) == QUATRAIN and is_regulated_verse(poem_body(first))
    assert not is_regulated_verse(poem_body(next(d for d in docs if "李白" in d)))


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CHINESE_POETRY_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path)
    if any(p.is_dir() for p in [tmp_path]) and _global_install():
        pytest.skip("a global npm install of chinese-poetry exists on this machine")
    with pytest.raises(DataError, match="make data-extra"):
        chinese_poetry_dir()


def _global_install() -> bool:
    from pathlib import Path

    return any((Path(p) / "dist" / "quantangshi").is_dir() for p in
               ("/usr/local/lib/node_modules/chinese-poetry", "/usr/lib/node_modules/chinese-poetry"))
