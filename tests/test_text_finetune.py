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


def test_grow_depth_keeps_the_function_and_refuses_odd_depths():
    from aigc.errors import ConfigError
    from aigc.models.gpt import GPT, GPTConfig, grow_depth

    torch.manual_seed(0)
    small = GPT(GPTConfig(vocab_size=40, context_length=12, layers=2, heads=2, width=16)).eval()
    with torch.no_grad():  # non-zero projections everywhere, so a wrong copy would show
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown = grow_depth(small, 6).eval()
    x = torch.randint(0, 40, (3, 12))
    assert grown.cfg.layers == 6 and len(grown.blocks) == 6
    torch.testing.assert_close(grown(x), small(x), rtol=0, atol=1e-6)
    # the added blocks start as the identity but are trainable copies, not the same tensors
    assert grown.blocks[1].attn.proj.weight.abs().sum() == 0
    assert grown.blocks[1].attn.qkv.weight.data_ptr() != grown.blocks[0].attn.qkv.weight.data_ptr()
    torch.testing.assert_close(grown.blocks[1].attn.qkv.weight, small.blocks[0].attn.qkv.weight)
    for bad in (1, 3):
        with pytest.raises(ConfigError, match="multiple of the model's 2 layers"):
            grow_depth(small, bad)


def test_finetune_gpt_can_grow_the_model_first(tmp_path):
    from aigc.cli import main
    from aigc.models.gpt import load_text_model

    run = _tiny_run(tmp_path, "\n\n".join(f"the cat sat on mat {i}." for i in range(80)))
    out = tmp_path / "deeper"
    assert main(["finetune", "gpt", str(run), "--data", f"text:{tmp_path / 'base.txt'}", "--out",
                 str(out), "--layers", "2", "--steps", "3", "--batch-size", "4",
                 "--eval-every", "0", "--sample-every", "0", "--ckpt-every", "0",
                 "--eval-batches", "2"]) == 0
    model, _, ckpt = load_text_model(out)
    assert model.cfg.layers == 2 and ckpt.meta["finetuned_from_layers"] == 1


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
