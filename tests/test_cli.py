import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aigc.cli import main
from aigc.media import read_record

TINY = ["--channels", "4,8", "--hidden", "16", "--latent-dim", "3"]
FAST = ["--steps", "4", "--batch-size", "8", "--eval-every", "2", "--sample-every", "2",
        "--ckpt-every", "2", "--warmup-steps", "1", "--no-progress"]


def _one_error_line(capsys, argv, pattern):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("aigc: error: "), err
    assert pattern in err[0], err[0]
    return err[0]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_train_sample_reconstruct_eval_info_on_a_folder(folder, tmp_path, capsys):
    run = tmp_path / "run"
    data = f"folder:{folder}"
    assert main(["train", "vae", "--data", data, "--out", str(run), *TINY, *FAST]) == 0
    assert (run / "samples" / "step-00000004.png").is_file()
    assert (run / "log.csv").read_text().count("val/loss") >= 2
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--n", "6", "--seed", "3", "--out", str(out)]) == 0
    record = read_record(out)
    assert record["seed"] == 3 and record["family"] == "vae" and len(record["model_sha256"]) == 64
    again = tmp_path / "again.png"
    main(["sample", str(run), "--n", "6", "--seed", "3", "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()  # same record -> byte-identical PNG
    assert main(["reconstruct", str(run), "--data", data, "--split", "train", "--n", "4",
                 "--out", str(tmp_path / "r.png")]) == 0
    metrics = tmp_path / "m.json"
    assert main(["eval", str(run), "--split", "train", "--n", "16", "--out", str(metrics)]) == 0
    report = json.loads(metrics.read_text())
    assert report["values"]["negative_elbo_nats"] > 0 and 0 < report["values"]["ssim"] <= 1
    assert report["protocol"]["data"] == data and report["protocol"]["n"] == 16
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 3
    # Resume extends the same run; changing the model on resume is refused.
    assert main(["train", "vae", "--out", str(run), "--resume", "--steps", "6", "--no-progress"]) == 0
    # the same flags (a recipe) given again with --resume are accepted: nothing changes
    assert main(["train", "vae", "--out", str(run), "--resume", *TINY, "--steps", "7",
                 "--no-progress"]) == 0
    capsys.readouterr()
    _one_error_line(capsys, ["train", "vae", "--out", str(run), "--resume", "--hidden", "9"],
                    "only --steps and --time-limit-s may change, not hidden")


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    _one_error_line(capsys, ["train", "vae", "--data", "cifar10", "--out", str(tmp_path / "r")],
                    "unknown dataset 'cifar10'")
    _one_error_line(capsys, ["data", "show", f"folder:{tmp_path}"], "no files at all")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"latent": 3}}))
    _one_error_line(capsys, ["train", "vae", "--data", "mnist", "--config", str(cfg)],
                    "unknown key(s) 'latent'")
    cfg.write_text(json.dumps({"train": {"steps": "ten"}}))
    _one_error_line(capsys, ["train", "vae", "--data", "mnist", "--config", str(cfg)],
                    "TrainConfig.steps must be an integer, got 'ten'")
    _one_error_line(capsys, ["train", "vae", "--data", "mnist", "--latent-dim", "x"],
                    "--latent-dim expects a number")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    _one_error_line(capsys, ["sample", str(bad)], "not a safetensors file")
    _one_error_line(capsys, ["sample", str(tmp_path / "nope")], "checkpoint not found")
    from aigc.checkpoints import save_model_file
    from aigc.config import config_to_dict
    from aigc.models.vae import VAE, VAEConfig

    cfg = VAEConfig(image_size=8, channels=(4,), hidden=8, latent_dim=2)
    good = save_model_file(tmp_path / "vae.safetensors", family="vae",
                           model_config=config_to_dict(cfg), weights=VAE(cfg).state_dict())
    _one_error_line(capsys, ["sample", str(good), "--n", "0"], "--n must be")


def test_debug_shows_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "aigc.cli", "--debug", "data", "show", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataError" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "aigc.cli", "data", "show", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_data_list_and_show(capsys, tmp_path):
    assert main(["data", "list"]) == 0
    assert "mnist" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert main(["data", "show", "mnist", "--n", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "total   55000    5000   10000" in text
    with Image.open(out) as img:
        assert img.width > 28 * 4
