"""The lean Llama decoder (aigc.models.llama_decode) against transformers on a tiny random Llama
built locally: same logits, same greedy tokens as the transformers path and as generate()."""

import pytest
import torch

from aigc.generation import SamplingParams, stream_text
from aigc.models.llama_decode import LeanLlama
from aigc.models.pretrained import HFCachedLM

transformers = pytest.importorskip("transformers")


class _Ids:
    """Token ids as text, so stream_text runs on a model without a real tokenizer."""

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in ids) + " "


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        tie_word_embeddings=True, initializer_range=0.5, eos_token_id=None, bos_token_id=0,
        pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(params=["torch", "native"])
def decode_route(request):
    """Both kernel routes of the decoder's small operations (aigc.models.native)."""
    from aigc.models import native

    if request.param == "native" and native._build() is None:
        pytest.skip(f"native kernels unavailable here: {native._build_error}")
    old = native.set_route("decode", request.param)
    yield request.param
    native.set_route("decode", old)


def _greedy(lm, prompt, n):
    params = SamplingParams(temperature=0, max_tokens=n, stop_at_end=False)
    return stream_text(lm, _Ids(), "", params, prompt_ids=prompt).result().tokens


def test_float32_logits_match_transformers_across_chunks_and_cache_growth(tiny, decode_route):
    ids = torch.randint(2, 96, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        # The first full-length forward of a process is sometimes off by 0.025 at position 264
        # (2 runs in 8 under pytest, 2026-11-30, torch 2.13, transformers 5.24, reproduced by a
        # test that imports only torch and transformers: not aigc's code). The next calls agree
        # with each other, with a forward of the first 265 tokens alone and with the lean
        # decoder, so the reference is the second call.
        tiny(torch.tensor([ids]))
        full = tiny(torch.tensor([ids])).logits[0]  # (300, V)
    lm = LeanLlama(tiny, {1})
    lm.reset()
    got = [lm.feed(ids[:7])]  # a prompt, then a chunk of 3 at an offset (masked), then one by one
    got.append(lm.feed(ids[7:10]))
    got += [lm.feed([i]) for i in ids[10:]]  # grows past the first 256 cache positions
    want = torch.stack([full[6], full[9], *full[10:]])
    torch.testing.assert_close(torch.stack(got), want, atol=1e-4, rtol=1e-4)


def test_greedy_tokens_equal_transformers_path_and_generate(tiny, decode_route):
    prompt = [5, 17, 42, 9, 3]
    n = 40
    lean = _greedy(LeanLlama(tiny, {1}), prompt, n)
    plain = _greedy(HFCachedLM(tiny, {1}), prompt, n)
    with torch.no_grad():
        out = tiny.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                            dtype=torch.long), max_new_tokens=n,
                            do_sample=False)
    assert lean == plain == out[0, len(prompt):].tolist()
    assert len(set(lean)) > 3  # not a degenerate repeat of one token


@pytest.mark.parametrize("weights, tol", [("bfloat16", 0.1), ("int8", 0.1)])
def test_reduced_weights_stay_close_to_float32(tiny, weights, tol):
    prompt = [5, 17, 42, 9, 3, 60, 11]
    ref, lm = LeanLlama(tiny, {1}), LeanLlama(tiny, {1}, weights=weights)
    ref.reset()
    lm.reset()
    a, b = ref.feed(prompt), lm.feed(prompt)
    spread = float(a.max() - a.min())
    assert 0 < float((a - b).abs().max()) < tol * spread


def test_int8_weights_round_to_nearest_step_per_channel(tiny):
    from aigc.models.llama_decode import _Linear

    w = tiny.model.layers[0].mlp.down_proj.weight.detach()
    lin = _Linear(w, "int8")
    scale = lin.scale.float()
    assert lin.w.dtype == torch.int8 and int(lin.w.abs().max()) == 127
    err = (w - lin.w.float() * scale[:, None]).abs()
    assert bool((err <= scale[:, None] * 0.5 + 1e-3 * scale[:, None]).all())


