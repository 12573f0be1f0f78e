"""SmolLM2-135M-Instruct through the shared generation interface (slow tier: loading the model
takes 10-60 s on 2 CPU cores)."""

import pytest
import torch

from aigc.generation import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from aigc.models.pretrained import load_smollm2

    return load_smollm2()


def test_chat_answers_and_stops_at_im_end(smol):
    from aigc.models.pretrained import chat

    model, tok = smol
    stream = chat([{"role": "user", "content": "What is the capital of France?"}],
                  SamplingParams(temperature=0, max_tokens=40), model=model, tokenizer=tok)
    pieces = list(stream)
    assert "Paris" in stream.text and len(pieces) > 3
    assert stream.finish_reason == "end" and "<|im_end|>" not in stream.text


def test_seeded_sampling_reproducible_and_stop_string(smol):
    from aigc.models.pretrained import chat

    model, tok = smol
    msgs = [{"role": "user", "content": "Write two sentences about the sea."}]
    params = SamplingParams(temperature=0.9, max_tokens=20, seed=3)
    a = chat(msgs, params, model=model, tokenizer=tok).result()
    b = chat(msgs, params, model=model, tokenizer=tok).result()
    assert a.text == b.text and a.tokens == b.tokens
    word = a.text.split()[2]
    c = chat(msgs, SamplingParams(temperature=0.9, max_tokens=20, seed=3, stop=(word,)),
             model=model, tokenizer=tok).result()
    assert c.finish_reason == "stop" and c.text == a.text[: a.text.find(word)]


def test_kv_cache_logits_match_full_forward(smol):
    model, tok = smol
    ids = tok.encode("The quick brown fox jumps over the lazy dog")
    model.reset()
    model.feed(ids[:5])
    stepped = [model.feed([i]) for i in ids[5:]]
    with torch.no_grad():
        full = model.model(torch.tensor([ids])).logits[0, 5:]
    torch.testing.assert_close(torch.stack(stepped), full, atol=1e-3, rtol=1e-3)


def test_bad_messages_refused(smol):
    from aigc.errors import AigcError
    from aigc.models.pretrained import chat

    model, tok = smol
    with pytest.raises(AigcError, match="role"):
        chat([{"role": "robot", "content": "hi"}], SamplingParams(), model=model, tokenizer=tok)
    with pytest.raises(AigcError, match="context holds"):
        chat([{"role": "user", "content": "word " * 9000}], SamplingParams(),
             model=model, tokenizer=tok)
