"""Slow tier: the VAE recipe really trains. Run with AIGC_SLOW=1 (about 4 minutes on 2 cores)."""

import json

import pytest

from aigc.cli import main


@pytest.mark.slow
def test_vae_recipe_reaches_100_nats_on_mnist(tmp_path):
    run = tmp_path / "vae"
    assert main(["train", "vae", "--config", "configs/vae-mnist.json", "--out", str(run),
                 "--no-progress"]) == 0
    out = tmp_path / "m.json"
    assert main(["eval", str(run), "--out", str(out)]) == 0
    values = json.loads(out.read_text())["values"]
    assert values["n"] == 10000
    assert values["negative_elbo_nats"] <= 100.0, values
    assert values["ssim"] > 0.8, values
