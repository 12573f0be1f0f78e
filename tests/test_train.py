import csv
import math

import pytest
import torch
from torch import nn

from aigc.checkpoints import latest_checkpoint_dir, load_checkpoint
from aigc.config import TrainConfig, config_to_dict
from aigc.errors import CheckpointError, DataError
from aigc.models.vae import VAE, VAEConfig
from aigc.train import EpochSampler, Trainer, TrainingDiverged, augment_images, lr_at

CFG = VAEConfig(image_size=8, channels=(4, 8), hidden=16, latent_dim=3)


class Images:
    """A small in-memory image dataset following the trainer's data contract."""

    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 8, 8, generator=g)

    def __len__(self):
        return len(self.x)

    def get_batch(self, idx):
        return {"image": self.x[idx]}


def _trainer(run_dir, steps=6, preview=None, **kw):
    torch.manual_seed(123)
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=2,
                      eval_batches=2, ckpt_every=3, sample_every=1, log_every=1, augment=True,
                      ema_decay=0.9, **kw)
    return Trainer(VAE(CFG), family="vae", model_config=config_to_dict(CFG), train_data=Images(),
                   val_data=Images(32, seed=1), cfg=cfg, run_dir=run_dir, preview=preview,
                   progress=False)


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    full = _trainer(tmp_path / "full", preview=lambda m, s, d: None).fit()

    def crash(model, step, run_dir):  # the process "dies" after the step-3 checkpoint
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "cut", preview=crash).fit()
    assert latest_checkpoint_dir(tmp_path / "cut").name == "step-00000003"
    resumed = _trainer(tmp_path / "cut", preview=lambda m, s, d: None).fit(resume=True)
    assert resumed.step == full.step == 6
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in a.weights:
        assert torch.equal(a.weights[key], b.weights[key]), key
        assert torch.equal(a.ema_weights[key], b.ema_weights[key]), key
    # The log holds no rows from the lost steps 4-5 of the crashed attempt twice.
    with open(tmp_path / "cut" / "log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r["key"] == "train/loss"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path):
    trainer = _trainer(tmp_path, steps=8)
    before = None
    original = trainer.model.loss

    def poisoned(batch):
        loss = original(batch)
        return loss * float("nan") if trainer.step >= 4 else loss

    trainer.model.loss = poisoned
    with pytest.raises(TrainingDiverged, match="loss became nan at step 4.*step-00000003.*--lr"):
        trainer.fit()
    before = load_checkpoint(tmp_path)
    assert before.step == 3 and all(torch.isfinite(v).all() for v in before.weights.values())


def test_an_existing_run_is_never_overwritten(tmp_path):
    _trainer(tmp_path, steps=3).fit()
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        _trainer(tmp_path, steps=3).fit()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _trainer(tmp_path / "empty", steps=3).fit(resume=True)


def test_early_stopping_stops_when_validation_stops_improving(tmp_path):
    class Stuck(nn.Module):  # validation loss is constant: the first eval is the best
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def loss(self, batch):
            return (self.w - 1).pow(2).sum() if self.training else torch.tensor(1.0)

    cfg = TrainConfig(steps=100, batch_size=8, eval_every=2, patience=2, ema_decay=0,
                      sample_every=0, ckpt_every=0)
    result = Trainer(Stuck(), family="vae", model_config={}, train_data=Images(16),
                     val_data=Images(16), cfg=cfg, run_dir=tmp_path, progress=False).fit()
    assert result.stopped == "early-stopped" and result.step == 6


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_sampler_covers_each_epoch_once_and_refuses_tiny_data():
    s = EpochSampler(10, 3, seed=0)
    epoch0 = torch.cat([s.indices(i) for i in range(3)])
    assert len(set(epoch0.tolist())) == 9
    assert torch.equal(s.indices(4), EpochSampler(10, 3, seed=0).indices(4))
    with pytest.raises(DataError, match="fewer than batch_size=16"):
        EpochSampler(10, 16, seed=0)


def test_augmentation_flips_and_shifts_without_changing_content():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    out = augment_images(x, torch.Generator().manual_seed(0), pad=0)
    for a, b in zip(x, out):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    shifted = augment_images(x, torch.Generator().manual_seed(3), pad=2)
    assert shifted.shape == x.shape
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_bf16_autocast_trains_and_checkpoints_fp32_weights(tmp_path):
    result = _trainer(tmp_path, steps=3, bf16=True).fit()
    assert math.isfinite(result.last_train_loss) and result.step == 3
    ckpt = load_checkpoint(result.checkpoint)
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt.weights.values())
