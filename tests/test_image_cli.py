"""``aigc sample`` for gan and diffusion: conditioning flags, bounds, records and exact replay."""

import json

import pytest
import torch

from aigc.checkpoints import save_model_file
from aigc.cli import main
from aigc.config import config_to_dict
from aigc.data.images import FASHION_CLASSES
from aigc.media import read_record
from aigc.models.diffusion import Diffusion, DiffusionConfig
from aigc.models.gan import GAN, GANConfig

META = {"data": "fashion-mnist", "class_names": FASHION_CLASSES}


def _save(path, family, model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_model_file(path, family=family, model_config=config_to_dict(model.cfg),
                           weights=model.state_dict(), meta=META)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny = dict(image_size=8, channels=(4, 8), attention_levels=(1,), num_train_timesteps=20,
                num_classes=10)
    return {
        "text": _save(root / "text.safetensors", "diffusion",
                      Diffusion(DiffusionConfig(**tiny, text_conditioning=True))),
        "class": _save(root / "class.safetensors", "diffusion", Diffusion(DiffusionConfig(**tiny))),
        "gan": _save(root / "gan.safetensors", "gan",
                     GAN(GANConfig(image_size=8, latent_dim=8, channels=8, num_classes=10))),
    }


def test_class_by_name_writes_a_full_record_and_replays_byte_identical(models, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["sample", str(models["class"]), "--class", "sneaker", "--n", "4", "--seed", "3",
                 "--sampler", "ddim", "--steps", "5", "--guidance", "2.5", "--eta", "0.5",
                 "--out", str(out)]) == 0
    rec = read_record(out)
    assert rec["label"] == 7 and rec["class_name"] == "Sneaker" and rec["seed"] == 3
    assert rec["options"] == {"sampler": "ddim", "steps": 5, "guidance": 2.5, "eta": 0.5,
                              "size": 8}
    assert rec["format"] == 2 and rec["checkpoint"] == str(models["class"].resolve())
    assert len(rec["model_sha256"]) == 64 and "torch" in rec["versions"]
    again = tmp_path / "b.png"
    assert main(["sample", "--replay", str(out), "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["class_name"] == "Sneaker"


def test_prompt_and_gan_truncation_replay_byte_identical(models, tmp_path):
    out = tmp_path / "p.png"
    assert main(["sample", str(models["text"]), "--prompt", "一只短靴", "--n", "2", "--steps", "3",
                 "--out", str(out)]) == 0
    assert read_record(out)["prompt"] == "一只短靴"
    assert main(["sample", "--replay", str(out), "--out", str(tmp_path / "p2.png")]) == 0
    assert (tmp_path / "p2.png").read_bytes() == out.read_bytes()
    g = tmp_path / "g.png"
    assert main(["sample", str(models["gan"]), "--class", "7", "--truncation", "0.7", "--n", "3",
                 "--out", str(g)]) == 0
    assert read_record(g)["options"] == {"truncation": 0.7}
    assert main(["sample", "--replay", str(g), "--out", str(tmp_path / "g2.png")]) == 0
    assert (tmp_path / "g2.png").read_bytes() == g.read_bytes()


def test_different_seed_gives_different_images(models, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    main(["sample", str(models["gan"]), "--n", "4", "--seed", "1", "--out", str(a)])
    main(["sample", str(models["gan"]), "--n", "4", "--seed", "2", "--out", str(b)])
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.parametrize("which,argv,message", [
    ("class", ["--class", "spaceship"], "unknown class 'spaceship'; known classes: T-shirt/top"),
    ("class", ["--prompt", "a boot"], "trained without text conditioning"),
    ("gan", ["--prompt", "a boot"], "gan model has no text conditioning"),
    ("gan", ["--steps", "10"], "--steps do(es) not apply to a gan model"),
    ("class", ["--steps", "0"], "--steps must be between 1 and 20"),
    ("class", ["--steps", "21"], "--steps must be between 1 and 20"),
    ("class", ["--guidance", "31"], "--guidance must be between 0 and 30"),
    ("class", ["--n", "0"], "--n must be between 1 and 1024"),
    ("class", ["--n", "5000"], "--n must be between 1 and 1024"),
    ("class", ["--size", "13"], "--size must be between 8 and 256 and divisible by 2"),
    ("class", ["--size", "512"], "--size must be between 8 and 256"),
    ("class", ["--eta", "0.3"], "--eta applies to --sampler ddim only"),
    ("gan", ["--truncation", "9"], "--truncation must be in (0, 4]"),
    ("text", ["--class", "3", "--prompt", "x"], "not both"),
])
def test_bad_input_is_refused_naming_the_bound(models, tmp_path, capsys, which, argv, message):
    code = main(["sample", str(models[which]), "--out", str(tmp_path / "x.png"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "x.png").exists()


def test_replay_refuses_a_different_model(models, tmp_path, capsys):
    out = tmp_path / "a.png"
    main(["sample", str(models["class"]), "--n", "2", "--steps", "2", "--out", str(out)])
    assert main(["sample", str(models["text"]), "--replay", str(out), "--out",
                 str(tmp_path / "b.png")]) == 2
    assert "is not the model that made" in capsys.readouterr().err


def test_unknown_starter_lists_known_ones(capsys):
    assert main(["sample", "starter:nope"]) == 2
    assert "no starter model 'starter:nope'" in capsys.readouterr().err


def test_memory_format_is_recorded_and_replayed(models, tmp_path, monkeypatch):
    from aigc.media import save_grid

    args = ["sample", str(models["class"]), "--class", "3", "--n", "4", "--seed", "5", "--steps",
            "4"]
    cl, nchw = tmp_path / "cl.png", tmp_path / "nchw.png"
    assert main([*args, "--out", str(cl)]) == 0  # diffusion draws in channels-last by default
    assert read_record(cl)["memory_format"] == "channels_last"
    monkeypatch.setenv("AIGC_SAMPLING_FORMAT", "contiguous")
    assert main([*args, "--out", str(nchw)]) == 0
    rec = read_record(nchw)
    assert rec["memory_format"] == "contiguous"
    monkeypatch.delenv("AIGC_SAMPLING_FORMAT")
    for original in (cl, nchw):  # each replays in its own format, to the same bytes
        again = tmp_path / f"again-{original.name}"
        assert main(["sample", "--replay", str(original), "--out", str(again)]) == 0
        assert again.read_bytes() == original.read_bytes()
    # a record from before the field replays in NCHW, as it was drawn
    del rec["memory_format"]
    old = tmp_path / "old.png"
    save_grid(old, torch.zeros(1, 1, 8, 8), nrow=1, record=rec)
    assert main(["sample", "--replay", str(old), "--out", str(tmp_path / "old-again.png")]) == 0
    assert (tmp_path / "old-again.png").read_bytes() == nchw.read_bytes()
    monkeypatch.setenv("AIGC_SAMPLING_FORMAT", "nhwc")
    assert main([*args, "--out", str(tmp_path / "bad.png")]) == 2
