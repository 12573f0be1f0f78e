"""Fine-tuning: full fine-tune of our GPT (fast), LoRA on SmolLM2 (slow tier)."""

import pytest
import torch

from aigc.config import TrainConfig
from aigc.errors import DataError
from aigc.finetune import _collate


def test_collate_masks_answers_only():
    ids, attn, mask = _collate([([5, 6, 7, 8], [0, 0, 1, 1]), ([5, 9], [0, 1])], pad_id=2)
    assert ids.tolist() == [[5, 6, 7, 8], [5, 9, 2, 2]]
    assert attn.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # position t predicts token t+1: targets 7 and 8 in row 0, 9 in row 1; padding never
    assert mask.tolist() == [[0, 1, 1], [1, 0, 0]]


def _tiny_run(tmp_path, text):
    from aigc.cli import main

    corpus = tmp_path / "base.txt"
    corpus.write_text(text, encoding="utf-8")
    run = tmp_path / "base"
    assert main(["train", "gpt", "--data", f"text:{corpus}", "--out", str(run), "--steps", "2",
                 "--context-length", "16", "--width", "16", "--layers", "1", "--heads", "2",
                 "--batch-size", "4", "--no-progress", "--eval-batches", "2"]) == 0
    return run


def test_full_finetune_gpt_lowers_heldout_perplexity(tmp_path):
    from aigc.finetune import finetune_gpt

    words = ["cat", "dog", "bat", "rat", "cow", "hen", "owl", "fox"]
    base_text = "\n\n".join(f"the {w} sat on mat {i}, and the {w} was glad."
                            for i in range(10) for w in words)
    run = _tiny_run(tmp_path, base_text)
    new = tmp_path / "new.txt"
    new.write_text("\n\n".join(f"a {w} and mat {i}" for i in range(10) for w in words),
                   encoding="utf-8")
    cfg = TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5, ema_decay=0.0,
                      eval_every=0, sample_every=0, ckpt_every=0, eval_batches=2)
    result = finetune_gpt(run, f"text:{new}", tmp_path / "tuned", cfg)
    assert result.perplexity_after < 0.8 * result.perplexity_before
    from aigc.models.gpt import load_text_model

    _, _, ckpt = load_text_model(result.out)
    assert ckpt.meta["finetuned_from_sha256"] and ckpt.meta["data"] == f"text:{new}"


def test_finetune_gpt_refuses_unknown_characters(tmp_path):
    from aigc.finetune import finetune_gpt

    run = _tiny_run(tmp_path, "\n\n".join(f"abc abc abc {i}" for i in range(80)))
    new = tmp_path / "zh.txt"
    new.write_text("\n\n".join(f"床前明月光 {i}" for i in range(80)), encoding="utf-8")
    with pytest.raises(DataError, match="never seen"):
        finetune_gpt(run, f"text:{new}", tmp_path / "t", TrainConfig(steps=1))


@pytest.mark.slow
def test_lora_lowers_perplexity_and_adapter_loads(tmp_path):
    from aigc.finetune import chat_perplexity, finetune_chat_lora, load_chat_adapter
    from aigc.generation import SamplingParams
    from aigc.models.pretrained import chat, load_smollm2

    pairs = [("What are your opening hours?", "We are open from 9 to 5, Monday to Friday."),
             ("How do I reset my password?", "Click 'Forgot password' on the sign-in page."),
             ("Do you ship abroad?", "Yes, we ship to 40 countries; see the shipping page.")]
    result = finetune_chat_lora(pairs, pairs, tmp_path / "lora", steps=12, batch_size=3,
                                lr=3e-3, log=lambda *_: None)
    assert result.perplexity_after < 0.7 * result.perplexity_before
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    tuned = load_chat_adapter(tmp_path / "lora")
    _, tok = load_smollm2()
    after = chat_perplexity(tuned.model, tok, pairs)
    assert after == pytest.approx(result.perplexity_after, rel=1e-3)  # merged == adapter
    reply = chat([{"role": "user", "content": pairs[0][0]}],
                 SamplingParams(temperature=0, max_tokens=20), model=tuned, tokenizer=tok).result()
    assert reply.text.strip()
    assert torch.is_tensor(tuned.feed(tok.encode("hi")))
