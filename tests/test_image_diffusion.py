"""Diffusion family: config checks, loss, conditioning, guidance, sampling, trainer integration."""

import pytest
import torch

from aigc.errors import ConfigError
from aigc.models.diffusion import Diffusion, DiffusionConfig

TINY = dict(image_size=8, channels=(4, 8), attention_levels=(1,), num_train_timesteps=20)


def tiny(**kw) -> Diffusion:
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(**{**TINY, **kw}))


def _batch(b=6, text=True):
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 1, 8, 8, generator=g), "label": torch.arange(b) % 3}
    if text:
        batch["text"] = torch.nn.functional.normalize(torch.randn(b, 384, generator=g), dim=1)
    return batch


@pytest.mark.parametrize("field,value,match", [
    ("attention_levels", (3,), "attention_levels"),
    ("image_size", 9, "divisible"),
    ("cond_drop_prob", 1.5, "cond_drop_prob"),
    ("channels", (), "channels"),
    ("num_train_timesteps", 1, "num_train_timesteps"),
])
def test_bad_config_is_refused_naming_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        DiffusionConfig(**{**TINY, field: value})


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_loss_is_finite_and_trains_every_conditioning_path(prediction, schedule):
    model = tiny(num_classes=3, text_conditioning=True, prediction=prediction, schedule=schedule)
    with torch.no_grad():  # output convs start at zero (ADM); perturb so gradient flows back
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = model.loss(_batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # class embeddings, the text projection and the UNet all receive gradient
    assert model.unet.class_emb.weight.grad.abs().sum() > 0
    assert model.unet.text_proj[0].weight.grad.abs().sum() > 0


def test_v_target_relation():
    """v = sqrt(a) eps - sqrt(1-a) x0 recovers x0 = sqrt(a) x_t - sqrt(1-a) v exactly."""
    from aigc.models.samplers._common import x0_and_eps

    a, x0, eps = 0.3, torch.randn(5), torch.randn(5)
    x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a ** 0.5 * eps - (1 - a) ** 0.5 * x0
    rx0, reps = x0_and_eps(v, x_t, a, "v")
    assert torch.allclose(rx0, x0, atol=1e-6) and torch.allclose(reps, eps, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_sampling_is_seeded_and_in_range(sampler):
    model = tiny(num_classes=3).eval()
    kw = dict(labels=torch.tensor([0, 1, 2]), sampler=sampler, steps=4, guidance=2.0)
    a = model.sample(3, generator=torch.Generator().manual_seed(1), **kw)
    b = model.sample(3, generator=torch.Generator().manual_seed(1), **kw)
    c = model.sample(3, generator=torch.Generator().manual_seed(2), **kw)
    assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_classifier_free_guidance_combines_the_two_predictions():
    model = tiny(num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():  # make outputs depend on the condition
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 1, 8, 8)
        labels = torch.tensor([0, 2])
        cond = model.unet.condition(labels)
        null = model.unet.condition(torch.full((2,), 3))
        tt = torch.full((2,), 7)
        e_c, e_u = model.unet(x, tt, cond), model.unet(x, tt, null)
        w = 2.5
        assert torch.allclose(model._guided(x, 7, cond, null, w), e_u + w * (e_c - e_u), atol=1e-5)
        assert torch.allclose(model._guided(x, 7, cond, null, 1.0), e_c, atol=1e-6)
        assert not torch.allclose(e_c, e_u)


def test_text_conditioning_and_its_refusals():
    model = tiny(num_classes=3, text_conditioning=True).eval()
    text = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    out = model.sample(2, generator=torch.Generator().manual_seed(0), text=text, steps=2)
    assert out.shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match="not both"):
        model.sample(2, labels=torch.tensor([0, 1]), text=text, steps=2)
    plain = tiny(num_classes=3).eval()
    with pytest.raises(ConfigError, match="without text conditioning"):
        plain.sample(2, text=text, steps=2)
    with pytest.raises(ConfigError, match="without class labels"):
        tiny().eval().sample(2, labels=torch.tensor([0, 1]), steps=2)


def test_unet_samples_at_another_size():
    model = tiny(num_classes=3).eval()
    out = model.sample(1, labels=torch.tensor([1]), steps=2, size=16)
    assert out.shape == (1, 1, 16, 16)


class _Images:
    def __init__(self, n=32, text=True):
        self.batch = _batch(n, text)

    def __len__(self):
        return len(self.batch["image"])

    def get_batch(self, idx):
        return {k: v[idx] for k, v in self.batch.items()}


def _trainer(tmp_path, model, steps, **kw):
    from aigc.config import TrainConfig, config_to_dict
    from aigc.train import Trainer

    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, eval_every=0,
                      sample_every=0, ckpt_every=1, device="cpu", **kw)
    return Trainer(model, family="diffusion", model_config=config_to_dict(model.cfg),
                   train_data=_Images(), val_data=None, cfg=cfg, run_dir=tmp_path, progress=False)


def test_trains_with_the_shared_trainer_and_reloads(tmp_path):
    from aigc.models import model_from_checkpoint

    model = tiny(num_classes=3, text_conditioning=True)
    result = _trainer(tmp_path, model, 3).fit()
    assert result.step == 3 and result.last_train_loss == result.last_train_loss  # not NaN
    loaded, ckpt = model_from_checkpoint(tmp_path)
    assert ckpt.family == "diffusion" and loaded.cfg.text_conditioning
    # the noise schedule is derived from the config, not stored
    assert not any("alphas_cumprod" in k for k in ckpt.weights)
    assert torch.equal(loaded.alphas_cumprod, model.alphas_cumprod)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    from aigc.checkpoints import file_sha256, latest_checkpoint_dir
    from aigc.train import TrainingDiverged

    model = tiny(num_classes=3, text_conditioning=True)
    real_loss = model.loss
    calls = {"n": 0}

    def loss(batch):
        calls["n"] += 1
        value = real_loss(batch)
        return value * float("nan") if calls["n"] == 3 else value

    model.loss = loss
    trainer = _trainer(tmp_path, model, 10)
    with pytest.raises(TrainingDiverged, match="step 2.*last good checkpoint.*Try a lower --lr"):
        trainer.fit()
    last = latest_checkpoint_dir(tmp_path)
    assert last.name == "step-00000002"
    before = file_sha256(last / "model.safetensors")
    assert torch.isfinite(torch.stack([v.float().sum() for v in trainer.model.state_dict().values()])).all()
    assert file_sha256(last / "model.safetensors") == before


def test_caption_dataset_draws_a_caption_of_the_right_class():
    from aigc.data.images import ImageDataset
    from aigc.models.diffusion import CaptionedImages

    images = ImageDataset("toy", "train", torch.zeros(6, 1, 8, 8, dtype=torch.uint8),
                          torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"], source="test")
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    emb = torch.eye(6, 384)  # caption i embeds as e_i
    ds = CaptionedImages(images, emb, labels)
    torch.manual_seed(0)
    for _ in range(20):
        batch = ds.get_batch(torch.arange(6))
        picked = batch["text"].argmax(1)
        assert torch.equal(labels[picked], batch["label"])
