"""``aigc data list`` and ``aigc data show`` for the music corpora, on a small stand-in parse
cache (so nothing is parsed: the real first parse of a corpus takes minutes)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import aigc.data.music.corpora as music_data
from aigc.cli import main
from aigc.data.music import SPLITS, MusicCorpusReport, Note, Piece, hash_split


def _pieces(count: int) -> list[Piece]:
    out = []
    for i in range(count):
        if i % 2:  # a folk tune in 3/4: one voice
            notes = [Note(12 * k, 0, 67 + k % 5, 12) for k in range(12)]
            out.append(Piece(f"folk/tune{i}", "folk", 7, "major", (3, 4), notes))
        else:  # a chorale in 4/4: four voices
            notes = [Note(12 * k, v, 72 - 7 * v + k % 3, 12) for k in range(16) for v in range(4)]
            out.append(Piece(f"bach/bwv{i}", "chorale", 2, "minor", (4, 4), notes))
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty music cache folder; the module's in-memory corpora are set aside."""
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(music_data, "_LOADED", {})
    music_data._cache_counts.cache_clear()
    return tmp_path


def _write_cache(name: str, pieces: list[Piece]) -> None:
    report = MusicCorpusReport(f"stand-in corpus {name}", kept=len(pieces),
                               skipped=[("bach/bad", "meter changes (3/4, 4/4)")])
    path = music_data.cache_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"report": report.to_json(),
                                "pieces": [p.to_json() for p in pieces]}), encoding="utf-8")


def _music_lines(out: str) -> dict[str, str]:
    """``name -> its line and the indented line under it`` of the list output."""
    lines = out.splitlines()
    found = {}
    for i, line in enumerate(lines):
        name = line.split(" ", 1)[0]
        if name in music_data.CORPORA:
            nxt = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith(" ") else ""
            found[name] = line + "\n" + nxt
    return found


def test_data_list_shows_music_corpora_without_parsing(cache, capsys):
    assert main(["data", "list"]) == 0
    listed = _music_lines(capsys.readouterr().out)
    assert set(listed) == set(music_data.CORPORA)
    assert "Bach chorales" in listed["bach-chorales"]
    for name in ("bach-chorales", "folk-tunes", "folk-tunes-all", "bach-and-folk"):
        assert "not parsed yet" in listed[name], listed[name]
    assert not music_data.cache_path("bach-chorales").exists()  # listing parsed nothing

    pieces = _pieces(40)
    _write_cache("bach-chorales", pieces)
    expected = {s: sum(hash_split(p.name) == s for p in pieces) for s in SPLITS}
    assert main(["data", "list"]) == 0
    listed = _music_lines(capsys.readouterr().out)
    want = ", ".join(f"{s} {expected[s]}" for s in SPLITS)
    assert f"pieces: {want}" in listed["bach-chorales"]
    assert "not parsed yet" in listed["folk-tunes"] and "not parsed yet" in listed["bach-and-folk"]


def test_data_show_music_counts_and_piano_rolls(cache, capsys):
    pieces = _pieces(40)
    _write_cache("bach-chorales", pieces)
    out = cache / "rolls.png"
    assert main(["data", "show", "bach-chorales", "--n", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kept 40 pieces, skipped 1" in text and "skipped bach/bad: meter changes" in text
    train = [p for p in pieces if hash_split(p.name) == "train"]
    row = next(line for line in text.splitlines() if line.startswith("train "))
    assert row.split()[1:] == [str(len(train)), str(sum(p.bars for p in train)),
                               str(sum(len(p.notes) for p in train)),
                               str(sum(len(music_data.piece_to_tokens(p)) for p in train))]
    assert "styles: chorale 20, folk 20" in text and "meters: 4/4 20, 3/4 20" in text
    img = Image.open(out)
    record = json.loads(img.text["aigc"])
    assert record["data"] == "bach-chorales" and len(record["pieces"]) == 3
    assert record["pieces"][0] == train[0].name and record["pieces"][-1] == train[-1].name
    # three stacked rolls: taller than one, as wide as the widest 4-bar roll
    from aigc.music import piano_roll

    rolls = [piano_roll(p.first_bars(4)) for p in pieces if p.name in record["pieces"]]
    assert img.size == (max(r.shape[1] for r in rolls), sum(r.shape[0] + 6 for r in rolls))


def test_data_show_music_rejects_bad_n(cache, capsys):
    _write_cache("bach-chorales", _pieces(4))
    assert main(["data", "show", "bach-chorales", "--n", "0"]) == 2
    assert "--n must be between 1 and 32" in capsys.readouterr().err
