"""aigc tune: the search-space format, pruning through the trainer's hook, a shared SQLite
study, the report and the best recipe."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from aigc.cli import main
from aigc.config import TrainConfig, config_from_dict
from aigc.errors import ConfigError
from aigc.models.gpt import GPTConfig
from aigc.tune import check_storage, load_space, parse_space, run_study


@pytest.mark.parametrize("raw,message", [
    ({"train.lrr": {"type": "float", "low": 0.1, "high": 0.2}}, "'lrr' is not a field of the train"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.2}}, "must be 'model.FIELD' or 'train.FIELD'"),
    ({"train.lr": {"type": "real", "low": 0.1, "high": 0.2}}, "type float, int or categorical"),
    ({"train.lr": {"type": "float", "low": 0.2, "high": 0.1}}, "low < high, got low=0.2"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 0.2, "lg": True}}, "unknown key(s) ['lg']"),
    ({"train.steps": {"type": "int", "low": 1.5, "high": 9}}, "integer low and high"),
    ({"model.width": {"type": "categorical", "choices": []}}, "non-empty list"),
    ([], "expected a mapping"),
])
def test_bad_search_spaces_are_named(raw, message):
    with pytest.raises(ConfigError, match="space.yaml") as info:
        parse_space(raw, GPTConfig, "space.yaml")
    assert message in str(info.value)


def test_space_file_yaml_and_json(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                 "model.width: {type: categorical, choices: [16, 32]}\n")
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"train.warmup_steps": {"type": "int", "low": 0, "high": 20,
                                                    "step": 10}}))
    a, b = load_space(y, GPTConfig), load_space(j, GPTConfig)
    assert [(p.name, p.log, p.choices) for p in a] == [("train.lr", True, ()),
                                                      ("model.width", False, (16, 32))]
    assert (b[0].type, b[0].low, b[0].high, b[0].step) == ("int", 0, 20, 10)
    with pytest.raises(ConfigError, match="search space file not found"):
        load_space(tmp_path / "nope.yaml", GPTConfig)


def test_storage_urls(tmp_path):
    url = f"sqlite:///{tmp_path}/deep/er/s.db"
    assert check_storage(url) == url and (tmp_path / "deep" / "er").is_dir()
    assert check_storage("postgresql+psycopg://me@db/aigc").startswith("postgresql+psycopg")
    with pytest.raises(ConfigError, match="--storage must be sqlite:///PATH or postgresql"):
        check_storage("mysql://x")


def test_trainer_stops_when_the_validation_hook_says_so(tmp_path):
    import torch

    from aigc.models.vae import VAE, VAEConfig
    from aigc.train import Trainer

    class Images:
        def __init__(self, n):
            self.x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))

        def __len__(self):
            return len(self.x)

        def get_batch(self, idx):
            return {"image": self.x[idx]}

    cfg = VAEConfig(image_size=8, channels=(4, 8), hidden=16, latent_dim=3)
    seen = []

    def hook(step, val):
        seen.append((step, val))
        return step >= 4

    train = TrainConfig(steps=10, batch_size=8, eval_every=2, eval_batches=1, sample_every=0,
                        warmup_steps=1, device="cpu", ema_decay=0.0)
    result = Trainer(VAE(cfg), family="vae", model_config={}, train_data=Images(32),
                     val_data=Images(16), cfg=train, run_dir=tmp_path / "r", progress=False,
                     on_validation=hook).fit()
    assert result.stopped == "pruned" and result.step == 4
    assert [s for s, _ in seen] == [2, 4] and all(v > 0 for _, v in seen)
    assert (tmp_path / "r" / "checkpoints" / "step-00000004").is_dir()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog a stitch in time saves nine".split()
    path = tmp_path_factory.mktemp("tune") / "c.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(30))
                                for _ in range(120)))
    return path


def test_study_prunes_shares_and_reports(corpus, tmp_path):
    base = {"data": f"text:{corpus}",
            "model": {"context_length": 16, "width": 16, "layers": 1, "heads": 2},
            "train": {"steps": 12, "batch_size": 8, "eval_every": 3, "eval_batches": 2,
                      "warmup_steps": 1, "device": "cpu", "ckpt_every": 0}}
    space = parse_space({"train.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                         "model.width": {"type": "categorical", "choices": [8, 16]}},
                        GPTConfig, "space")
    storage = f"sqlite:///{tmp_path}/study.db"
    lines = []
    first = run_study("gpt", base, space, trials=6, storage=storage, study_name="s",
                      out=tmp_path / "out", log=lines.append)
    # A second process (here: a second call) joins the same study in the same storage.
    second = run_study("gpt", base, space, trials=2, storage=storage, study_name="s",
                       out=tmp_path / "out", seed=1, log=lines.append)
    assert second.complete + second.pruned + second.failed == 8
    assert first.complete >= 3  # the median pruner judges from the 4th trial on
    with sqlite3.connect(tmp_path / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 8
    assert len(lines) == 8 and all(line.startswith("trial ") for line in lines)
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "Parameter importances" in page
    assert "fANOVA" in page or "not computed" in page
    recipe = json.loads(second.best_config.read_text())
    assert recipe["family"] == "gpt" and recipe["data"] == base["data"]
    # The best recipe is the full config of the best trial, ready for `aigc train --config`.
    train = config_from_dict(TrainConfig, recipe["train"])
    assert train.lr == pytest.approx(second.best_params["train.lr"])
    assert recipe["model"]["width"] == second.best_params["model.width"]
    import optuna

    best = optuna.load_study(study_name="s", storage=storage).best_trial
    assert (tmp_path / "out" / f"trial-{best.number:05d}" / "checkpoints").is_dir()


def test_pruning_happens_with_a_losing_trial(corpus, tmp_path):
    """Trials with a learning rate 100x too small fall behind the median and are pruned."""
    base = {"data": f"text:{corpus}",
            "model": {"context_length": 16, "width": 16, "layers": 1, "heads": 2},
            "train": {"steps": 12, "batch_size": 8, "eval_every": 3, "eval_batches": 2,
                      "warmup_steps": 1, "device": "cpu", "ckpt_every": 0}}
    space = parse_space({"train.lr": {"type": "categorical", "choices": [0.02, 0.0002]}},
                        GPTConfig, "space")
    result = run_study("gpt", base, space, trials=8, storage=f"sqlite:///{tmp_path}/p.db",
                       out=tmp_path / "o", report=False, log=lambda _: None)
    assert result.pruned >= 1 and result.best_params == {"train.lr": 0.02}


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    code = main(["tune", "gpt", "--space", str(tmp_path / "none.yaml"), "--data", "fortunes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "search space file not found" in err[0]
    space = tmp_path / "s.json"
    space.write_text(json.dumps({"train.lr": {"type": "float", "low": 0.001, "high": 0.01}}))
    code = main(["tune", "gpt", "--space", str(space), "--data", "fortunes", "--trials", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["aigc: error: --trials must be an integer >= 1, got 0"]


def test_two_processes_share_a_postgresql_study(corpus, tmp_path):
    """Two `aigc tune` processes on one PostgreSQL study (the PostgreSQL tier's throwaway
    cluster, tests/pg_cluster.py; skipped with the reason where it cannot run)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    try:
        from pg_cluster import Cluster, missing_reason
    except ImportError:
        pytest.skip("PostgreSQL tier: tests/pg_cluster.py is not in this tree")
    why = missing_reason()
    if why:
        pytest.skip(why)
    import optuna

    config = tmp_path / "base.json"
    config.write_text(json.dumps({
        "family": "gpt", "data": f"text:{corpus}",
        "model": {"context_length": 16, "width": 16, "layers": 1, "heads": 2},
        "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "eval_batches": 2,
                  "warmup_steps": 1, "device": "cpu", "ckpt_every": 0}}))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"train.lr": {"type": "float", "low": 1e-4, "high": 3e-2,
                                              "log": True}}))
    cluster = Cluster().start()
    try:
        url = cluster.new_database()
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(root / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs = [subprocess.Popen(
            [sys.executable, "-m", "aigc", "tune", "gpt", "--config", str(config), "--space",
             str(space), "--trials", "3", "--storage", url, "--study", "shared", "--seed",
             str(seed), "--out", str(tmp_path / f"p{seed}")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (1, 2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
        study = optuna.load_study(study_name="shared", storage=url)
        assert len(study.trials) == 6
        assert sorted(t.number for t in study.trials) == list(range(6))
    finally:
        cluster.stop()
