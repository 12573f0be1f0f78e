"""Our GPT: KV cache, sampling controls, streaming, training, checkpoints, CLI, GPT-2 parity."""

import json
import warnings

import pytest
import torch

from aigc.errors import AigcError, ConfigError, DataError
from aigc.generation import SamplingParams, generate_text, next_token, stream_text
from aigc.models.gpt import GPT, GPTConfig
from aigc.tokenizers import CharTokenizer

TINY = dict(vocab_size=20, context_length=16, layers=2, heads=2, width=8)


def tiny(**over) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **over})).eval()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_kv_cache_matches_full_forward(positions):
    model = tiny(positions=positions)
    idx = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(idx)
    cache = model.new_cache(2)
    steps = [model(idx[:, :5], cache)]  # prefill 5, then a chunk of 3 (explicit mask), then 1s
    steps.append(model(idx[:, 5:8], cache))
    steps += [model(idx[:, t : t + 1], cache) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 12


def test_rotary_attention_is_causal():
    """Logits at a position never depend on later tokens."""
    model = tiny(positions="rotary")
    a = model(torch.tensor([[3, 4, 5, 6]]))
    b = model(torch.tensor([[3, 4, 9, 1]]))
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_config_and_context_errors():
    with pytest.raises(ConfigError, match="width=10 must be divisible by heads=4"):
        GPTConfig(width=10, heads=4)
    with pytest.raises(ConfigError, match="vocab_size must be >= 1"):
        GPT(GPTConfig(vocab_size=0))
    with pytest.raises(ValueError, match="exceeds context_length=16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_tied_embeddings_and_loss_mask():
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    tokens = torch.randint(0, 20, (3, 9), generator=torch.Generator().manual_seed(2))
    full = model.loss({"tokens": tokens})
    mask = torch.zeros(3, 8)
    mask[:, -1] = 1
    last = model.loss({"tokens": tokens, "loss_mask": mask})
    logits = model(tokens[:, :-1])[:, -1]
    ref = torch.nn.functional.cross_entropy(logits, tokens[:, -1])
    torch.testing.assert_close(last, ref)
    assert not torch.allclose(full, last)


def test_overfits_a_sentence():
    tok = CharTokenizer.train(["the cat sat on the mat. "])
    ids = torch.tensor([[tok.eot_id] + tok.encode("the cat sat on the mat. " * 3)])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=32, layers=2, heads=2, width=32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss({"tokens": ids[:, :33]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2
    out = generate_text(model, tok, "the cat", SamplingParams(temperature=0, max_tokens=16))
    assert out.text == " sat on the mat. "[:16]


# ------------------------------------------------------------------------------ sampling


def test_sampling_params_refused():
    for bad, match in [(dict(top_p=1.5), "top_p"), (dict(top_p=0), "top_p"),
                       (dict(temperature=-0.1), "temperature"), (dict(max_tokens=0), "max_tokens"),
                       (dict(top_k=-1), "top_k"), (dict(repetition_penalty=0), "repetition"),
                       (dict(stop=("",)), "stop")]:
        with pytest.raises(ConfigError, match=match):
            SamplingParams(**bad)


def test_next_token_controls():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, SamplingParams(temperature=0)).item() == 1
    draws = {next_token(logits, SamplingParams(top_k=1), generator=g).item() for _ in range(20)}
    assert draws == {1}
    # top_p=0.8: p = softmax = [.09, .67, .24, .01] -> {1, 2} reach 0.8; 0 and 3 never drawn
    draws = {next_token(logits, SamplingParams(top_p=0.8), generator=g).item() for _ in range(200)}
    assert draws == {1, 2}
    # repetition penalty 10 on token 1 (logit 3 -> 0.3): greedy now picks token 2
    prev = torch.tensor([[1]])
    assert next_token(logits, SamplingParams(temperature=0, repetition_penalty=10.0),
                      previous=prev).item() == 2
    # high temperature flattens: all four tokens appear
    draws = {next_token(logits, SamplingParams(temperature=5.0), generator=g).item()
             for _ in range(400)}
    assert draws == {0, 1, 2, 3}


def test_seed_reproducible_and_model_generate_matches_stream():
    model = tiny()
    tok = CharTokenizer(list("abcdefghijklmnopqrs"))  # 19 chars + <eot> = 20 ids
    params = SamplingParams(temperature=1.0, max_tokens=10, seed=7, stop_at_end=False)
    a = generate_text(model, tok, "abc", params)
    b = generate_text(model, tok, "abc", params)
    c = generate_text(model, tok, "abc", SamplingParams(max_tokens=10, seed=8, stop_at_end=False))
    assert a.text == b.text and a.tokens == b.tokens and a.tokens != c.tokens
    assert a.finish_reason == "length" and len(a.tokens) == 10
    # greedy batch generate() (KV cache) == greedy stream == argmax of full forwards
    prompt = torch.tensor([[0] + tok.encode("abc")])
    out = model.generate(prompt, 8, temperature=0)
    greedy = generate_text(model, tok, "abc", SamplingParams(temperature=0, max_tokens=8,
                                                             stop_at_end=False))
    assert out[0, 4:].tolist() == greedy.tokens
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert seq.tolist() == out.tolist()


class ScriptedLM:
    """A CachedLM that always predicts the next token of a fixed script (then <eot> = 0)."""

    def __init__(self, script, context_length=64):
        self.script, self.context_length = list(script), context_length
        self.prefix_ids, self.end_ids = [], {0}
        self.fed = 0

    def reset(self):
        self.fed = 0

    def feed(self, ids):
        self.fed += len(ids)
        logits = torch.full((300,), -100.0)
        i = self.fed - self.prompt_len
        logits[self.script[i] if i < len(self.script) else 0] = 100.0
        return logits


def scripted(text, tok, prompt=""):
    lm = ScriptedLM(tok.encode(text))
    lm.prompt_len = len(tok.encode(prompt))
    return lm


def test_stream_pieces_and_stop_strings():
    tok = CharTokenizer(list("abcdefghij\n "))
    stream = stream_text(scripted("abc de\nfgh", tok, "ab"), tok, "ab",
                         SamplingParams(temperature=0, max_tokens=50))
    pieces = list(stream)
    assert pieces == list("abc de\nfgh") and stream.finish_reason == "end"
    stream = stream_text(scripted("abc de\nfgh", tok, "ab"), tok, "ab",
                         SamplingParams(temperature=0, stop=("e\nf", "hh")))
    pieces = list(stream)
    # "e" is held back until the next token shows whether the stop string "e\nf" follows
    assert "".join(pieces) == "abc d" and stream.finish_reason == "stop"
    stream = stream_text(scripted("abc de\nfgh", tok), tok, "",
                         SamplingParams(temperature=0, max_tokens=4, stop=("cd",)))
    assert stream.result().text == "abc " and stream.finish_reason == "length"


def test_stream_holds_back_partial_utf8():
    from aigc.tokenizers import train_tokenizer

    tok = train_tokenizer("bpe", ["english only text"] * 5, vocab_size=280)
    ids = tok.encode("月光")  # no merges for these: 6 byte tokens
    assert len(ids) == 6
    lm = ScriptedLM(ids)
    lm.prompt_len = 0
    pieces = list(stream_text(lm, tok, "", SamplingParams(temperature=0)))
    assert pieces == ["月", "光"]  # never a half character


def test_truncation_warns_and_window_slides():
    model = tiny()
    tok = CharTokenizer(list("abcdefghijklmnopqrs"))
    # a prompt longer than the context (16) is cut from the left, with a warning
    with pytest.warns(UserWarning, match="the prompt has 31 tokens.*the first 16 tokens were dropped"):
        long = stream_text(model, tok, "abcdefghijklmnopqrs" + "abcdefghijklmnopqrs"[:11],
                           SamplingParams(max_tokens=30, seed=0, stop_at_end=False))
    result = long.result()
    assert long.truncated_tokens == 16 and len(result.tokens) == 30  # window slid past 16
    with pytest.raises(AigcError, match="shorten it"):
        stream_text(model, tok, "", SamplingParams(), prompt_ids=list(range(20)), truncate=False)


# ----------------------------------------------------------------- training + CLI + checkpoint


def test_train_and_generate_cli_round_trip(tmp_path, capsys):
    from aigc.cli import main
    from aigc.models.gpt import load_text_model

    corpus = tmp_path / "poems.txt"
    corpus.write_text("\n\n".join(["床前明月光，疑是地上霜。举头望明月，低头思故乡。",
                                   "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"] * 30),
                      encoding="utf-8")
    corpus.write_text(corpus.read_text(encoding="utf-8") + "\n\n" + "\n\n".join(
        f"第{i}首：春眠不觉晓，处处闻啼鸟。" for i in range(60)), encoding="utf-8")
    run = tmp_path / "run"
    rc = main(["train", "gpt", "--data", f"text:{corpus}", "--out", str(run), "--steps", "3",
               "--context-length", "16", "--width", "8", "--layers", "1", "--heads", "2",
               "--batch-size", "4", "--no-progress", "--tokenizer", "bpe",
               "--bpe-vocab-size", "300", "--eval-batches", "2"])
    assert rc == 0
    model, tok, ckpt = load_text_model(run)
    assert ckpt.meta["tokenizer"]["kind"] == "bpe" and model.cfg.vocab_size == tok.vocab_size
    assert tok.decode(tok.encode("举头望明月")) == "举头望明月"
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "床前", "--max-tokens", "5", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("床前")
    assert main(["generate", str(run), "--prompt", "床前", "--max-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first
    assert main(["generate", str(run), "--top-p", "2"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_corpus_too_small_for_context(tmp_path):
    from aigc.cli import main

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n\n".join(f"doc {i}" for i in range(30)), encoding="utf-8")
    with pytest.raises(DataError, match="too small for context_length=512"):
        main(["--debug", "train", "gpt", "--data", f"text:{corpus}", "--out",
              str(tmp_path / "r"), "--context-length", "512", "--steps", "1"])


# --------------------------------------------------------------------------- GPT-2 parity


def test_gpt2_import_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from aigc.models.gpt import gpt2_state_dict_to_hf, load_hf_gpt2

    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a missed transpose shows
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    ours = load_hf_gpt2(tmp_path)
    idx = torch.randint(0, 50, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(idx).logits
    torch.testing.assert_close(ours(idx), ref, atol=1e-4, rtol=1e-4)
    # and back: our weights in GPT2LMHeadModel give our logits
    back = transformers.GPT2LMHeadModel(cfg).eval()
    back.load_state_dict(gpt2_state_dict_to_hf(ours.state_dict(), ours.cfg), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, ref, atol=1e-4, rtol=1e-4)
    json.loads((tmp_path / "config.json").read_text())  # the folder is plain JSON + safetensors


def test_generation_warns_only_when_truncating():
    model = tiny()
    tok = CharTokenizer(list("abcdefghijklmnopqrs"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate_text(model, tok, "abcdefghijklmn", SamplingParams(max_tokens=3, seed=0))


@pytest.mark.parametrize("T", [1, 7, 128])
def test_written_out_attention_equals_sdpa(T):
    from aigc.models.gpt import MATH_ATTENTION_MAX_T, causal_attention_math

    assert T <= MATH_ATTENTION_MAX_T
    gen = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 8, generator=gen) for _ in range(3))
    torch.testing.assert_close(causal_attention_math(q, k, v),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                               rtol=1e-5, atol=1e-6)
