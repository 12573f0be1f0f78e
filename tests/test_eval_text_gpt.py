"""`aigc eval` on text checkpoints: a tiny GPT trained for a few steps on a corpus the test
writes, perplexity windows, parity of perplexity with transformers' GPT-2, poems, bad input."""

import json
import math
from pathlib import Path

import pytest
import torch

from aigc.cli import main
from aigc.errors import AigcError
from aigc.evaluate import (
    continuation_pieces,
    pick,
    scoring_windows,
    split_poem,
    stream_perplexity,
    tokenizer_sha256,
)
from aigc.generation import SamplingParams, generate_text
from aigc.metrics.card import MetricCard

WORDS = ("the house was quiet and the garden lay under snow while she read his letter again "
         "by the window thinking of the ball and of what her sister had said").split()


def _prose(n_docs: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n_docs):
        idx = torch.randint(len(WORDS), (int(torch.randint(60, 120, (1,), generator=g)),),
                            generator=g)
        docs.append(" ".join(WORDS[i] for i in idx.tolist()).capitalize() + ".")
    return "\n\n".join(docs)


def _train(tmp_path, corpus_text: str, name: str, *extra: str):
    corpus = tmp_path / f"{name}.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    run = tmp_path / f"run-{name}"
    assert main(["train", "gpt", "--data", f"text:{corpus}", "--out", str(run), "--steps", "2",
                 "--context-length", "32", "--width", "8", "--layers", "1", "--heads", "2",
                 "--batch-size", "4", "--no-progress", "--eval-batches", "1", *extra]) == 0
    return corpus, run


@pytest.fixture(scope="module")
def prose_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("prose"), _prose(80), "prose")


# ------------------------------------------------------------------------ windows


@pytest.mark.parametrize("length,context,stride", [(10, 4, 2), (5, 4, 4), (3, 8, 4),
                                                   (100, 16, 1), (100, 16, 16), (37, 8, 3)])
def test_scoring_windows_score_every_token_once(length, context, stride):
    counts = torch.zeros(length, dtype=torch.long)
    for start, size, first in scoring_windows(length, context, stride):
        assert size <= context + 1 and start + size <= length
        counts[start + 1 + first:start + size] += 1
        if start > 0:  # later windows give scored tokens at least context - stride of context
            assert first >= min(context - stride, start + first)
    assert counts[0] == 0 and bool((counts[1:] == 1).all())
    with pytest.raises(AigcError, match="stride"):
        scoring_windows(length, context, context + 1)


def test_perplexity_equals_transformers_gpt2(tmp_path):
    """Our perplexity of a GPT-2 imported from transformers equals exp(mean NLL) computed from
    transformers' own logits: one window, and stride 1 (each token given exactly the previous
    ``context`` tokens, recomputed from scratch per token by the reference)."""
    transformers = pytest.importorskip("transformers")
    from aigc.models.gpt import load_hf_gpt2

    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.3 * torch.randn_like(p))  # far from uniform predictions
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf_gpt2(tmp_path)
    g = torch.Generator().manual_seed(1)

    short = torch.randint(0, 50, (14,), generator=g)
    with torch.no_grad():
        logits = hf(short[None]).logits[0, :-1].double()
    want = math.exp(float(torch.nn.functional.cross_entropy(logits, short[1:])))
    got = stream_perplexity(ours, short, context_length=16, stride=8, progress=False)
    assert got["tokens"] == 13 and want > 5
    assert got["perplexity"] == pytest.approx(want, rel=1e-6)

    long = torch.randint(0, 50, (60,), generator=g)
    nll = []
    with torch.no_grad():
        for t in range(1, len(long)):
            ctx = long[max(0, t - 16):t]
            logp = hf(ctx[None]).logits[0, -1].double().log_softmax(-1)
            nll.append(-float(logp[long[t]]))
    want = math.exp(sum(nll) / len(nll))
    got = stream_perplexity(ours, long, context_length=16, stride=1, batch_size=7,
                            progress=False)
    assert got["tokens"] == 59
    assert got["perplexity"] == pytest.approx(want, rel=1e-6)
    # Batch size does not change the value.
    again = stream_perplexity(ours, long, context_length=16, stride=1, batch_size=59,
                              progress=False)
    assert again["perplexity"] == pytest.approx(got["perplexity"], rel=1e-12)


# ------------------------------------------------------------------------ pieces


def test_pieces_prose_and_poems():
    kind, pieces = continuation_pieces(["abcdefghij", "xyz"], prompt_chars=3,
                                       continuation_chars=2)
    assert kind == "prose" and pieces == [("abc", "de"), ("fgh", "ij")]
    poem = "《静夜思》\n作者：李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
    assert split_poem(poem) == ("《静夜思》\n作者：李白\n", "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。")
    assert split_poem("no header here") is None
    assert continuation_pieces([poem], prompt_chars=3, continuation_chars=2)[0] == "poem"
    assert pick(list(range(10)), 4) == [0, 2, 5, 7] and pick([1, 2], 5) == [1, 2, 1, 2, 1]
    with pytest.raises(AigcError, match="no held-out pieces"):
        pick([], 3)


# ------------------------------------------------------------------------ CLI end to end


