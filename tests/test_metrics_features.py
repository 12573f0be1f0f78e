"""Feature extractors: the Inception loader (random weights in the real layout), the shipped
classifiers (hash and accuracy), and loud errors for input they cannot measure."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from aigc.errors import AigcError
from aigc.metrics import features as F
from aigc.metrics.features import (
    InceptionV3FID,
    classifier_accuracy,
    convert_inception_pth,
    load_extractor,
    shipped_records,
    train_classifier,
)


@pytest.fixture(scope="module")
def random_inception_state():
    torch.manual_seed(0)
    net = InceptionV3FID()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1)
    # The upstream file has no num_batches_tracked entries.
    return {k: v.clone() for k, v in net.state_dict().items() if "num_batches" not in k}


def test_inception_loads_a_file_of_the_fid_layout(tmp_path, random_inception_state):
    path = tmp_path / "pt_inception.safetensors"
    save_file(random_inception_state, str(path))
    ext = load_extractor(f"inception:{path}")
    assert ext.name == "inception-v3-fid" and ext.num_features == 2048 and len(ext.sha256) == 64
    key = "Mixed_6b.branch7x7dbl_3.conv.weight"
    torch.testing.assert_close(ext.network.state_dict()[key], random_inception_state[key])
    images = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = ext.extract(images)
    assert out["features"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
    assert (out["features"] >= 0).all()  # pool3 of ReLU outputs
    ext.check_dataset("fashion-mnist")  # Inception takes any data


def test_inception_layout_errors(tmp_path, random_inception_state):
    broken = dict(random_inception_state)
    broken.pop("fc.bias")
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(AigcError, match="missing.*fc.bias"):
        load_extractor(f"inception:{path}")
    with pytest.raises(AigcError, match="convert-inception"):
        load_extractor(f"inception:{tmp_path / 'pt_inception-2015-12-05.pth'}")


def test_convert_pth_with_the_restricted_loader(tmp_path, random_inception_state):
    src = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    # The upstream format is a torch pickle; the test writes one only to convert it.
    torch.save(random_inception_state, src)
    dst = convert_inception_pth(src, tmp_path / "inception.safetensors")
    ext = load_extractor(f"inception:{dst}")
    torch.testing.assert_close(ext.network.state_dict()["fc.weight"],
                               random_inception_state["fc.weight"])


def _split_or_skip(data, split):
    from aigc.data.images import dataset_available, load_images

    ok, why = dataset_available(data)
    if not ok:
        pytest.skip(why)
    return load_images(data, split)


class _First:
    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __len__(self):
        return self.n

    def get_batch(self, idx):
        return self.ds.get_batch(idx)


@pytest.mark.parametrize("data", ["mnist", "fashion-mnist"])
def test_shipped_classifier_hash_and_accuracy_on_1000_test_images(data):

    if data not in shipped_records():
        pytest.fail(f"no shipped extractor for {data}")
    test = _split_or_skip(data, "test")
    ext = load_extractor(data)
    assert ext.sha256 == shipped_records()[data]["sha256"]
    assert ext.data == data and ext.num_features == 128
    # Within 3 points of the accuracy recorded on all 10,000 (the slow test checks that one).
    acc = classifier_accuracy(ext.network, _First(test, 1000))
    assert acc >= shipped_records()[data]["test_accuracy"] - 0.03


@pytest.mark.slow
@pytest.mark.parametrize("data,minimum", [("mnist", 0.99), ("fashion-mnist", 0.92)])
def test_shipped_classifier_full_test_accuracy(data, minimum):
    ext = load_extractor(data)
    acc = classifier_accuracy(ext.network, _split_or_skip(data, "test"))
    assert acc >= minimum
    assert acc == pytest.approx(shipped_records()[data]["test_accuracy"], abs=1e-4)


def test_changed_shipped_file_is_refused(tmp_path, monkeypatch):
    rec = shipped_records()["mnist"]
    blob = bytearray((F._asset_root() / rec["file"]).read_bytes())
    blob[-1] ^= 0xFF  # flip bits of the last weight
    (tmp_path / rec["file"]).write_bytes(bytes(blob))
    (tmp_path / "extractors.json").write_text(json.dumps({"mnist": rec}))
    monkeypatch.setattr(F, "_asset_root", lambda: tmp_path)
    with pytest.raises(AigcError, match="was changed"):
        load_extractor("mnist")


def test_extractor_refuses_what_it_cannot_measure():
    ext = load_extractor("mnist")
    good = torch.rand(3, 1, 28, 28)
    assert ext.extract(good)["features"].dtype == torch.float64
    with pytest.raises(AigcError, match="3 channels"):
        ext.extract(torch.rand(3, 3, 28, 28))
    with pytest.raises(AigcError, match="32x32.*no silent resizing"):
        ext.extract(torch.rand(3, 1, 32, 32))
    nan = good.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(AigcError, match="NaN"):
        ext.extract(nan)
    with pytest.raises(AigcError, match=r"\[0, 1\]"):
        ext.extract(good * 255)
    with pytest.raises(AigcError, match="trained on 'mnist', not 'fashion-mnist'"):
        ext.check_dataset("fashion-mnist")
    with pytest.raises(AigcError, match="no feature extractor"):
        load_extractor("cifar10")


def test_train_classifier_on_a_tiny_folder(tmp_path, capsys):
    from aigc.cli import main

    rng = np.random.default_rng(0)
    for cls, level in (("dark", 40), ("light", 210)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(24):
            pixels = np.clip(rng.normal(level, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = f"folder:{tmp_path / 'imgs'}"
    out = tmp_path / "feat.safetensors"
    summary = train_classifier(data, out, epochs=3, batch_size=16, progress=False)
    ext = load_extractor(str(out))
    assert ext.sha256 == summary["sha256"] and ext.data == data
    assert ext.class_names == ["dark", "light"] and ext.image_size == 8
    x = torch.cat([torch.full((4, 1, 8, 8), 40 / 255), torch.full((4, 1, 8, 8), 210 / 255)])
    assert (ext.extract(x)["logits"].argmax(1) == torch.tensor([0] * 4 + [1] * 4)).all()
    # The same through the CLI; same seed, same threads -> the same file, byte for byte.
    again = tmp_path / "again.safetensors"
    assert main(["eval", "prepare-features", "--data", data, "--out", str(again), "--epochs", "3",
                 "--batch-size", "16", "--threads", str(torch.get_num_threads())]) == 0
    assert summary["sha256"] in capsys.readouterr().out.replace(str(again), "")


# ------------------------------------------------------------------------ no dead features


@pytest.mark.parametrize("data", ["mnist", "fashion-mnist"])
def test_shipped_extractor_has_no_constant_feature_on_300_test_images(data):
    test = _split_or_skip(data, "test")
    # Every 33rd image: 300 images spread over the split (all ten classes).
    images = test.get_batch(torch.arange(0, 300 * 33, 33))["image"]
    feats = load_extractor(data).extract(images)["features"]
    assert F.constant_features(feats) == []
    # Not merely non-constant: every unit spreads over the real images.
    assert float(feats.std(0).min()) > 1e-3


def test_features_are_read_before_the_relu_and_logits_do_not_change():
    torch.manual_seed(0)
    pre = F.FeatureClassifier(F.ClassifierConfig(image_size=8, widths=(4, 4, 8), feature_dim=16))
    post = F.FeatureClassifier(F.ClassifierConfig(image_size=8, widths=(4, 4, 8), feature_dim=16,
                                                  feature_layer="post_relu"))
    post.load_state_dict(pre.state_dict())
    pre.eval(), post.eval()
    x = torch.rand(32, 1, 8, 8)
    f_pre, lg_pre = pre.features_and_logits(x)
    f_post, lg_post = post.features_and_logits(x)
    assert (f_pre < 0).any()  # before the ReLU: negative values, so no unit is stuck at zero
    assert torch.equal(f_post, torch.relu(f_pre))
    assert torch.equal(lg_pre, lg_post)  # the classifier itself is the same network
    with pytest.raises(ValueError, match="feature_layer must be 'pre_relu' or 'post_relu', got 'x'"):
        F.FeatureClassifier(F.ClassifierConfig(feature_layer="x"))


def test_a_file_from_before_feature_layer_reads_after_the_relu(tmp_path):
    """`git show 7461095:src/aigc/assets/features/mnist.safetensors` must give the old numbers."""
    torch.manual_seed(0)
    cfg = F.ClassifierConfig(image_size=8, widths=(4, 4, 8), feature_dim=16)
    net = F.FeatureClassifier(cfg)
    old_cfg = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k != "feature_layer"}
    path = F.save_canonical(net.state_dict(), tmp_path / "old.safetensors", {
        "format": F.FORMAT, "data": "mnist", "config": json.dumps(old_cfg)})
    ext = load_extractor(str(path))
    assert ext.network.cfg.feature_layer == "post_relu"
    feats = ext.extract(torch.rand(8, 1, 8, 8))["features"]
    assert (feats >= 0).all() and (feats == 0).any()


def test_constant_features_finds_the_constant_columns():
    feats = torch.randn(50, 6, dtype=torch.float64)
    feats[:, 1] = 0.0
    feats[:, 4] = 3.5
    assert F.constant_features(feats) == [1, 4]
    assert F.constant_features(torch.randn(5, 3)) == []
    with pytest.raises(AigcError, match="at least 2 rows, got 1"):
        F.constant_features(torch.randn(1, 3))


def _tiny_folder(root):
    rng = np.random.default_rng(0)
    for cls, level in (("dark", 40), ("light", 210)):
        (root / cls).mkdir(parents=True)
        for i in range(24):
            pixels = np.clip(rng.normal(level, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return f"folder:{root}"


def test_prepare_features_refuses_an_extractor_with_constant_features(tmp_path, monkeypatch,
                                                                     capsys):
    from aigc.cli import main

    data = _tiny_folder(tmp_path / "imgs")
    real = F._features_of

    def one_dead_unit(net, images, batch_size=1000):
        feats = real(net, images, batch_size)
        feats[:, 3] = 0.0  # what a ReLU unit that never fires looks like
        return feats

    monkeypatch.setattr(F, "_features_of", one_dead_unit)
    out = tmp_path / "feat.safetensors"
    with pytest.raises(AigcError, match=r"1 of 128 features that are constant .*units \[3\]"):
        train_classifier(data, out, epochs=1, batch_size=16, progress=False)
    assert not out.exists()
    assert main(["eval", "prepare-features", "--data", data, "--out", str(out), "--epochs", "1",
                 "--batch-size", "16", "--threads", str(torch.get_num_threads())]) == 2
    err = capsys.readouterr().err.strip()  # tqdm's bars, then the one-line error
    assert "Traceback" not in err
    assert "constant" in err.splitlines()[-1] and "Nothing was written" in err.splitlines()[-1]
    assert not out.exists()
