"""Text corpora, splits, cleaning report, token windows and tokenizers."""

import json

import pytest
import torch

from aigc.data import text as text_data
from aigc.data.text import SPLITS, hash_split, is_regulated_verse, load_corpus, poem_body
from aigc.data.tokens import TokenWindows, encode_documents
from aigc.errors import DataError
from aigc.tokenizers import BPETokenizer, CharTokenizer, tokenizer_from_dict, train_tokenizer

needs_fortunes_zh = pytest.mark.skipif(
    not (text_data.FORTUNES_DIR / "tang300").is_file(), reason="Debian fortunes-zh not installed"
)
needs_austen = pytest.mark.skipif(
    not (text_data.JANEAUSTENR_DIR / "data" / "Rdata.rdx").is_file(),
    reason="Debian r-cran-janeaustenr not installed",
)


@needs_austen
def test_austen_six_novels_fixed_disjoint_splits():
    corpus = load_corpus("austen")
    sizes = {s: len(corpus.documents(s)) for s in SPLITS}
    assert sizes == {"train": 241, "val": 14, "test": 14}  # 269 chapters, every 20th to test/val
    assert corpus.report.encoding_errors == [] and corpus.report.kept == 269
    train = set(corpus.documents("train"))
    assert not train & set(corpus.documents("val")) and not train & set(corpus.documents("test"))
    assert any("It is a truth universally acknowledged" in d for s in SPLITS
               for d in corpus.documents(s))
    assert 4_000_000 < sum(corpus.characters(s) for s in SPLITS) < 4_100_000


@needs_fortunes_zh
def test_tang_poems_colour_codes_stripped_and_form_check():
    corpus = load_corpus("tang-poems")
    docs = [d for s in SPLITS for d in corpus.documents(s)]
    assert len(docs) == 313
    assert not any("\x1b" in d for d in docs)
    first = next(d for d in docs if "张九龄" in d and "兰叶春葳蕤" in d)
    assert first.splitlines()[0] == "《感遇・其一》"
    assert poem_body(first).splitlines()[0] == "兰叶春葳蕤，桂华秋皎洁。"
    assert is_regulated_verse(poem_body(first))  # 4 lines of two 5-character verses
    dream = next(d for d in docs if d.startswith("《梦李白・其二》"))
    assert not is_regulated_verse(poem_body(dream))  # 8 lines of two verses = 16 verses
    # 242 of the 313 poems are 绝句 or 律诗 in form
    assert sum(is_regulated_verse(poem_body(d)) for d in docs) == 242


def test_regulated_verse_rules():
    assert is_regulated_verse("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。")
    assert is_regulated_verse("白日依山尽\n黄河入海流\n欲穷千里目\n更上一层楼")
    assert not is_regulated_verse("床前明月光，疑是地上霜。\n举头望明月，低头思故乡乡。")  # 6 chars
    assert not is_regulated_verse("床前明月光，疑是地上霜。举头望明月。")  # 3 verses
    assert not is_regulated_verse("")


# Cases where the two checkers that aigc had (data.text's, used by the corpus loader and
# tang_form_check; metrics.text's, used by verse_form_rate) gave different answers. There is one
# checker now; each case states the answer and why.
@pytest.mark.parametrize(("body", "expected"), [
    # Latin letters and digits are not Han characters (the loader's check counted them)
    ("abcde，fghij。\nklmno，pqrst。", False),
    ("白日依山尽，黄河入海流。\n欲穷千里目，更上12345。", False),
    ("白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼x。", False),
    # 、 and ： end a verse (tang300's 韦应物《长安遇冯著》 has 、 for ，; the metric did not split)
    ("客从东方来，衣上灞陵雨。\n问客何为来，采山因买斧。\n冥冥花正开、扬扬燕新乳。\n"
     "昨别今已春，鬓丝生几缕。", True),
    ("白日依山尽：黄河入海流。\n欲穷千里目，更上一层楼。", True),
    # white space (an ideographic space between the verses of a couplet) ends a verse
    ("白日依山尽\u3000黄河入海流\n欲穷千里目\u3000更上一层楼", True),
    ("白日 依山尽，黄河入海流。\n欲穷千里目，更上一层楼。", False),  # 2 + 3, not one verse of 5
    # a rare character of CJK extension B (U+20000) is a Han character
    ("\U00020000日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。", True),
    # □ and ● mark a lost character in the Complete Tang Poems; they fill a slot, so the corpus's
    # form lines stay as they were (the metric refused these 228 poems)
    ("□□□□□，□□□□□。\n仍隨五馬謫，載與兩禽奔。", True),
    ("忍辱收珍寶，嗔●捐福田。\n高心難見佛，下意得生天。", True),
    ("白日依山尽，黄河入海流。\n欲穷千里目，更上一层★。", False),  # any other symbol does not
])
def test_one_regulated_verse_checker(body, expected):
    from aigc.data.text import regulated_verse_form, verse_form
    from aigc.metrics import text as text_metrics

    assert text_metrics.regulated_verse_form is regulated_verse_form
    assert is_regulated_verse(body) is expected
    assert regulated_verse_form(body)["ok"] is expected
    assert text_metrics.verse_form_rate([body]) == float(expected)
    assert (verse_form(body) != "古诗") is expected


