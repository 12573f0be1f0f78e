import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from aigc.data import images as im
from aigc.errors import DataError


def test_mnist_fixed_splits_and_classes():
    train, val, test = (im.load_images("mnist", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert sum(test.class_counts().values()) == 10000
    assert test.class_counts()["1"] == 1135  # the official MNIST test count of ones
    batch = test.get_batch(torch.arange(3))
    assert batch["image"].dtype == torch.float32 and 0 <= batch["image"].min() <= batch["image"].max() <= 1
    assert batch["label"].tolist() == [7, 2, 1]  # the first three official test labels


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_an_idx_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (5010, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, (5010,)))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (7, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (7,)))
    monkeypatch.setenv("AIGC_FASHION_MNIST_DIR", str(tmp_path))
    im._fashion_arrays.cache_clear()
    try:
        ds = im.load_images("fashion-mnist", "train")
        assert len(ds) == 10 and ds.class_names[9] == "Ankle boot"
        assert len(im.load_images("fashion-mnist", "test")) == 7
    finally:
        im._fashion_arrays.cache_clear()


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    im._fashion_arrays.cache_clear()
    try:
        with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*AIGC_FASHION_MNIST_DIR"):
            im.load_images("fashion-mnist", "train")
    finally:
        im._fashion_arrays.cache_clear()


def test_truncated_idx_is_named(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBB3I", 0, 0, 8, 3, 10, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="x-idx3-ubyte is truncated"):
        im._read_idx(path)


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes of 16x16 grey images plus every kind of problem cleaning must report."""
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            arr = rng.integers(0, 255, (16, 16), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "RGBA").save(
        tmp_path / "cats" / "alpha.png")  # wrong mode -> converted
    Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(
        tmp_path / "dogs" / "big.jpg")  # wrong size -> centre crop + resize
    Image.fromarray(rng.integers(0, 255, (4, 4), dtype=np.uint8)).save(
        tmp_path / "dogs" / "tiny.png")  # too small -> rejected
    (tmp_path / "cats" / "0-copy.png").write_bytes((tmp_path / "cats" / "0.png").read_bytes())
    good = (tmp_path / "dogs" / "1.png").read_bytes()
    (tmp_path / "dogs" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "dogs" / "notes.png").write_text("not an image")
    (tmp_path / "readme.txt").write_text("ignored")
    return tmp_path


def test_folder_cleaning_reports_every_problem_and_keeps_the_rest(messy_folder):
    splits, report = im.scan_folder(str(messy_folder))
    assert report.kept == 26  # 24 good + alpha + big
    unreadable = {p.rsplit("/", 1)[-1] for p, _ in report.unreadable}
    assert unreadable == {"broken.png", "notes.png"}
    # Files are visited in sorted order ("0-copy.png" < "0.png"); the later copy is dropped.
    assert [(a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1]) for a, b in report.duplicates] == [
        ("0.png", "0-copy.png")]
    converted = dict((p.rsplit("/", 1)[-1], why) for p, why in report.converted)
    assert converted["alpha.png"] == "mode RGBA -> L"
    assert converted["big.jpg"] == "size 32x40 -> 16x16 (centre crop)"
    assert [p.rsplit("/", 1)[-1] for p, _ in report.rejected] == ["tiny.png"]
    assert report.ignored[0].endswith("readme.txt")
    total = sum(len(s) for s in splits.values())
    assert total == 26 and splits["train"].class_names == ["cats", "dogs"]
    assert splits["train"].images.shape[1:] == (1, 16, 16)
    assert any("unreadable" in line and "broken.png" in line for line in report.lines())


def test_folder_split_depends_only_on_file_content(messy_folder, tmp_path_factory):
    splits, _ = im.scan_folder(str(messy_folder))
    train_before = {bytes(x.numpy()) for x in splits["train"].images}
    extra = messy_folder / "cats" / "new.png"
    Image.fromarray(np.full((16, 16), 7, dtype=np.uint8)).save(extra)
    im.scan_folder.cache_clear()
    splits_after, _ = im.scan_folder(str(messy_folder))
    train_after = {bytes(x.numpy()) for x in splits_after["train"].images}
    assert train_before <= train_after


def test_empty_and_unknown_datasets_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no files at all"):
        im.load_images(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="not a folder"):
        im.load_images(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="unknown dataset 'cifar10'; known: mnist, fashion-mnist"):
        im.load_images("cifar10")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        im.load_images("mnist", "dev")
