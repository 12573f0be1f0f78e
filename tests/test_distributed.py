"""torchrun / DDP: 2 CPU processes (gloo) against 1, through the real `aigc` command.

Tolerances: the GPT below has no dropout and its loss is a mean over the batch, so 2 processes
on half-batches reproduce the 1-process losses up to float32 summation order (DDP averages two
half-batch gradients where one process sums the whole batch): rel 1e-5 on every logged loss.
FID/KID from 2 processes use the very same samples (block seeding) and differ only by the
extractor's batch composition in float32: rel 1e-6, as tests/test_eval_images.py allows between
batch sizes.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aigc import distributed as D
from aigc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def aigc(*argv: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """Run `aigc ARGV` as one process or under torchrun with ``nproc`` CPU processes."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "aigc", *argv]
    else:
        # --standalone: a local rendezvous on a port the OS picks (a fixed or random port
        # collides with other jobs on a shared machine).
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(nproc), "-m", "aigc", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def losses(run: Path) -> dict[tuple[int, str], float]:
    with open(run / "log.csv", newline="") as fh:
        return {(int(r["step"]), r["key"]): float(r["value"]) for r in csv.DictReader(fh)
                if "loss" in r["key"]}


# ------------------------------------------------------------------------ helpers, 1 process


def test_shard_range_covers_in_order():
    for n in (0, 1, 5, 7, 64):
        for world in (1, 2, 3, 4):
            parts = [D.shard_range(n, r, world) for r in range(world)]
            assert [i for lo, hi in parts for i in range(lo, hi)] == list(range(n))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def test_global_batch_must_divide():
    assert D.shard_slice(8, 1, 2) == slice(4, 8)
    with pytest.raises(ConfigError, match="batch_size=7 is the global batch.*processes \\(2\\)"):
        D.check_divisible(7, 2)


def test_single_process_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = D.init_from_env()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t and D.gather_to_rank0(t) is t
    assert D.any_rank(True) and not D.any_rank(False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE must be an integer, got 'two'"):
        D.init_from_env()


# ------------------------------------------------------------------------ training


def word_corpus(path: Path, *, seed: int, paragraphs: int, words: int) -> Path:
    """A small text corpus of random words from a fixed list, ``paragraphs`` blank-line
    separated paragraphs of ``words`` words."""
    rng = random.Random(seed)
    vocab = "the quick brown fox jumps over lazy dog a stitch in time saves nine".split()
    path.write_text("\n\n".join(" ".join(rng.choice(vocab) for _ in range(words))
                                for _ in range(paragraphs)))
    return path


@pytest.fixture(scope="module")
def gpt_runs(tmp_path_factory):
    """The same 6-step GPT run as 1 process and as 2 torchrun processes (global batch 8)."""
    tmp = tmp_path_factory.mktemp("ddp")
    corpus = word_corpus(tmp / "c.txt", seed=0, paragraphs=120, words=30)
    args = ["train", "gpt", "--data", f"text:{corpus}", "--steps", "6", "--context-length", "16",
            "--width", "16", "--layers", "1", "--heads", "2", "--batch-size", "8",
            "--no-progress", "--eval-every", "3", "--eval-batches", "4", "--log-every", "1",
            "--warmup-steps", "2", "--device", "cpu", "--sample-every", "0", "--ckpt-every", "3",
            "--lr", "0.01"]
    one, two = tmp / "one", tmp / "two"
    aigc(*args, "--out", str(one))
    proc = aigc(*args, "--out", str(two), nproc=2)
    return {"args": args, "one": one, "two": two, "tmp": tmp, "stdout2": proc.stdout}


def test_two_processes_reproduce_one_process_losses(gpt_runs):
    one, two = losses(gpt_runs["one"]), losses(gpt_runs["two"])
    assert set(one) == set(two) and (6, "train/loss") in one and (6, "val/loss") in one
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-5), key
    # The losses moved: the comparison is not between two untrained models.
    assert one[(6, "train/loss")] < one[(1, "train/loss")] - 0.05
    # Rank 0 alone printed (rank 1's stdout is silenced) and wrote one log.
    assert gpt_runs["stdout2"].count("finished at step 6") == 1