def _snap_to_q4_1(model):
    """A copy of ``model`` whose layer matrices are on a GGUF Q4_1 grid (blocks of 32 inputs,
    lo + step * q, q in 0..15), like the SmolLM2 weights the package ships."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (*[getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj",
                                                               "o_proj")],
                        *[getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]):
                w = lin.weight
                b = w.view(w.shape[0], -1, 32)
                lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
                step = (hi - lo) / 15
                w.copy_((lo + step * torch.round((b - lo) / step)).view_as(w))
    return model


def test_int4_on_q4_1_weights_stays_close_to_float32(tiny):
    snapped = _snap_to_q4_1(tiny)
    prompt = [5, 17, 42, 9, 3, 60, 11]
    ref, lm = LeanLlama(snapped, {1}), LeanLlama(snapped, {1}, weights="int4")
    ref.reset()
    lm.reset()
    a, b = ref.feed(prompt), lm.feed(prompt)
    assert 0 < float((a - b).abs().max()) < 0.1 * float(a.max() - a.min())


def test_int4_keeps_weights_already_on_a_4bit_grid():
    """Weights de-quantized from GGUF Q4_1 (lo + step * q per block of 32) come back unchanged:
    the only error left is the bf16 rounding of the kernel's output."""
    from aigc.models.llama_decode import _Linear

    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (64, 96), generator=g).float()
    q[:, ::32], q[:, 1::32] = 0, 15  # as in Q4_1: each block's min and max are on its grid ends
    lo = -torch.randint(1, 4, (64, 3, 1), generator=g).float()  # per block of 32
    w = (lo + 0.125 * q.view(64, 3, 32)).view(64, 96)
    x = torch.randint(-3, 4, (2, 96), generator=g).float()
    torch.testing.assert_close(_Linear(w, "int4")(x), x @ w.t(), rtol=8e-3, atol=1e-6)
    off_grid = w + 0.03 * torch.randn(64, 96, generator=g)
    assert float((_Linear(off_grid, "int4")(x) - x @ off_grid.t()).abs().max()) > 0.1
    with pytest.raises(ValueError, match="divisible by 32, got 40"):
        _Linear(torch.randn(8, 40), "int4")


def test_fresh_decoders_share_weights_but_not_caches(tiny):
    a = LeanLlama(tiny, {1})
    b = a.fresh()
    assert b.layers is a.layers and b.k_cache is not a.k_cache
    a.reset()
    b.reset()
    la = a.feed([5, 6, 7])
    b.feed([9, 9])
    torch.testing.assert_close(a.feed([8]), b.fresh().feed([5, 6, 7, 8]))
    assert la.shape == (96,)


def test_errors_name_the_value(tiny):
    with pytest.raises(ValueError, match="weights must be one of float32, bfloat16, int8.*'fp16'"):
        LeanLlama(tiny, {1}, weights="fp16")
    lm = LeanLlama(tiny, {1}, context_length=8)
    lm.reset()
    with pytest.raises(ValueError, match="at least one token"):
        lm.feed([])
    lm.feed([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="feeding 4 tokens after 5 exceeds the context of 8"):
        lm.feed([1, 2, 3, 4])
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2,
                                                                 vocab_size=16, n_positions=8))
    with pytest.raises(ValueError, match="needs a Llama model, got model_type='gpt2'"):
        LeanLlama(gpt2, {1})


def test_load_smollm2_refuses_bad_options_before_loading():
    from aigc.models.pretrained import load_smollm2

    with pytest.raises(ValueError, match="weights must be one of .* got 'int3'"):
        load_smollm2("int3")
    with pytest.raises(ValueError, match="decoder must be one of lean, transformers, got 'hf'"):
        load_smollm2(decoder="hf")
    with pytest.raises(ValueError, match="float32 weights only, got weights='int8'"):
        load_smollm2("int8", decoder="transformers")


def test_chat_cli_weights_flag(capsys):
    from aigc.cli import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    assert "--weights {float32,int8,int4}" in capsys.readouterr().out
    assert main(["chat", "--weights", "int8", "--adapter", "x", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights int8 does not apply with --adapter" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["chat", "--weights", "int3"])
    assert exc.value.code == 2
