"""aigc.allocator: freed memory kept in the process for CPU training (issue #17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aigc import allocator

# In a fresh process: five training steps (forward + backward) of a small diffusion UNet after
# three to warm up, counting the page faults of those five.
_PROBE = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from aigc import allocator
state = allocator.keep_freed_memory() if sys.argv[1] == "keep" else "default"
from aigc.models.diffusion import Diffusion, DiffusionConfig
torch.manual_seed(0)
model = Diffusion(DiffusionConfig(channels=(16, 32), attention_levels=()))
batch = {"image": torch.rand(16, 1, 28, 28)}
def step():
    model.zero_grad(set_to_none=True)
    model.loss(batch).backward()
for _ in range(3):
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc = pytest.mark.skipif(allocator._glibc() is None, reason="needs glibc's mallopt")


@glibc
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _probe("default"), _probe("keep")
    assert kept["state"] == "on"
    # by default glibc gives the step's freed activations back and faults them in again
    # (16,000-25,000 faults over the five steps here); kept, the next step reuses them (0-2,000
    # left: Python's own arenas and the like, which do not go through malloc)
    assert default["faults"] > 5000, default
    assert kept["faults"] < default["faults"] / 5, (default, kept)


@glibc
def test_switched_off_by_the_environment():
    result = _probe("keep", AIGC_KEEP_FREED_MEMORY="0")
    assert result["state"] == "off"
    assert result["faults"] > 2000, result  # glibc left as it was


def test_idempotent_and_reports_what_it_did():
    first = allocator.keep_freed_memory()
    assert first in ("on", "off", "unsupported")
    assert allocator.keep_freed_memory() == first


@glibc
def test_a_cpu_training_run_keeps_freed_memory(tmp_path):
    # the Trainer turns it on for CPU runs (checked in a fresh process: this one may already have)
    code = """
import sys, torch
from aigc import allocator
from aigc.config import TrainConfig
from aigc.train import Trainer
from aigc.models.vae import VAE, VAEConfig
assert allocator._state is None
model = VAE(VAEConfig(image_size=8, image_channels=1, channels=(4,), hidden=8, latent_dim=2))
class Data:
    def __len__(self): return 4
    def get_batch(self, idx): return {"image": torch.rand(len(idx), 1, 8, 8)}
Trainer(model, family="vae", model_config={}, train_data=Data(), val_data=None,
        cfg=TrainConfig(steps=1, batch_size=2, device="cpu"), run_dir=sys.argv[1], progress=False)
print(allocator._state)
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True,
                         text=True, env={**os.environ, "AIGC_KEEP_FREED_MEMORY": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "on"
