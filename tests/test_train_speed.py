"""The trainer's speed options: compile (with its eager fallback), AdamW implementations and
channels-last. Each must leave the numbers (to float rounding) and the checkpoints as they were."""

import csv

import pytest
import torch

from aigc.checkpoints import latest_checkpoint_dir, load_checkpoint
from aigc.config import TrainConfig, config_to_dict
from aigc.models.gpt import GPT, GPTConfig
from aigc.models.vae import VAE, VAEConfig
from aigc.train import CompiledLoss, Trainer

VAE_CFG = VAEConfig(image_size=8, channels=(4, 8), hidden=16, latent_dim=3)
GPT_CFG = GPTConfig(vocab_size=11, context_length=8, layers=1, heads=2, width=8)


class Images:
    def __init__(self, n=64, seed=0):
        self.x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.x)

    def get_batch(self, idx):
        return {"image": self.x[idx]}


class Tokens:
    def __init__(self, n=32):
        self.x = torch.randint(0, 11, (n, 9), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def get_batch(self, idx):
        return {"tokens": self.x[idx]}


def _cfg(**kw):
    base = dict(steps=4, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=0, eval_batches=1,
                ckpt_every=2, sample_every=0, log_every=1, ema_decay=0.9)
    return TrainConfig(**{**base, **kw})


def _vae_trainer(run_dir, **kw):
    torch.manual_seed(0)
    return Trainer(VAE(VAE_CFG), family="vae", model_config=config_to_dict(VAE_CFG),
                   train_data=Images(), val_data=None, cfg=_cfg(**kw), run_dir=run_dir,
                   progress=False)


def _gpt_trainer(run_dir, model=None, **kw):
    torch.manual_seed(0)
    return Trainer(model if model is not None else GPT(GPT_CFG), family="gpt",
                   model_config=config_to_dict(GPT_CFG), train_data=Tokens(), val_data=None,
                   cfg=_cfg(**kw), run_dir=run_dir, progress=False)


def _losses(run_dir):
    with open(run_dir / "log.csv") as fh:
        return [float(r["value"]) for r in csv.DictReader(fh) if r["key"] == "train/loss"]


def _compare_compiled_with_eager(tmp_path, backend):
    eager = _gpt_trainer(tmp_path / "eager")
    eager.fit()
    compiled = _gpt_trainer(tmp_path / "compiled", compile=True)
    compiled.compiled_loss = CompiledLoss(compiled.model, backend=backend)
    compiled.fit()
    assert compiled.compiled_loss.error is None
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)
    a = load_checkpoint(latest_checkpoint_dir(tmp_path / "eager") / "model.safetensors")
    b = load_checkpoint(latest_checkpoint_dir(tmp_path / "compiled") / "model.safetensors")
    assert set(a.weights) == set(b.weights) and not any("_orig_mod" in k for k in b.weights)
    for key in a.weights:
        torch.testing.assert_close(a.weights[key], b.weights[key], rtol=1e-4, atol=1e-5)


def test_compiled_training_step_matches_eager_and_saves_plain_names(tmp_path):
    """Graph capture (dynamo + AOTAutograd, oneDNN custom op included) without C++ codegen."""
    _compare_compiled_with_eager(tmp_path, "aot_eager")


@pytest.mark.slow
def test_inductor_compiled_training_step_matches_eager(tmp_path):
    """The real thing: inductor generates C++ (about 40 s on 2 busy cores)."""
    _compare_compiled_with_eager(tmp_path, "inductor")


def test_a_compiled_module_given_to_the_trainer_checkpoints_without_orig_mod(tmp_path):
    model = torch.compile(GPT(GPT_CFG))  # wrapping is lazy: nothing compiles until it is called
    assert any(k.startswith("_orig_mod.") for k in model.state_dict())
    result = _gpt_trainer(tmp_path, model=model, steps=2).fit()
    ckpt = load_checkpoint(result.checkpoint)
    assert set(ckpt.weights) == set(GPT(GPT_CFG).state_dict())


def test_compile_failure_falls_back_to_eager_with_a_warning():
    torch.manual_seed(0)
    model = GPT(GPT_CFG)
    batch = Tokens().get_batch(torch.arange(4))
    loss_fn = CompiledLoss(model)

    def broken(batch, **kw):
        raise RuntimeError("InductorError: no C++ compiler found")

    loss_fn.compiled = broken
    with pytest.warns(RuntimeWarning, match="torch.compile of GPT.loss failed.*no C\\+\\+ compiler"):
        loss = loss_fn(batch)
    assert loss_fn.compiled is None and "no C++ compiler" in loss_fn.error
    torch.testing.assert_close(loss, model.loss(batch))


@pytest.mark.parametrize("impl", ["for-loop", "foreach", "fused"])
def test_adamw_implementations_train_to_the_same_weights(tmp_path, impl):
    auto = _vae_trainer(tmp_path / "auto").fit()
    other = _vae_trainer(tmp_path / impl, adamw_impl=impl).fit()
    assert _losses(tmp_path / impl) == pytest.approx(_losses(tmp_path / "auto"), rel=1e-4)
    a, b = load_checkpoint(auto.checkpoint), load_checkpoint(other.checkpoint)
    for key in a.weights:
        torch.testing.assert_close(a.weights[key], b.weights[key], rtol=1e-4, atol=1e-5)


def test_channels_last_with_fused_adamw_resumes_exactly(tmp_path):
    """Checkpoints hold contiguous moments; a resumed channels-last model must get them back in
    its own layout (the fused CPU kernel would otherwise pair the wrong elements)."""
    full = _vae_trainer(tmp_path / "full", channels_last=True, adamw_impl="fused").fit()
    assert full.step == 4
    first = _vae_trainer(tmp_path / "cut", steps=2, channels_last=True, adamw_impl="fused").fit()
    assert first.step == 2
    trainer = _vae_trainer(tmp_path / "cut", channels_last=True, adamw_impl="fused")
    conv = next(p for p in trainer.model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    resumed = trainer.fit(resume=True)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in a.weights:
        assert torch.equal(a.weights[key], b.weights[key]), key
    plain = load_checkpoint(_vae_trainer(tmp_path / "plain").fit().checkpoint)
    for key in a.weights:  # channels-last computes the same model as the default layout
        torch.testing.assert_close(a.weights[key], plain.weights[key], rtol=1e-4, atol=1e-5)


def test_unet_gives_the_same_output_in_channels_last():
    from aigc.models.diffusion import Diffusion, DiffusionConfig

    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(image_size=8, channels=(8, 8), attention_levels=(1,),
                                      num_classes=3))
    for p in model.parameters():  # zero-initialised output layers would hide differences
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    c = model.unet.condition(torch.tensor([0, 3]))
    ref = model.unet(x, t, c)
    model = model.to(memory_format=torch.channels_last)
    out = model.unet(x.contiguous(memory_format=torch.channels_last), t, c)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_adamw_auto_is_the_fused_kernel_where_it_applies():
    from aigc.train import adamw_flags

    cpu = [torch.nn.Parameter(torch.zeros(3))]
    assert adamw_flags(TrainConfig(adamw_impl="auto"), cpu) == {"fused": True}
    assert adamw_flags(TrainConfig(adamw_impl="for-loop"), cpu) == {"foreach": False}
    assert adamw_flags(TrainConfig(adamw_impl="auto"), [torch.nn.Parameter(
        torch.zeros(3, device="meta"))]) == {}  # a device without the fused kernel: torch's choice
    assert adamw_flags(TrainConfig(adamw_impl="auto"), []) == {}
