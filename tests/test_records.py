"""Records and reproducibility: one record format for the CLI and the studio, defaults resolved
at queue time, replay of studio items from the CLI, records that work from any folder and with
any thread count, and training runs that the seed fixes completely."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from studio_fixtures import make_settings, wait_job

from aigc.checkpoints import load_checkpoint, save_model_file
from aigc.cli import main
from aigc.config import config_to_dict
from aigc.media import read_record
from aigc.models.diffusion import Diffusion, DiffusionConfig
from aigc.studio.app import create_app

TINY = dict(image_size=8, channels=(4, 8), attention_levels=(1,), num_train_timesteps=20,
            num_classes=3)
NAMES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def diffusion(tmp_path_factory):
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(**TINY))
    with torch.no_grad():  # the UNet's last layer starts at zero: make the output depend on x
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("m") / "tiny-diffusion.safetensors"
    save_model_file(path, family="diffusion", model_config=config_to_dict(model.cfg),
                    weights=model.state_dict(), meta={"data": "test", "class_names": NAMES})
    return path


def _item_png(client, item_id: str, path) -> dict:
    item = client.get(f"/api/items/{item_id}").json()
    path.write_bytes(client.get(item["url"]).content)
    return item


def test_studio_item_records_every_default_and_replays_from_the_cli(diffusion, tmp_path, capsys):
    settings = make_settings(tmp_path, model_paths=(("tiny", diffusion),))
    with TestClient(create_app(settings)) as client:
        job = client.post("/api/jobs", json={"kind": "image", "model": "tiny", "n": 1,
                                             "seed": 7, "label": 2, "size": 16}).json()
        # the job's parameters hold the values that will run, not nulls
        assert (job["params"]["steps"], job["params"]["sampler"], job["params"]["guidance"]) \
            == (20, "dpm-solver++", 3.0)
        done = wait_job(client, job["id"])
        assert done["status"] == "done", done
        item = _item_png(client, done["items"][0], tmp_path / "item.png")
        vae = client.post("/api/jobs", json={"kind": "image", "model": "tiny-vae", "n": 1,
                                             "seed": 3}).json()
        vae_item = _item_png(client, wait_job(client, vae["id"])["items"][0], tmp_path / "v.png")
    rec = item["record"]
    assert rec["format"] == 2 and rec["kind"] == "image"
    assert rec["options"] == {"sampler": "dpm-solver++", "steps": 20, "guidance": 3.0,
                              "eta": 0.0, "size": 8}
    assert None not in rec["options"].values()
    assert (rec["seed"], rec["label"], rec["class_name"], rec["output_size"]) == (7, 2, "two", 16)
    assert rec["checkpoint"] == str(diffusion.resolve()) and rec["threads"] >= 1
    assert read_record(tmp_path / "item.png") == rec  # the file carries the same record
    assert vae_item["record"]["options"] == {"temperature": 1.0}
    # the studio drew the diffusion item with its UNet in channels-last, the VAE in NCHW
    assert (rec["memory_format"], vae_item["record"]["memory_format"]) == ("channels_last",
                                                                           "contiguous")

    capsys.readouterr()
    out = tmp_path / "again.png"
    assert main(["sample", "--replay", str(tmp_path / "item.png"), "--out", str(out)]) == 0
    assert "identical pixels" in capsys.readouterr().out
    again = np.asarray(Image.open(out))
    assert again.shape == (16, 16)
    np.testing.assert_array_equal(again, np.asarray(Image.open(tmp_path / "item.png")))
    replayed = read_record(out)
    assert replayed["options"] == rec["options"] and replayed["replay_of"] == str(
        tmp_path / "item.png")
    assert main(["sample", "--replay", str(tmp_path / "v.png"), "--out",
                 str(tmp_path / "v2.png")]) == 0
    assert "identical pixels" in capsys.readouterr().out


def test_cli_record_names_the_defaults_and_replays_from_another_folder(diffusion, tmp_path,
                                                                       monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "model.safetensors").write_bytes(diffusion.read_bytes())
    monkeypatch.chdir(work)
    assert main(["sample", "model.safetensors", "--n", "2", "--class", "one", "--out",
                 "a.png"]) == 0
    rec = read_record(work / "a.png")
    assert rec["checkpoint"] == str((work / "model.safetensors").resolve())
    assert rec["options"] == {"sampler": "dpm-solver++", "steps": 20, "guidance": 3.0,
                              "eta": 0.0, "size": 8}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["sample", "--replay", str(work / "a.png"), "--out", "b.png"]) == 0
    assert (elsewhere / "b.png").read_bytes() == (work / "a.png").read_bytes()


def test_replay_uses_the_recorded_thread_count(diffusion, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(["sample", str(diffusion), "--n", "2", "--steps", "4", "--out",
                     str(tmp_path / "a.png")]) == 0
        assert read_record(tmp_path / "a.png")["threads"] == 1
        torch.set_num_threads(2)
        capsys.readouterr()
        assert main(["sample", "--replay", str(tmp_path / "a.png"), "--out",
                     str(tmp_path / "b.png")]) == 0
        assert "using 1 thread(s) as recorded" in capsys.readouterr().out
        assert torch.get_num_threads() == 1
        assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    finally:
        torch.set_num_threads(before)


def test_a_record_of_the_first_format_still_replays(diffusion, tmp_path):
    """Records written before format 2 kept options at the top level, null for defaults."""
    from aigc.media import save_png

    old = {"kind": "sample", "checkpoint": str(diffusion), "ema": True, "n": 2, "seed": 4,
           "class": "one", "prompt": None, "sampler": "ddim", "steps": 3, "guidance": None,
           "eta": 0.0, "size": None, "model_sha256": load_checkpoint(diffusion).sha256}
    save_png(tmp_path / "old.png", np.zeros((8, 8), np.uint8), record=old)
    assert main(["sample", "--replay", str(tmp_path / "old.png"), "--out",
                 str(tmp_path / "new.png")]) == 0
    rec = read_record(tmp_path / "new.png")
    assert rec["options"] == {"sampler": "ddim", "steps": 3, "guidance": 3.0, "eta": 0.0,
                              "size": 8}
    assert (rec["label"], rec["class_name"], rec["seed"], rec["n"]) == (1, "one", 4, 2)


def _weights(run):
    from aigc.checkpoints import latest_checkpoint_dir

    return load_checkpoint(latest_checkpoint_dir(run)).weights


@pytest.mark.parametrize("family,argv", [
    ("vae", ["--data", "folder:{folder}", "--channels", "4,8", "--hidden", "16",
             "--latent-dim", "3", "--batch-size", "8"]),
    ("gpt", ["--data", "text:{corpus}", "--context-length", "16", "--width", "8", "--layers",
             "1", "--heads", "2", "--batch-size", "4", "--eval-batches", "1"]),
])
def test_two_runs_with_the_same_seed_give_the_same_weights(tmp_path, family, argv):
    folder = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                folder / cls / f"{i}.png")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy "
                                f"dog, then naps in the sun for {i} minutes." for i in range(300)),
                      encoding="utf-8")
    argv = [a.format(folder=folder, corpus=corpus) for a in argv]
    common = ["--steps", "3", "--no-progress", *argv]
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        torch.manual_seed(int.from_bytes(os.urandom(4), "little"))  # whatever came before
        runs[name] = tmp_path / name
        assert main(["train", family, "--out", str(runs[name]), "--seed", seed, *common]) == 0
    a, b, c = (_weights(runs[k]) for k in "abc")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_item_png_bytes_match_the_file_the_studio_serves(diffusion, tmp_path):
    """The PNG a person downloads is the one whose record the API shows."""
    settings = make_settings(tmp_path, model_paths=(("tiny", diffusion),))
    with TestClient(create_app(settings)) as client:
        job = client.post("/api/jobs", json={"kind": "image", "model": "tiny", "n": 2,
                                             "seed": 1, "steps": 2}).json()
        done = wait_job(client, job["id"])
        for item_id in done["items"]:
            item = client.get(f"/api/items/{item_id}").json()
            with Image.open(io.BytesIO(client.get(item["url"]).content)) as img:
                assert img.text["aigc"] and read_record(io.BytesIO(
                    client.get(item["url"]).content)) == item["record"]
