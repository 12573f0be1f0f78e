"""Caption bank and class-name resolution."""

import pytest

from aigc.data.captions import caption_bank, resolve_class
from aigc.data.images import FASHION_CLASSES, MNIST_CLASSES
from aigc.errors import ConfigError


def test_bank_has_english_and_chinese_captions_for_every_class():
    for data, names in [("mnist", MNIST_CLASSES), ("fashion-mnist", FASHION_CLASSES)]:
        bank = caption_bank(data, names)
        captions = [c for c, _ in bank]
        assert len(captions) == len(set(captions))
        for k in range(10):
            mine = [c for c, lab in bank if lab == k]
            assert any(c.isascii() for c in mine) and any(not c.isascii() for c in mine)
    fashion = dict(caption_bank("fashion-mnist", FASHION_CLASSES))
    assert fashion["a photo of an ankle boot"] == 9 and fashion["一只短靴"] == 9
    digits = dict(caption_bank("mnist", MNIST_CLASSES))
    assert digits["handwritten digit seven"] == 7 and digits["手写数字七"] == 7


@pytest.mark.parametrize("text,data,want", [
    ("7", "mnist", 7), ("seven", "mnist", 7), ("七", "mnist", 7),
    ("sneaker", "fashion-mnist", 7), ("Ankle-Boot", "fashion-mnist", 9),
    ("t-shirt/top", "fashion-mnist", 0), ("3", "fashion-mnist", 3), ("运动鞋", "fashion-mnist", 7),
])
def test_resolve_class(text, data, want):
    names = MNIST_CLASSES if data == "mnist" else FASHION_CLASSES
    assert resolve_class(text, data, names) == want


def test_unknown_class_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown class 'unicorn'; known classes: T-shirt/top, "
                                          "Trouser"):
        resolve_class("unicorn", "fashion-mnist", FASHION_CLASSES)
    with pytest.raises(ConfigError, match="out of range 0..9"):
        resolve_class("12", "fashion-mnist", FASHION_CLASSES)