def test_regulated_verse_reasons_name_the_fault():
    from aigc.data.text import regulated_verse_form

    assert regulated_verse_form("abcde，fghij。klmno，pqrst。")["reason"] \
        == "non-Han characters in verse 'abcde'"
    assert regulated_verse_form("白日依山尽。")["reason"] == "1 verses (need 4 or 8)"


def test_dialogues_pairs_split_by_question():
    corpus = load_corpus("dialogues")
    assert len(corpus.pairs["train"]) > 1000
    assert any("\u4e00" <= ch <= "\u9fff" for q, _ in corpus.pairs["train"] for ch in q)
    for split in SPLITS:
        assert all(hash_split(q) == split for q, _ in corpus.pairs[split])
    q, a = corpus.pairs["val"][0]
    assert corpus.documents("val")[0] == f"Q: {q}\nA: {a}"


def test_user_text_cleaning_report(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(
        "first paragraph\n\nsecond 段落\n\n\n\nfirst paragraph\n\n".encode()
        + b"bad \xff\xfe bytes\n\n   \n\nlast one"
    )
    corpus = load_corpus(f"text:{path}")
    report = corpus.report
    assert report.kept == 3 and len(report.duplicates) == 1 and len(report.encoding_errors) == 1
    assert "paragraph 4" in report.encoding_errors[0]
    docs = sorted(d for s in SPLITS for d in corpus.documents(s))
    assert docs == ["first paragraph", "last one", "second 段落"]
    assert "encoding errors 1" in report.lines()[0]


def test_user_jsonl_text_and_pairs(tmp_path):
    path = tmp_path / "faq.jsonl"
    rows = [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(40)] + [{"text": "free text"}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    corpus = load_corpus(f"text:{path}")
    assert sum(len(corpus.pairs[s]) for s in SPLITS) == 40
    assert sum(len(corpus.documents(s)) for s in SPLITS) == 41
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        load_corpus(f"text:{bad}")


def test_missing_debian_package_named(monkeypatch, tmp_path):
    monkeypatch.setattr(text_data, "JANEAUSTENR_DIR", tmp_path / "nothing")
    monkeypatch.setattr(text_data, "FORTUNES_DIR", tmp_path / "nothing")
    load_corpus.cache_clear()
    try:
        with pytest.raises(DataError, match="apt-get install r-cran-janeaustenr"):
            load_corpus("austen")
        with pytest.raises(DataError, match="apt-get install fortunes-zh"):
            load_corpus("tang-poems")
        with pytest.raises(DataError, match="unknown text corpus"):
            load_corpus("shakespeare")
    finally:
        load_corpus.cache_clear()


def test_availability_is_checked_without_parsing_and_names_what_is_missing(monkeypatch, tmp_path):
    def parse(*_):
        raise AssertionError("corpus_available parsed a corpus")

    for loader in ("_load_austen", "_load_tang", "_load_fortunes", "_load_dialogues"):
        monkeypatch.setattr(text_data, loader, parse)
    load_corpus.cache_clear()
    try:
        for name in ("austen", "tang-poems", "fortunes", "dialogues", "dialogues-zh"):
            ok, why = text_data.corpus_available(name)
            assert ok or "install" in why, (name, why)
        monkeypatch.setattr(text_data, "JANEAUSTENR_DIR", tmp_path / "nothing")
        monkeypatch.setattr(text_data, "FORTUNES_DIR", tmp_path / "nothing")
        ok, why = text_data.corpus_available("austen")
        assert not ok and "apt-get install r-cran-janeaustenr" in why
        for name, package in (("tang-poems", "fortunes-zh"), ("fortunes", "fortunes")):
            ok, why = text_data.corpus_available(name)
            assert not ok and f"(apt-get install {package})" in why and "nothing" in why
        assert text_data.corpus_available("shakespeare")[0] is False
        # user files are still read: their problems are in the files, not in an installation
        assert not text_data.corpus_available(f"text:{tmp_path / 'none.txt'}")[0]
    finally:
        load_corpus.cache_clear()


def test_dialogues_parse_the_same_with_libyaml_as_with_pure_python(monkeypatch):
    yaml = pytest.importorskip("yaml")
    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml: the pure-Python parser is the only one")
    fast = text_data._load_dialogues("dialogues-zh", ("chinese",))
    monkeypatch.delattr(yaml, "CSafeLoader")
    slow = text_data._load_dialogues("dialogues-zh", ("chinese",))
    assert fast.pairs == slow.pairs and len(fast.pairs["train"]) > 50
    assert fast.report.lines() == slow.report.lines()


# ----------------------------------------------------------------------------- tokenizers

TEXTS = ["It is a truth universally acknowledged.", "床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]


def test_char_tokenizer_round_trip_and_unknown_refused():
    tok = CharTokenizer.train(TEXTS)
    for t in TEXTS:
        assert tok.decode(tok.encode(t)) == t
    assert tok.eot_id == 0 and tok.vocab_size == len(set("".join(TEXTS))) + 1
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict(), ensure_ascii=False)))
    assert again.encode("明月") == tok.encode("明月")
    with pytest.raises(DataError, match="'Z'"):
        tok.encode("Zebra")


