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
