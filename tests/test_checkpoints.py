import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import save_file

from aigc import checkpoints as ck
from aigc.config import config_to_dict
from aigc.errors import CheckpointError
from aigc.models import model_from_checkpoint
from aigc.models.vae import VAE, VAEConfig

CFG = VAEConfig(image_size=8, channels=(4,), hidden=8, latent_dim=2)


def _save(run_dir, step=1, model=None):
    model = model or VAE(CFG)
    return ck.save_checkpoint(run_dir, step=step, family="vae", model_config=config_to_dict(CFG),
                              weights=model.state_dict(), meta={"data": "mnist"})


def test_a_checkpoint_alone_rebuilds_its_model(tmp_path):
    torch.manual_seed(0)
    model = VAE(CFG)
    folder = _save(tmp_path, step=7, model=model)
    rebuilt, ckpt = model_from_checkpoint(tmp_path)  # a run folder resolves to latest
    assert ckpt.step == 7 and ckpt.family == "vae" and ckpt.meta == {"data": "mnist"}
    assert ckpt.path == folder / ck.MODEL_FILE
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])
    assert len(ckpt.sha256) == 64


def test_latest_moves_and_old_checkpoints_are_pruned(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step=step)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000002", "step-00000003"]


def test_truncated_checkpoint_is_refused_by_name(tmp_path):
    folder = _save(tmp_path)
    file = folder / ck.MODEL_FILE
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=f"{file} is truncated"):
        ck.load_checkpoint(file)


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not an aigc checkpoint"):
        ck.load_checkpoint(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        ck.load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "missing")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    model = VAE(VAEConfig(image_size=8, channels=(4,), hidden=16, latent_dim=2))
    ck.save_model_file(tmp_path / "m.safetensors", family="vae", model_config=config_to_dict(CFG),
                       weights=model.state_dict())
    with pytest.raises(CheckpointError, match="weights do not match its config"):
        model_from_checkpoint(tmp_path / "m.safetensors")


SAVER = textwrap.dedent("""
    import sys, torch
    from aigc import checkpoints as ck
    run_dir = sys.argv[1]
    big = {"w": torch.zeros(3_000_000)}  # 12 MB per file so the kill lands mid-write
    for step in range(1, 10_000):
        big["w"].add_(1.0)
        ck.save_checkpoint(run_dir, step=step, family="vae", model_config={"n": step},
                           weights=big, trainer_tensors={"t": big["w"]},
                           trainer_json={"step": step})
        print(step, flush=True)
""")


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_kill_9_while_saving_leaves_a_complete_latest_checkpoint(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete save exists
        time.sleep(delay)  # then kill at an arbitrary moment of a later save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    folder = ck.latest_checkpoint_dir(tmp_path)
    ckpt = ck.load_checkpoint(folder / ck.MODEL_FILE)
    tensors, info = ck.load_trainer_state(folder)
    assert info["step"] == ckpt.step == json.loads(json.dumps(ckpt.model_config))["n"]
    # Every value was incremented once per step: both files must hold exactly that step's data.
    assert ckpt.weights["w"].numel() == 3_000_000
    assert torch.all(ckpt.weights["w"] == ckpt.step) and torch.all(tensors["t"] == ckpt.step)
    # A new save after the crash cleans the leftovers of the interrupted one.
    _save(tmp_path, step=ckpt.step + 1)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
