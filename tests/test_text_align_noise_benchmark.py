"""benchmarks/text_align_noise.py: its development prompts are apart from the held-out
paraphrases and the training captions, and it refuses a set that is not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import text_align_noise as bench  # noqa: E402
from image_agreement import PARAPHRASES, ZH_PARAPHRASES  # noqa: E402

from aigc.data.captions import caption_bank  # noqa: E402
from aigc.data.images import FASHION_CLASSES  # noqa: E402

NAMES = {"mnist": [str(i) for i in range(10)], "fashion-mnist": FASHION_CLASSES}


@pytest.mark.parametrize("data", ["mnist", "fashion-mnist"])
def test_development_prompts_are_new_bilingual_and_cover_every_class(data):
    sets = bench.dev_prompts(data, NAMES[data])
    held_out = {p for g in (PARAPHRASES[data], ZH_PARAPHRASES[data]) for ps in g for p in ps}
    training = {c for c, _ in caption_bank(data, NAMES[data])}
    for lang in ("en", "zh"):
        assert len(sets[lang]) == 10 and all(len(ps) >= 2 for ps in sets[lang])
        flat = [p for ps in sets[lang] for p in ps]
        assert len(set(flat)) == len(flat)
        assert not set(flat) & (held_out | training)
        assert all(p.isascii() for p in flat) == (lang == "en")


def test_a_held_out_paraphrase_in_the_development_set_is_refused(tmp_path, monkeypatch):
    table = json.loads(bench.DEV_PROMPTS.read_text(encoding="utf-8"))
    table["mnist"]["en"][7][0] = PARAPHRASES["mnist"][7][1]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(bench, "DEV_PROMPTS", path)
    with pytest.raises(ValueError, match="held-out paraphrase"):
        bench.dev_prompts("mnist", NAMES["mnist"])
    table["mnist"]["en"][7][0] = "handwritten digit seven"
    path.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="training caption"):
        bench.dev_prompts("mnist", NAMES["mnist"])
    with pytest.raises(ValueError, match="no development prompts for data='cifar10'"):
        bench.dev_prompts("cifar10", NAMES["mnist"])