def test_cli_eval_text_checkpoint(prose_run, tmp_path, capsys):
    from aigc.data.text import load_corpus
    from aigc.data.tokens import encode_documents
    from aigc.models.gpt import load_text_model

    corpus, run = prose_run
    out, report = tmp_path / "card", tmp_path / "report.html"
    assert main(["eval", str(run), "--n", "6", "--prompt-chars", "40", "--continuation-chars",
                 "30", "--out", str(out), "--report", str(report)]) == 0
    card = MetricCard.read(tmp_path / "card.json")
    v, b, p = card.values, card.baseline, card.protocol
    model, tok, _ = load_text_model(run)
    # The checkpoint's own tokenizer was used, and the card names it.
    assert p["tokenizer"]["sha256"] == tokenizer_sha256(tok) == card.subject["tokenizer_sha256"]
    assert p["perplexity"] == {**p["perplexity"], "context_length": 32, "stride": 16}
    # Perplexity from the card equals a direct computation over the test documents.
    docs = load_corpus(f"text:{corpus}").documents("test")
    stream = torch.cat([torch.tensor([0]), encode_documents(tok, docs)])
    ll = 0.0
    with torch.no_grad():
        for t in range(1, len(stream)):
            ctx = stream[max(0, t - 32):t]
            ll += float(model(ctx[None])[0, -1].double().log_softmax(-1)[stream[t]])
    assert v["tokens"] == len(stream) - 1 == p["perplexity"]["tokens"]
    # stride 16 gives some tokens less context than the per-token reference: close, not equal
    assert v["perplexity"] == pytest.approx(math.exp(-ll / (len(stream) - 1)), rel=0.05)
    assert 1 < v["perplexity"] < 2 * tok.vocab_size  # barely trained: near uniform
    for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "distinct_1", "distinct_2",
                "self_bleu", "bits_per_character"):
        assert isinstance(v[key], float) and math.isfinite(v[key]), key
    # Real train-split text is more fluent than a 2-step model: more word overlap with the
    # references, fewer distinct character soups.
    assert b["rouge1"] > v["rouge1"] and "perplexity" not in b
    assert p["continuations"]["n"] == 6 and p["continuations"]["kind"] == "prose"
    assert p["continuations"]["sampling"]["temperature"] == 1.0
    # Continuations are written with their seeds and each reproduces alone.
    lines = (tmp_path / "card.samples.jsonl").read_text(encoding="utf-8").splitlines()
    samples = [json.loads(line) for line in lines]
    assert [s["seed"] for s in samples] == list(range(6))
    s = samples[3]
    with pytest.warns(UserWarning, match="dropped"):  # 1 + 40 prompt tokens, context 32
        again = generate_text(model, tok, s["prompt"], SamplingParams(max_tokens=30, seed=3)).text
    assert again[:30] == s["text"] and len(s["reference"]) == 30 and len(s["prompt"]) == 40
    page = report.read_text(encoding="utf-8")
    assert "Continuations" in page and "real vs real" in page and "<script" not in page
    # Same protocol: comparable; another stride: refused, naming the field.
    assert main(["eval", str(run), "--n", "6", "--prompt-chars", "40", "--continuation-chars",
                 "30", "--out", str(tmp_path / "same"), "--seed", "0"]) == 0
    assert main(["eval", "compare", str(tmp_path / "card.json"),
                 str(tmp_path / "same.json")]) == 0
    assert main(["eval", str(run), "--n", "6", "--prompt-chars", "40", "--continuation-chars",
                 "30", "--stride", "8", "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "card.json"),
                 str(tmp_path / "other.json")]) == 2
    assert "perplexity.stride: 16 vs 8" in capsys.readouterr().err


def test_cli_eval_poems(tmp_path):
    lines = ["床前明月光", "疑是地上霜", "举头望明月", "低头思故乡", "白日依山尽", "黄河入海流",
             "欲穷千里目", "更上一层楼", "春眠不觉晓", "处处闻啼鸟", "夜来风雨声", "花落知多少"]
    poems = []
    for i in range(60):
        body = [lines[(i + k) % len(lines)] for k in range(4)]
        poems.append(f"《诗{i}》\n作者：某{i}\n{body[0]}，{body[1]}。\n{body[2]}，{body[3]}。")
    corpus, run = _train(tmp_path, "\n\n".join(poems), "poems")
    assert main(["eval", str(run), "--n", "5", "--continuation-chars", "30", "--no-baseline",
                 "--out", str(tmp_path / "p")]) == 0
    card = MetricCard.read(tmp_path / "p.json")
    assert card.protocol["language"] == "zh" and card.protocol["continuations"]["kind"] == "poem"
    assert 0 <= card.values["verse_form_rate"] <= 1 and card.baseline == {}
    assert main(["eval", str(run), "--n", "5", "--continuation-chars", "30",
                 "--out", str(tmp_path / "q")]) == 0
    assert MetricCard.read(tmp_path / "q.json").baseline["verse_form_rate"] == 1.0  # all real


def test_text_eval_bad_input(prose_run, tmp_path, capsys):
    _, run = prose_run
    assert main(["eval", str(run), "--n", "4", "--sampler", "ddim"]) == 2
    assert "text models take --temperature" in capsys.readouterr().err
    assert main(["eval", str(run), "--n", "4", "--stride", "64"]) == 2
    assert "stride must be in 1..context_length=32" in capsys.readouterr().err
    assert main(["eval", str(run), "--n", "1"]) == 2
    assert "--n must be >= 2" in capsys.readouterr().err
    music = Path(__file__).parents[1] / "src/aigc/assets/starters/music-gpt-bach-and-folk.safetensors"
    if music.is_file():  # music GPTs have their own evaluation
        assert main(["eval", str(music), "--n", "4"]) == 2
        assert "aigc music eval" in capsys.readouterr().err