def test_ddp_checkpoint_is_an_ordinary_checkpoint(gpt_runs):
    from aigc.checkpoints import latest_checkpoint_dir, load_checkpoint
    from aigc.models.gpt import load_text_model

    a = load_checkpoint(latest_checkpoint_dir(gpt_runs["one"]))
    b = load_checkpoint(latest_checkpoint_dir(gpt_runs["two"]))
    assert a.step == b.step == 6 and set(a.weights) == set(b.weights)
    assert not any(k.startswith(("module.", "model.")) for k in b.weights)  # no DDP prefixes
    width = int(gpt_runs["args"][gpt_runs["args"].index("--width") + 1])
    for key in a.weights:
        got, want = b.weights[key], a.weights[key]
        if key.endswith("attn.qkv.bias"):
            # The key bias (the middle third) has no gradient in exact arithmetic: it adds the
            # same q.b to every score of a query's row, which the softmax cancels. AdamW moves it
            # by rounding noise alone, normalised to steps of up to lr, and one process and two
            # sum that noise in different orders (seen on an AMD EPYC with AVX-512: 1.1e-5
            # apart, signs differing). It must stay at noise size in both; the query and value
            # thirds are compared like every other tensor.
            for run in (got, want):
                assert run[width:2 * width].abs().max() < 1e-4  # lr is 1e-2
            got = torch.cat([got[:width], got[2 * width:]])
            want = torch.cat([want[:width], want[2 * width:]])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    model, tok, _ = load_text_model(gpt_runs["two"])  # what `aigc generate` loads
    assert model.cfg.width == 16 and tok.vocab_size == model.cfg.vocab_size


