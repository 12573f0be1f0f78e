"""Latent diffusion and its KL autoencoder: tiny models (channels 4-8, 16 px), seconds each."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aigc.cli import main
from aigc.errors import AigcError, ConfigError
from aigc.models import model_from_checkpoint
from aigc.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, latent_std, psnr
from aigc.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig

AE = AutoencoderKLConfig(image_size=16, channels=(4, 8), latent_channels=4)
LDM = LatentDiffusionConfig(image_size=16, ae_channels=(4, 8), latent_channels=4,
                            latent_std=1.0, channels=(8, 8), attention_levels=(1,),
                            max_tokens=8)


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, 16, 16, generator=g),
            "text": torch.randn(b, 8, 384, generator=g),
            "text_mask": torch.arange(8)[None].expand(b, 8) < torch.tensor([[3], [8], [1], [5]])}


def _fit(model, batch, steps=15, lr=3e-3):
    def loss():
        torch.manual_seed(0)  # the same noise and timesteps before and after
        return model.loss(batch).item()

    before = loss()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        torch.manual_seed(step + 1)
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    return before, loss()


def _unzero(model):
    """Give the zero-initialised output layers weights, so outputs depend on the inputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.unet.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_autoencoder_shapes_loss_decreases_and_latent_std():
    torch.manual_seed(0)
    ae = AutoencoderKL(AE)
    x = _batch()["image"]
    assert ae.encode(x).shape == (4, 4, 8, 8) and AE.latent_size == 8
    assert ae.reconstruct(x).shape == x.shape
    before, after = _fit(ae, {"image": x})
    assert after < 0.95 * before, (before, after)
    assert float(psnr(x, x + 0.1).mean()) == pytest.approx(20.0)

    class Split:
        def __len__(self):
            return 4

        def get_batch(self, idx):
            return {"image": x[idx]}

    std = latent_std(ae, Split())
    with torch.no_grad():  # posterior draws: variance of the means plus the mean variance
        mu, logvar = ae.encoder(x * 2 - 1)
    expected = float((mu.var() + logvar.exp().mean()).sqrt())
    assert std == pytest.approx(expected, rel=0.1)


def test_autoencoder_config_errors():
    with pytest.raises(ConfigError, match="divisible"):
        AutoencoderKLConfig(image_size=18, channels=(4, 8, 8))
    with pytest.raises(ConfigError, match="kl_weight"):
        AutoencoderKLConfig(kl_weight=-1.0)
    with pytest.raises(ConfigError, match=r"images must be \(B, 3, 16, 16\)"):
        AutoencoderKL(AE).loss({"image": torch.rand(2, 3, 8, 8)})


def test_latent_diffusion_loss_decreases_and_trains_only_the_denoiser():
    torch.manual_seed(0)
    model = LatentDiffusion(LDM)
    ae_before = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    before, after = _fit(model, _batch())
    assert after < before, (before, after)
    assert all(torch.equal(v, model.autoencoder.state_dict()[k]) for k, v in ae_before.items())


def test_guidance_one_is_the_conditional_prediction_and_w_mixes():
    torch.manual_seed(0)
    model = _unzero(LatentDiffusion(LDM)).eval()
    b = _batch()
    z, text, mask = torch.randn(4, 4, 8, 8), b["text"], b["text_mask"]
    tt = torch.full((4,), 500)
    cond = model.unet(z, tt, text, mask)
    assert torch.allclose(model._guided(z, 500, text, mask, 1.0), cond)
    null = model._guided(z, 500, text, mask, 0.0)
    assert not torch.allclose(null, cond, atol=1e-4)  # the text matters
    mixed = model._guided(z, 500, text, mask, 3.0)
    assert torch.allclose(mixed, null + 3.0 * (cond - null), atol=1e-5)


