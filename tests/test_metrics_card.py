"""Metric cards: round trip, Markdown, and refusing to compare different protocols."""

import json

import pytest

from aigc.cli import main
from aigc.errors import AigcError
from aigc.metrics.card import MetricCard, compare_cards


def _card(**protocol):
    base = {"data": "mnist", "n_real": 100, "n_generated": 100, "seed": 0, "ema": True,
            "extractor": {"name": "x", "sha256": "abc"}}
    return MetricCard(kind="image", subject={"family": "vae", "checkpoint": "a"},
                      protocol={**base, **protocol}, values={"fid": 3.0, "precision": 0.7},
                      baseline={"fid": 0.5, "precision": 0.75})


def test_round_trip_and_markdown(tmp_path):
    js, md = _card().write(tmp_path / "card")
    back = MetricCard.read(js)
    assert back.values == {"fid": 3.0, "precision": 0.7}
    assert back.protocol["extractor"]["sha256"] == "abc"
    text = md.read_text()
    assert "| fid | 3 | 0.5 | lower |" in text
    assert "extractor.sha256" in text and "torch" in text


def test_compare_refuses_different_protocols_and_names_fields():
    with pytest.raises(AigcError) as err:
        compare_cards(_card(), _card(n_generated=50, extractor={"name": "x", "sha256": "def"}))
    assert "n_generated: 100 vs 50" in str(err.value)
    assert "extractor.sha256" in str(err.value)
    assert "ema" not in str(err.value)


def test_compare_same_protocol():
    a, b = _card(), _card()
    b.values = {"fid": 2.0, "precision": 0.6}
    rows = {r["metric"]: r for r in compare_cards(a, b)["rows"]}
    assert rows["fid"]["better"] == "B" and rows["precision"]["better"] == "A"
    assert rows["fid"]["b_minus_a"] == pytest.approx(-1.0)


def test_cli_compare(tmp_path, capsys):
    a, _ = _card().write(tmp_path / "a")
    b, _ = _card(seed=1).write(tmp_path / "b")
    assert main(["eval", "compare", str(a), str(b)]) == 2
    assert "seed: 0 vs 1" in capsys.readouterr().err
    c, _ = _card().write(tmp_path / "c")
    assert main(["eval", "compare", str(a), str(c)]) == 0
    assert "fid" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["eval", "compare", str(a), str(bad)]) == 2
    assert "not an aigc metric card" in capsys.readouterr().err
