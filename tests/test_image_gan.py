"""GAN family: losses, spectral norm, conditioning, truncation, two optimizers in the trainer."""

import pytest
import torch

from aigc.errors import ConfigError
from aigc.models.gan import GAN, GANConfig

TINY = dict(image_size=8, latent_dim=8, channels=8)


def tiny(**kw) -> GAN:
    torch.manual_seed(0)
    return GAN(GANConfig(**{**TINY, **kw}))


def _batch(b=6):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(b, 1, 8, 8, generator=g), "label": torch.arange(b) % 3}


@pytest.mark.parametrize("field,value,match", [
    ("image_size", 10, "divisible by 4"), ("n_critic", 0, "n_critic"),
    ("gp_weight", -1.0, "gp_weight"), ("num_classes", -2, "num_classes"),
])
def test_bad_config_is_refused(field, value, match):
    with pytest.raises(ConfigError, match=match):
        GANConfig(**{**TINY, field: value})


@pytest.mark.parametrize("loss", ["non-saturating", "hinge", "wgan-gp"])
def test_each_group_loss_moves_only_its_network(loss):
    model = tiny(num_classes=3, loss=loss)
    for group, own, other in [("discriminator", model.discriminator, model.generator),
                              ("generator", model.generator, None)]:
        model.zero_grad(set_to_none=True)
        value = model.loss(_batch(), group=group)
        assert torch.isfinite(value)
        value.backward()
        assert all(p.grad is not None for p in own.parameters())
        if other is not None:  # D's loss must not reach G (fakes are detached)
            assert all(p.grad is None for p in other.parameters())
    assert torch.isfinite(model.loss(_batch()))  # validation: D loss, no gradient penalty


def test_hinge_and_non_saturating_formulas():
    model = tiny(loss="hinge", spectral_norm=False)
    d = torch.tensor([0.5, -2.0])
    assert torch.allclose(torch.relu(1 - d).mean(), torch.tensor((0.5 + 3.0) / 2))
    torch.manual_seed(3)
    # a discriminator that outputs a constant c gives L_D = relu(1-c) + relu(1+c)
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p.zero_()
    assert torch.allclose(model.loss(_batch(), group="discriminator"), torch.tensor(2.0))
    model = tiny(loss="non-saturating", spectral_norm=False)
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p.zero_()
    # softplus(0) + softplus(0) = 2 log 2
    assert torch.allclose(model.loss(_batch(), group="discriminator"), torch.tensor(2 * 0.6931472))


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    model = tiny(loss="wgan-gp", spectral_norm=False)
    real, fake = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    gp = model._gradient_penalty(real, fake, None)
    assert gp >= 0 and torch.isfinite(gp)


def test_spectral_norm_bounds_the_discriminator_layers():
    model = tiny(num_classes=3, spectral_norm=True)
    for _ in range(30):  # power iterations converge in training mode
        model.discriminator(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    for conv in model.discriminator.convs:
        w = conv.weight.flatten(1)
        assert torch.linalg.matrix_norm(w, ord=2) < 1.05
    plain = tiny()
    assert not hasattr(plain.discriminator.convs[0], "parametrizations")
    assert 0.015 < float(plain.discriminator.convs[1].weight.std()) < 0.025  # DCGAN init


def test_class_conditioning_changes_samples_and_truncation_bounds_the_latent():
    model = tiny(num_classes=3)
    with torch.no_grad():
        for cbn in (model.generator.bn0, model.generator.bn1, model.generator.bn2):
            cbn.gamma.weight.normal_(1, 0.5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.sample(4, generator=g(), labels=torch.zeros(4, dtype=torch.long))
    b = model.sample(4, generator=g(), labels=torch.full((4,), 2))
    assert a.shape == (4, 1, 8, 8) and not torch.allclose(a, b)
    assert torch.equal(a, model.sample(4, generator=g(), labels=torch.zeros(4, dtype=torch.long)))
    z = model._latent(500, "cpu", torch.Generator().manual_seed(0), truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    with pytest.raises(ConfigError, match="truncation must be > 0"):
        model.sample(2, truncation=0.0)
    with pytest.raises(ConfigError, match="without class labels"):
        tiny().sample(2, labels=torch.tensor([0, 1]))


class _Images:
    def __init__(self, n=32):
        self.batch = _batch(n)

    def __len__(self):
        return len(self.batch["image"])

    def get_batch(self, idx):
        return {k: v[idx] for k, v in self.batch.items()}


def _fit(tmp_path, steps, resume=False, preview=None, **model_kw):
    from aigc.config import TrainConfig, config_to_dict
    from aigc.models.gan import TRAIN_DEFAULTS
    from aigc.train import Trainer

    model = tiny(num_classes=3, **model_kw)
    cfg = TrainConfig(**{**TRAIN_DEFAULTS, "steps": steps, "batch_size": 8, "sample_every": 1,
                         "ckpt_every": 2, "device": "cpu"})
    trainer = Trainer(model, family="gan", model_config=config_to_dict(model.cfg),
                      train_data=_Images(), val_data=None, cfg=cfg, run_dir=tmp_path,
                      progress=False, preview=preview or (lambda m, s, d: None))
    return trainer, trainer.fit(resume=resume)


def test_two_optimizers_lr_scale_and_n_critic_with_exact_resume(tmp_path):
    kw = dict(loss="wgan-gp", n_critic=2, d_lr_scale=2.0)
    full, _ = _fit(tmp_path / "full", 4, **kw)
    assert set(full.optimizers) == {"discriminator", "generator"}
    d_opt, g_opt = full.optimizers["discriminator"], full.optimizers["generator"]
    # two critic steps per training step, at twice the learning rate
    assert d_opt.state[d_opt.param_groups[0]["params"][0]]["step"] == 8
    assert g_opt.state[g_opt.param_groups[0]["params"][0]]["step"] == 4
    assert d_opt.param_groups[0]["lr"] == 2 * g_opt.param_groups[0]["lr"]

    def crash(model, step, run_dir):  # the process "dies" after the step-2 checkpoint
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", 4, preview=crash, **kw)
    resumed, _ = _fit(tmp_path / "cut", 4, resume=True, **kw)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k


def test_nan_generator_loss_raises_training_diverged(tmp_path):
    from aigc.train import TrainingDiverged

    trainer_model = tiny(num_classes=3)
    real = trainer_model.loss
    trainer_model.loss = lambda batch, group=None: real(batch, group) * (
        float("nan") if group == "generator" else 1.0)
    from aigc.config import TrainConfig, config_to_dict
    from aigc.train import Trainer

    cfg = TrainConfig(steps=3, batch_size=8, sample_every=0, ckpt_every=1, device="cpu")
    trainer = Trainer(trainer_model, family="gan", model_config=config_to_dict(trainer_model.cfg),
                      train_data=_Images(), val_data=None, cfg=cfg, run_dir=tmp_path,
                      progress=False)
    with pytest.raises(TrainingDiverged, match=r"\(generator\)"):
        trainer.fit()