def test_sampling_is_seed_deterministic_and_shaped():
    torch.manual_seed(0)
    model = _unzero(LatentDiffusion(LDM)).eval()
    b = _batch()

    def draw(seed, **kw):
        return model.sample(4, generator=torch.Generator().manual_seed(seed), text=b["text"],
                            text_mask=b["text_mask"], steps=2, **kw)

    a = draw(0)
    assert a.shape == (4, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, draw(0))
    assert not torch.equal(a, draw(1))
    assert torch.equal(draw(0, sampler="ddim"), draw(0, sampler="ddim"))
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    alone = model.sample(1, generator=torch.Generator().manual_seed(2), text=b["text"][2:3],
                         text_mask=b["text_mask"][2:3], steps=2)
    together = model.sample(4, generator=gens, text=b["text"], text_mask=b["text_mask"], steps=2)
    assert torch.allclose(together[2], alone[0], atol=1e-5)


def test_prompt_errors():
    model = LatentDiffusion(LDM).eval()
    with pytest.raises(ConfigError, match="non-empty"):
        model.sample(1, prompt="  ", steps=1)
    with pytest.raises(ConfigError, match="cannot read"):
        model.sample(1, prompt="一只猫", steps=1)
    with pytest.raises(ConfigError, match="2 prompts for 3 images"):
        model.sample(3, prompt=["a cat", "a dog"], steps=1)
    with pytest.raises(ConfigError, match=r"text must be \(n=1"):
        model.sample(1, text=torch.randn(1, 4, 16), steps=1)
    with pytest.raises(ConfigError, match="size must be the trained image size 16"):
        model.sample(1, size=32, steps=1)
    embeddings_only = LatentDiffusion(LatentDiffusionConfig(
        image_size=16, ae_channels=(4, 8), channels=(8,), attention_levels=(0,),
        text_encoder="none", text_dim=16))
    with pytest.raises(ConfigError, match="precomputed embeddings"):
        embeddings_only.sample(1, prompt="a cat", steps=1)
    out = embeddings_only.sample(1, text=torch.randn(1, 5, 16), steps=1)  # any encoder plugs in
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="attention_levels"):
        LatentDiffusionConfig(channels=(8,), attention_levels=(1,))


