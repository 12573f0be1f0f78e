"""`aigc eval` end to end: a tiny VAE checkpoint through the CLI, and family-agnostic evaluation
of small stand-in models (a class-conditional one that copies training images, broken ones)."""

import json

import pytest
import torch
from torch import nn

from aigc.checkpoints import save_model_file
from aigc.cli import main
from aigc.data.images import dataset_available, load_images
from aigc.errors import AigcError
from aigc.evaluate import evaluate_image_model
from aigc.metrics.features import load_extractor
from aigc.models.vae import VAE, VAEConfig

pytestmark = pytest.mark.skipif(not dataset_available("mnist")[0], reason="mnist not installed")


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    torch.manual_seed(0)
    cfg = VAEConfig(channels=(4, 8), hidden=16, latent_dim=4)
    model = VAE(cfg)
    path = tmp_path_factory.mktemp("vae") / "model.safetensors"
    save_model_file(path, family="vae", model_config=json.loads(json.dumps(cfg.__dict__)),
                    weights=model.state_dict(), step=7, meta={"data": "mnist"})
    return path


def test_cli_eval_writes_card_and_report(tiny_vae, tmp_path, capsys):
    out, report = tmp_path / "card", tmp_path / "report.html"
    assert main(["eval", str(tiny_vae), "--n", "100", "--out", str(out),
                 "--report", str(report)]) == 0
    card = json.loads((tmp_path / "card.json").read_text())
    v, b, p = card["values"], card["baseline"], card["protocol"]
    for key in ("fid", "kid_mean", "is_mean", "precision", "recall", "density", "coverage",
                "psnr_db", "ssim", "negative_elbo_nats", "nearest_train_l2_mean"):
        assert isinstance(v[key], float), key
    # An untrained VAE is far worse than real data against real data.
    assert v["fid"] > 10 * b["fid"] and b["coverage"] > v["coverage"]
    assert b["recall"] > v["recall"] and b["is_mean"] > v["is_mean"]
    assert b["conditional_accuracy"] > 0.9  # classifier on real test images
    assert p["n_real"] == p["n_generated"] == 100 and p["ema"] is False
    assert p["extractor"]["name"] == "aigc-classifier-mnist" and len(p["extractor"]["sha256"]) == 64
    assert p["sampling"] == {"temperature": 1.0} and p["reference_split"] == "test"
    # KID's default subsets at small n: half of n, so subsets differ and the std is real.
    assert p["kid"]["subset_size"] == 50 and p["kid"]["subsets"] == 100
    assert p["kid"]["subset_size_rule"] == "min(1000, n // 2)"
    assert v["kid_std"] > 0.01 * abs(v["kid_mean"]) and b["kid_std"] > 0
    assert card["subject"]["step"] == 7 and len(card["subject"]["checkpoint_sha256"]) == 64
    assert "torchmetrics" in card["environment"]["versions"]
    assert (tmp_path / "card.md").read_text().startswith("# Metric card: vae on mnist")
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 3  # samples, real, neighbours
    assert "real vs real" in page and "src='http" not in page and "<script" not in page
    # Same protocol twice: the cards compare; a different n does not.
    assert main(["eval", str(tiny_vae), "--n", "100", "--out", str(tmp_path / "again"),
                 "--no-baseline"]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "card.json"),
                 str(tmp_path / "again.json")]) == 2
    assert "baseline_split" in capsys.readouterr().err


def test_cli_eval_errors(tiny_vae, capsys):
    assert main(["eval", str(tiny_vae), "--n", "20000", "--no-baseline"]) == 2
    assert "fewer than n=20000" in capsys.readouterr().err
    assert main(["eval", str(tiny_vae), "--n", "50", "--sampler", "ddim"]) == 2
    assert "does not take ['sampler']" in capsys.readouterr().err


class CopyingConditionalModel(nn.Module):
    """Returns training images of the requested class: perfect conditional accuracy, and a
    memorisation check that must notice (nearest training image at distance 0)."""

    def __init__(self):
        super().__init__()
        self.train_set = load_images("mnist", "train")
        self.by_class = [torch.nonzero(self.train_set.labels == c).flatten() for c in range(10)]

    def sample(self, n, *, generator=None, labels=None):
        pick = [self.by_class[int(c)][torch.randint(len(self.by_class[int(c)]), (1,),
                                                    generator=generator)] for c in labels]
        return self.train_set.get_batch(torch.cat(pick))["image"]


class Broken(nn.Module):
    def __init__(self, fill=None, size=28, scale=1.0):
        super().__init__()
        self.fill, self.size, self.scale = fill, size, scale

    def sample(self, n, *, generator=None):
        x = torch.rand(n, 1, self.size, self.size, generator=generator) * self.scale
        if self.fill is not None:
            x[0, 0, 0, 0] = self.fill
        return x


def test_family_agnostic_conditional_and_memorisation():
    ext = load_extractor("mnist")
    result = evaluate_image_model(CopyingConditionalModel(), data="mnist", extractor=ext, n=200,
                                  progress=False, kid_subset_size=100)
    v, b = result.card.values, result.card.baseline
    assert v["conditional_accuracy"] > 0.97
    assert len(v["conditional_accuracy_per_class"]) == 10
    assert v["nearest_train_l2_mean"] < 0.01  # copies: ~0 (float32 rounding), real test ~4
    # Training images are as good as the real-vs-real baseline (which also uses train images).
    assert v["fid"] < 1.5 * b["fid"] and v["precision"] > 0.8
    assert result.card.protocol["conditional"] == "balanced labels i mod K"
    assert result.neighbours.shape == (8, 5, 1, 28, 28)


def test_results_do_not_depend_on_batch_size():
    ext = load_extractor("mnist")
    runs = [evaluate_image_model(Broken(), data="mnist", extractor=ext, n=60, batch_size=b,
                                 baseline=False, memorisation=False, progress=False,
                                 kid_subset_size=30, kid_subsets=5).card.values
            for b in (7, 60)]
    # The metric maths is exactly batch-independent (see test_metrics_fid); the extractor's
    # float32 convolutions may differ in the last bits between batch sizes, hence 1e-6.
    for key, value in runs[0].items():
        assert runs[1][key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("model,data,message", [
    (Broken(fill=float("nan")), "mnist", "NaN"),
    (Broken(size=16), "mnist", "samples are"),
    (Broken(scale=255.0), "mnist", r"\[0, 1\]"),
    (Broken(), "fashion-mnist", "trained on 'mnist', not 'fashion-mnist'"),
])
def test_bad_models_give_clear_errors(model, data, message):
    with pytest.raises(AigcError, match=message):
        evaluate_image_model(model, data=data, extractor=load_extractor("mnist"), n=30,
                             baseline=False, progress=False, kid_subset_size=20)
