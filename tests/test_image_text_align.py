"""Prompt path of text-conditional diffusion: alignment loss, `aigc finetune text-align`,
Chinese glossing for MiniLM, and `sample(prompt=...)`."""

import pytest
import torch

from aigc.checkpoints import save_model_file
from aigc.cli import main
from aigc.config import config_to_dict
from aigc.errors import ConfigError
from aigc.models import model_from_checkpoint
from aigc.models.diffusion import (
    Diffusion,
    DiffusionConfig,
    align_text,
    noisy_embeddings,
    text_alignment_loss,
)
from aigc.models.pretrained import gloss_for_minilm

TINY = dict(image_size=8, channels=(4, 8), attention_levels=(1,), num_train_timesteps=20,
            num_classes=3, text_conditioning=True)


def _tiny(**kw) -> Diffusion:
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(**{**TINY, **kw}))


def _clusters(per_class=8, classes=3, seed=0):
    """Unit vectors in three well separated clusters (stand-ins for caption embeddings)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, 384, generator=g), dim=1)
    x = centres.repeat_interleave(per_class, 0) + 0.3 * torch.randn(classes * per_class, 384,
                                                                     generator=g) / 384 ** 0.5
    return torch.nn.functional.normalize(x, dim=1), torch.arange(classes).repeat_interleave(per_class)


def test_alignment_maps_each_caption_to_its_class_and_leaves_the_unet_alone():
    model = _tiny()
    emb, labels = _clusters()
    before = {k: v.clone() for k, v in model.state_dict().items() if "text_proj" not in k}
    record = align_text(model, emb, labels, steps=300, batch_size=32, lr=3e-3, noise=0.2,
                        progress=False)
    assert record["nearest_class_accuracy_after"] == 1.0
    assert record["final_loss"] < text_alignment_loss(_tiny().unet, emb, labels).item()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # only text_proj changed


def test_alignment_loss_joins_the_training_loss_only_when_weighted():
    emb, labels = _clusters(per_class=2)
    batch = {"image": torch.rand(6, 1, 8, 8), "label": labels, "text": emb}
    torch.manual_seed(1)
    plain = _tiny().loss(batch)
    torch.manual_seed(1)
    weighted = _tiny(text_align_weight=1.0).loss(batch)
    assert weighted > plain


def test_noisy_embeddings_stay_unit_norm_and_zero_noise_is_identity():
    emb, _ = _clusters()
    assert torch.equal(noisy_embeddings(emb, 0.0), emb)
    moved = noisy_embeddings(emb, 0.5)
    assert torch.allclose(moved.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
    assert not torch.allclose(moved, emb)


@pytest.mark.parametrize("kw,match", [({"steps": 0}, "steps"), ({"noise": -1.0}, "noise")])
def test_alignment_refuses_bad_settings(kw, match):
    emb, labels = _clusters()
    with pytest.raises(ConfigError, match=match):
        align_text(_tiny(), emb, labels, progress=False, **kw)


def test_alignment_needs_classes_and_text():
    emb, labels = _clusters()
    with pytest.raises(ConfigError, match="classes and text"):
        align_text(_tiny(text_conditioning=False), emb, labels, progress=False)


def test_gloss_replaces_only_words_minilm_cannot_read():
    assert gloss_for_minilm("一双短靴") == "一双 ankle boot"
    assert gloss_for_minilm("手写数字七") == "手写数字 seven"
    # 一 and 二 are in MiniLM's vocabulary: left alone (一 is also the article in 一双)
    assert gloss_for_minilm("一个手写的二") == "一个手写的二"
    assert gloss_for_minilm("a photo of a boot") == "a photo of a boot"


def test_glossed_chinese_class_words_no_longer_embed_alike():
    from aigc.models.pretrained import embed_sentences

    raw = embed_sentences(["一双短靴", "一双凉鞋"])
    glossed = embed_sentences([gloss_for_minilm("一双短靴"), gloss_for_minilm("一双凉鞋")])
    assert float(raw[0] @ raw[1]) > 0.99  # both are "一双 [UNK] [UNK]" to MiniLM
    assert float(glossed[0] @ glossed[1]) < 0.9


def test_sample_takes_prompt_strings_read_as_the_model_was_trained(tmp_path):
    model = _tiny(text_encoder="minilm-zh-gloss").eval()
    a = model.sample(2, generator=torch.Generator().manual_seed(0), prompt=["一双短靴"] * 2,
                     sampler="ddim", steps=2)
    emb = model.embed_prompts(["一双 ankle boot"] * 2)
    b = model.sample(2, generator=torch.Generator().manual_seed(0), text=emb, sampler="ddim",
                     steps=2)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="without text conditioning"):
        _tiny(text_conditioning=False).sample(1, prompt=["a boot"])


def test_cli_text_align_writes_a_model_with_its_record(tmp_path, capsys):
    model = _tiny(num_classes=10)
    src = save_model_file(tmp_path / "m.safetensors", family="diffusion",
                          model_config=config_to_dict(model.cfg), weights=model.state_dict(),
                          meta={"data": "mnist", "class_names": [str(i) for i in range(10)]})
    out = tmp_path / "aligned.safetensors"
    assert main(["finetune", "text-align", str(src), "--out", str(out), "--steps", "50"]) == 0
    assert "captions mapped to their own class" in capsys.readouterr().out
    aligned, ckpt = model_from_checkpoint(out)
    assert aligned.cfg.text_encoder == "minilm-zh-gloss"
    assert ckpt.meta["text_align"]["steps"] == 50 and len(ckpt.meta["text_align"]["from_sha256"]) == 64
    assert main(["finetune", "text-align", str(src), "--out", str(tmp_path / "x.bin")]) == 2


def test_cli_finetune_diffusion_continues_on_the_recorded_data_with_new_text_fields(tmp_path, capsys):
    model = _tiny(num_classes=10, image_size=28)
    src = save_model_file(tmp_path / "m.safetensors", family="diffusion",
                          model_config=config_to_dict(model.cfg), weights=model.state_dict(),
                          meta={"data": "mnist", "class_names": [str(i) for i in range(10)]})
    out = tmp_path / "run"
    rc = main(["finetune", "diffusion", str(src), "--out", str(out), "--text-align-weight", "1",
               "--text-noise", "0.5", "--steps", "2", "--batch-size", "4", "--eval-every", "0",
               "--sample-every", "0"])
    assert rc == 0
    tuned, ckpt = model_from_checkpoint(out)
    assert ckpt.step == 2 and tuned.cfg.text_align_weight == 1.0 and tuned.cfg.text_noise == 0.5
    assert ckpt.meta["finetuned_from_sha256"] and ckpt.meta["data"] == "mnist"