def test_bpe_round_trips_chinese_exactly_and_compresses():
    tok = train_tokenizer("bpe", TEXTS * 20, vocab_size=300)
    assert isinstance(tok, BPETokenizer) and tok.eot_id == 0 and tok.vocab_size <= 300
    for t in TEXTS + ["unseen 字符 ✓ emoji 🙂 and\ttabs\n  spaces"]:
        assert tok.decode(tok.encode(t)) == t
    assert len(tok.encode(TEXTS[1])) < len(TEXTS[1].encode("utf-8"))  # merges were learned
    again = tokenizer_from_dict(json.dumps(tok.to_dict()))
    assert again.encode(TEXTS[2]) == tok.encode(TEXTS[2])


def test_token_windows_shift_and_too_small_corpus():
    tok = CharTokenizer.train(["abcdef"])
    stream = encode_documents(tok, ["abc", "def"])  # a b c <eot> d e f <eot>
    assert stream.tolist() == [1, 2, 3, 0, 4, 5, 6, 0]
    train = TokenWindows(stream, 3, stride=1)
    assert len(train) == 5
    assert train.get_batch(torch.tensor([1, 4]))["tokens"].tolist() == [[2, 3, 0, 4], [4, 5, 6, 0]]
    val = TokenWindows(stream, 3, stride=3)
    assert len(val) == 2 and val.get_batch(torch.tensor([1]))["tokens"].tolist() == [[0, 4, 5, 6]]
    with pytest.raises(DataError, match="too small for context_length=8"):
        TokenWindows(stream, 8, where="tiny")


def test_data_show_prints_text_report(tmp_path, capsys):
    from aigc.cli import main

    path = tmp_path / "t.txt"
    path.write_text("one\n\ntwo\n\none\n\n", encoding="utf-8")
    assert main(["data", "show", f"text:{path}"]) == 0
    out = capsys.readouterr().out
    assert "kept 2 documents" in out and "duplicates 1" in out and "split" in out