@pytest.fixture
def colours(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "colours"
    for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / name).mkdir(parents=True)
        for i in range(24):
            arr = np.clip(rng.normal(rgb, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


FAST = ["--steps", "2", "--batch-size", "8", "--eval-every", "0", "--sample-every", "0",
        "--ckpt-every", "2", "--warmup-steps", "1", "--no-progress"]


def test_cli_trains_both_stages_and_the_checkpoint_rebuilds(colours, tmp_path, capsys):
    data = f"folder:{colours}"
    ae_run, run = tmp_path / "ae", tmp_path / "ldm"
    assert main(["train", "autoencoder-kl", "--config", "configs/autoencoder-kl-tiny.json",
                 "--data", data, "--out", str(ae_run), *FAST]) == 0
    assert main(["train", "latent-diffusion", "--config", "configs/latent-diffusion-tiny.json",
                 "--data", data, "--autoencoder", str(ae_run), "--out", str(run), *FAST]) == 0
    for r in (ae_run, run):  # both stages train in channels-last by default (issue #17)
        assert json.loads((r / "run.json").read_text())["train"]["channels_last"] is True
    model, ckpt = model_from_checkpoint(run)
    assert ckpt.family == "latent-diffusion" and model.cfg.latent_std > 0
    assert model.cfg.ae_channels == (4, 8) and ckpt.meta["captions"] > 0
    ae, _ = model_from_checkpoint(ae_run)
    for k, v in ae.state_dict().items():  # the frozen first stage came from the autoencoder run
        assert torch.equal(v, model.autoencoder.state_dict()[k]), k
    again, _ = model_from_checkpoint(run)
    kw = {"prompt": "a photo of a red thing", "steps": 2}
    assert torch.equal(model.sample(2, generator=torch.Generator().manual_seed(0), **kw),
                       again.sample(2, generator=torch.Generator().manual_seed(0), **kw))
    # Resume continues from the checkpoint (the first stage and latent_std as stored).
    assert main(["train", "latent-diffusion", "--out", str(run), "--resume", "--steps", "3",
                 "--no-progress"]) == 0
    resumed, ckpt3 = model_from_checkpoint(run)
    assert ckpt3.step == 3 and resumed.cfg == model.cfg
    assert all(torch.equal(v, resumed.autoencoder.state_dict()[k])
               for k, v in model.autoencoder.state_dict().items())
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--n", "2", "--prompt", "a red square", "--steps", "2",
                 "--out", str(out)]) == 0
    replay = tmp_path / "r.png"
    assert main(["sample", "--replay", str(out), "--out", str(replay)]) == 0
    assert replay.read_bytes() == out.read_bytes()
    blocks = tmp_path / "b.png"  # seeding blocks of one: image i from seed block i
    assert main(["sample", str(run), "--n", "2", "--prompt", "a red square", "--steps", "2",
                 "--seed-block", "1", "--out", str(blocks)]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "红色", "--steps", "2",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_needs_an_autoencoder(colours, tmp_path, capsys):
    assert main(["train", "latent-diffusion", "--data", f"folder:{colours}",
                 "--out", str(tmp_path / "r"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--autoencoder" in err[0], err
    with pytest.raises(AigcError):
        raise ConfigError("ConfigError is an AigcError")


def test_sentence_tokens_train_and_condition_sampling():
    """sentence_prob > 0 trains on one-token contexts (the unit mean of the caption's token
    states times sentence_scale); sample() takes the same contexts from sentence vectors."""
    from dataclasses import replace

    from aigc.models.latent_diffusion import sentence_vectors, token_norm

    batch = _batch()
    vec = sentence_vectors(batch["text"], batch["text_mask"])
    assert torch.allclose(vec.norm(dim=-1), torch.ones(4), atol=1e-5)
    # row 2 has one real token: its sentence vector is that token, normalised
    assert torch.allclose(vec[2], torch.nn.functional.normalize(batch["text"][2, 0], dim=0),
                          atol=1e-5)
    scale = token_norm(batch["text"], batch["text_mask"])
    assert scale == pytest.approx(float(batch["text"][batch["text_mask"]].norm(dim=-1).mean()))

    torch.manual_seed(0)
    plain = LatentDiffusion(LDM)
    with pytest.raises(ConfigError, match="not trained on sentence tokens"):
        plain.sentence_context(vec)
    cfg = replace(LDM, sentence_prob=1.0, sentence_scale=scale)
    model = _unzero(LatentDiffusion(cfg))
    model.load_state_dict(_unzero(plain).state_dict())
    # with sentence_prob 1 the loss sees only the sentence token: the padded tokens are ignored
    torch.manual_seed(0)
    a = model.loss(batch)
    torch.manual_seed(0)
    b = model.loss({**batch, "text": batch["text"] * 3.0})  # same unit means: same loss
    assert torch.allclose(a, b, atol=1e-5)
    torch.manual_seed(0)
    assert not torch.allclose(a, plain.loss({**batch, "text": batch["text"] * 3.0}), atol=1e-5)

    text, mask = model.sentence_context(vec)
    assert text.shape == (4, 1, 384) and mask.all()
    assert torch.allclose(text[:, 0].norm(dim=-1), torch.full((4,), scale), atol=1e-4)
    g = [torch.Generator().manual_seed(i) for i in range(4)]
    images = model.sample(4, text=text, text_mask=mask, steps=2, generator=g)
    assert images.shape == (4, 3, 16, 16)
    with pytest.raises(ConfigError, match="sentence vectors must be"):
        model.sentence_context(torch.zeros(4, 5))
    with pytest.raises(ConfigError, match="sentence_scale must be >= 0"):
        replace(LDM, sentence_scale=-1.0)