def test_resume_two_processes_as_one(gpt_runs):
    """Stop the 2-process run at step 3 (its step-6 checkpoint removed) and finish it as one
    process: the data position is the global step, so steps 4-6 match the 1-process run."""
    resumed = gpt_runs["tmp"] / "resumed"
    shutil.copytree(gpt_runs["two"], resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    (resumed / "checkpoints" / "latest").write_text("step-00000003")
    aigc("train", "gpt", "--out", str(resumed), "--resume", "--no-progress")
    one, again = losses(gpt_runs["one"]), losses(resumed)
    for step in (4, 5, 6):
        assert again[(step, "train/loss")] == pytest.approx(one[(step, "train/loss")], rel=1e-5)
    assert again[(6, "val/loss")] == pytest.approx(one[(6, "val/loss")], rel=1e-5)


@pytest.mark.slow
def test_finetune_gpt_runs_under_torchrun(gpt_runs):
    corpus = gpt_runs["args"][gpt_runs["args"].index("--data") + 1]
    out = gpt_runs["tmp"] / "ft"
    proc = aigc("finetune", "gpt", str(gpt_runs["one"]), "--data", corpus, "--out", str(out),
                "--steps", "2", "--batch-size", "4", "--eval-batches", "2", "--device", "cpu",
                nproc=2)
    assert proc.stdout.count("held-out perplexity") == 1
    assert (out / "checkpoints" / "step-00000002" / "model.safetensors").is_file()


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


# Each torchrun launch costs ~15 s of imports on the shared 2-core machine: the default tier keeps
# the GAN (two optimizer groups, BatchNorm, parameters unused by one group's loss); the slow tier
# runs the other families too.
@pytest.mark.parametrize("family,tiny", [
    pytest.param("vae", ["--channels", "4,8", "--hidden", "16", "--latent-dim", "3"],
                 marks=pytest.mark.slow),
    ("gan", ["--channels", "4", "--latent-dim", "4"]),
    pytest.param("diffusion", ["--channels", "4,8", "--attention-levels", "1",
                               "--num-train-timesteps", "20"], marks=pytest.mark.slow),
])
def test_image_families_train_under_torchrun(family, tiny, image_folder, tmp_path):
    out = tmp_path / "run"
    aigc("train", family, "--data", f"folder:{image_folder}", "--out", str(out), *tiny,
         "--steps", "2", "--batch-size", "8", "--eval-every", "1", "--eval-batches", "1",
         "--sample-every", "2", "--warmup-steps", "1", "--no-progress", "--device", "cpu",
         nproc=2)
    from aigc.models import model_from_checkpoint

    model, ckpt = model_from_checkpoint(out)
    assert ckpt.step == 2 and ckpt.family == family
    assert (out / "samples" / "step-00000002.png").is_file()  # rank 0's preview
    assert all(np.isfinite(v) for v in losses(out).values())


@pytest.mark.slow
def test_music_gpt_trains_under_torchrun(tmp_path):
    from aigc.data.music import Note, Piece, write_midi
    from aigc.models import model_from_checkpoint

    songs = tmp_path / "songs"
    for i in range(12):  # the same little tunes as tests/test_music_generation.py
        pitches = [67, 69, 71, 72, 74, 76, 78, 79]
        write_midi(Piece(f"s{i}", "folk", i % 12, "major", (2, 4),
                         [Note(k * 12, 0, p, 12) for k, p in enumerate(pitches)]),
                   songs / f"{i}.mid")
    out = tmp_path / "run"
    aigc("train", "music-gpt", "--data", f"midi:{songs}", "--out", str(out), "--steps", "2",
         "--layers", "1", "--width", "16", "--heads", "2", "--context-length", "16",
         "--batch-size", "4", "--eval-batches", "1", "--no-progress", "--device", "cpu", nproc=2)
    _, ckpt = model_from_checkpoint(out)
    assert ckpt.family == "music-gpt" and ckpt.step == 2


def test_batch_that_does_not_divide_is_refused(image_folder, tmp_path):
    proc = aigc("train", "vae", "--data", f"folder:{image_folder}", "--out", str(tmp_path / "r"),
                "--steps", "1", "--batch-size", "7", "--no-progress", "--device", "cpu",
                nproc=2, check=False)
    assert proc.returncode != 0
    assert "aigc: error: batch_size=7 is the global batch and must be divisible by the number " \
           "of processes (2)" in proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr  # our one line; torchrun adds its own report


def test_commands_that_do_not_split_refuse_torchrun(tmp_path):
    proc = aigc("info", str(tmp_path / "x.png"), nproc=2, check=False)
    assert proc.returncode != 0
    assert "`aigc info` does not run under torchrun (WORLD_SIZE=2)" in proc.stderr


@pytest.fixture
def tiny_vae_file(tmp_path):
    from aigc.checkpoints import save_model_file
    from aigc.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    cfg = VAEConfig(channels=(4, 8), hidden=16, latent_dim=4)
    path = tmp_path / "model.safetensors"
    save_model_file(path, family="vae", model_config=json.loads(json.dumps(cfg.__dict__)),
                    weights=VAE(cfg).state_dict(), step=1, meta={"data": "mnist"})
    return path


def test_batch_sampling_two_processes_writes_the_one_process_grid(tiny_vae_file, tmp_path,
                                                                   monkeypatch):
    from aigc.cli import main
    from aigc.media import read_record
    from aigc.models import layers, native

    # Records carry the kernel routes as kernels.json has them when they are written; pinned
    # here, so that another process deciding a route between the runs (the cache is shared)
    # cannot make the records differ (seen once in CI on an AMD EPYC).
    for env in (*native.ROUTE_ENVS.values(), layers.ROUTE_ENV):
        monkeypatch.setenv(env, "torch")

    one, two = tmp_path / "one.png", tmp_path / "two.png"
    args = ["sample", str(tiny_vae_file), "--num-samples", "10", "--seed", "5", "--seed-block", "3"]
    aigc(*args, "--out", str(one))
    proc = aigc(*args, "--out", str(two), nproc=2)
    assert proc.stdout.count("10 samples") == 1
    assert read_record(two) == read_record(one)  # (a differing field says more than a byte)
    assert two.read_bytes() == one.read_bytes()  # same pixels, same record
    assert read_record(two)["seed_block"] == 3
    # The record replays as one process (blocks honoured), byte for byte.
    again = tmp_path / "again.png"
    threads = torch.get_num_threads()
    try:
        assert main(["sample", "--replay", str(two), "--out", str(again)]) == 0
    finally:
        torch.set_num_threads(threads)  # replay takes the recorded thread count
    assert again.read_bytes() == one.read_bytes()
    proc = aigc("sample", str(tiny_vae_file), "--num-samples", "4", "--out", str(tmp_path / "x.png"),
                nproc=2, check=False)
    assert "aigc sample needs --seed-block K" in proc.stderr and proc.returncode != 0


# ------------------------------------------------------------------------ evaluation


def test_fid_kid_from_two_processes_equal_one(tiny_vae_file, tmp_path):
    from aigc.data.images import dataset_available

    if not dataset_available("mnist")[0]:
        pytest.skip("mnist not installed")
    path = tiny_vae_file
    from aigc.cli import main

    cards = {}
    for nproc in (1, 2):
        out = tmp_path / f"card{nproc}"
        argv = ["eval", str(path), "--num-samples", "90", "--seed-block", "20", "--batch-size",
                "16", "--no-baseline", "--kid-subset-size", "40", "--out", str(out)]
        if nproc == 1:  # in this process (one launch fewer), one thread as the launched ones
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert main(argv) == 0
            finally:
                torch.set_num_threads(threads)
        else:
            assert aigc(*argv, nproc=2).stdout.count("metric card:") == 1
        cards[nproc] = json.loads(out.with_suffix(".json").read_text())
    one, two = cards[1]["values"], cards[2]["values"]
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "precision", "recall"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    assert one["fid"] > 1  # an untrained VAE: the figure is not a trivial zero
    assert "block c of 20 samples" in cards[2]["protocol"]["sampling_seeds"]
