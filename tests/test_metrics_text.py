"""Text metrics against sacrebleu, rouge-score and torchmetrics."""

import math

import pytest
import torch
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU as SacreBLEU
from sacrebleu.metrics import CHRF as SacreCHRF
from torchmetrics.text import Perplexity as TMPerplexity

from aigc.errors import AigcError
from aigc.metrics.text import (
    BLEU,
    CHRF,
    ROUGE,
    Perplexity,
    distinct_n,
    regulated_verse_form,
    self_bleu,
    token_log_likelihoods,
    verse_form_rate,
)

HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi",
        "it was the best of times"]
REFS = [["the cat is on the mat"], ["the quick brown fox jumped"], ["hello there"],
        ["it was the worst of times"]]


def test_bleu_and_chrf_equal_sacrebleu_exactly_in_any_batching():
    want_bleu = SacreBLEU().corpus_score(HYPS, [[r[0] for r in REFS]]).score
    want_chrf = SacreCHRF().corpus_score(HYPS, [[r[0] for r in REFS]]).score
    bleu, chrf = BLEU(), CHRF()
    for i in range(0, 4, 3):
        bleu.update(HYPS[i:i + 3], REFS[i:i + 3])
        chrf.update(HYPS[i:i + 3], REFS[i:i + 3])
    assert bleu.compute()["bleu"] == want_bleu
    assert chrf.compute()["chrf"] == want_chrf
    assert want_bleu == pytest.approx(PINNED_BLEU, rel=1e-9)
    assert want_chrf == pytest.approx(70.86967259840334, rel=1e-9)
    assert "tok:13a" in bleu.compute()["signature"]


PINNED_BLEU = 26.3871652847587


def test_chinese_bleu_uses_the_zh_tokeniser():
    bleu = BLEU(language="zh")
    bleu.update(["白日依山尽"], [["白日依山尽"]])
    assert bleu.compute()["bleu"] == pytest.approx(100.0)


def test_rouge_equals_rouge_score():
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    want = {t: sum(scorer.score(r[0], h)[t].fmeasure for h, r in zip(HYPS, REFS, strict=True)) / 4
            for t in ("rouge1", "rouge2", "rougeL")}
    metric = ROUGE()
    metric.update(HYPS, REFS)
    assert metric.compute() == pytest.approx(want, abs=1e-12)
    assert 0 < want["rouge2"] < want["rouge1"] < 1
    assert metric.compute() == pytest.approx({"rouge1": 0.7333333333333334, "rouge2": 0.55,
                                              "rougeL": 0.7333333333333334}, abs=1e-12)


def test_rouge_chinese_counts_characters():
    metric = ROUGE(language="zh")
    metric.update(["床前明月光"], [["床前明月光"]])
    assert metric.compute()["rouge1"] == pytest.approx(1.0)
    metric.reset()
    metric.update(["床前明月光"], [["疑是地上霜"]])
    assert metric.compute()["rouge1"] == 0.0


def test_perplexity_equals_torchmetrics_and_is_batch_independent():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, 11, generator=g, dtype=torch.float64)
    target = torch.randint(0, 11, (6, 9), generator=g)
    target[0, :3] = -100
    ref = TMPerplexity(ignore_index=-100)
    ref.update(logits, target)
    ppl = Perplexity()
    for i in range(0, 6, 4):
        ppl.update(*token_log_likelihoods(logits[i:i + 4], target[i:i + 4]))
    out = ppl.compute()
    assert out["tokens"] == 51
    # torchmetrics accumulates in float32, hence 1e-6.
    assert out["perplexity"] == pytest.approx(float(ref.compute()), rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(out["nll_per_token"]))


def test_perplexity_rejects_bad_input():
    ppl = Perplexity()
    with pytest.raises(AigcError, match="<= 0"):
        ppl.update(torch.tensor([1.5]), torch.tensor([3]))
    with pytest.raises(AigcError, match="NaN"):
        ppl.update(torch.tensor([float("nan")]), torch.tensor([3]))
    with pytest.raises(AigcError, match="at least one token"):
        ppl.compute()


def test_distinct_n_and_self_bleu():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["白日白日"], 1, language="zh") == pytest.approx(0.5)
    same = ["the cat sat on the mat"] * 3
    varied = ["the cat sat on the mat", "dogs bark at night", "rain falls in spain"]
    assert self_bleu(same) == pytest.approx(100.0)
    assert self_bleu(varied) < 20.0
    with pytest.raises(AigcError, match="at least 2"):
        self_bleu(["one"])


def test_regulated_verse_form():
    jueju = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
    assert regulated_verse_form(jueju)["ok"]
    qijue = "朝辞白帝彩云间\n千里江陵一日还\n两岸猿声啼不住\n轻舟已过万重山"
    assert regulated_verse_form(qijue)["verse_lengths"] == [7, 7, 7, 7]
    bad = regulated_verse_form("白日依山尽，黄河入海。欲穷千里目，更上一层楼。")
    assert not bad["ok"] and "verse lengths" in bad["reason"]
    assert "verses" in regulated_verse_form("白日依山尽，黄河入海流。")["reason"]
    assert verse_form_rate([jueju, qijue, "hello world"]) == pytest.approx(2 / 3)
